"""Cell helpers: validation, volume, reciprocal vectors, fractional coordinates, strain.

Convention: ``cell`` is a (3, 3) array whose ROWS are the lattice vectors (ASE);
fractional coordinates are ``positions @ inv(cell)``; ``cell=None`` means a molecule.
``pbc`` (3 bools) says which axes are periodic. The host helpers (``validate_*``)
take and return numpy; the others are pure jax functions (jit, grad, vmap).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = [
    "validate_positions",
    "validate_cell",
    "volume",
    "reciprocal_cell",
    "heights",
    "host_heights",
    "fractional",
    "cartesian",
    "wrap",
    "apply_strain",
]


def validate_positions(positions, name: str = "positions") -> np.ndarray:
    """Host check of an (N, 3) array of finite coordinates; returns it as numpy."""
    arr = np.asarray(positions)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"{name} has a non-finite value at atom {bad[0]}, axis {bad[1]}: {arr[bad[0], bad[1]]}"
        )
    return arr


def validate_cell(cell, pbc=None):
    """Host check of ``cell`` and ``pbc``; returns ``(cell or None, pbc tuple)``.

    Args:
      cell: (3, 3) lattice vectors as rows in Å, or None for a molecule.
      pbc: 3 bools (or one bool); default: all True with a cell, all False without.

    Raises:
      ValueError: wrong shape, non-finite entries, a singular cell, or a periodic
        axis without a cell.
    """
    if pbc is None:
        pbc = (cell is not None,) * 3
    elif np.ndim(pbc) == 0:
        pbc = (bool(pbc),) * 3
    else:
        pbc = tuple(bool(p) for p in np.asarray(pbc).reshape(-1))
        if len(pbc) != 3:
            raise ValueError(f"pbc must be 3 booleans, got {pbc}")
    if cell is None:
        if any(pbc):
            raise ValueError(f"pbc={pbc} has periodic axes but cell is None")
        return None, pbc
    c = np.asarray(cell)
    if c.shape != (3, 3):
        raise ValueError(f"cell must have shape (3, 3) (lattice vectors as rows), got {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError("cell has non-finite entries")
    if not any(pbc):
        return None, pbc
    det = float(np.linalg.det(c))
    scale = float(np.prod(np.linalg.norm(c, axis=1)))
    if scale == 0.0 or abs(det) <= 1e-10 * scale:
        raise ValueError(f"cell is singular (det={det:.3g}); pass cell=None for a molecule")
    return c, pbc


def volume(cell):
    """Cell volume |det(cell)| in Å^3."""
    return jnp.abs(jnp.linalg.det(cell))


def reciprocal_cell(cell):
    """Reciprocal lattice vectors as rows, ``2 pi inv(cell).T`` (Å^-1): a_i · b_j = 2 pi δ_ij."""
    return 2.0 * jnp.pi * jnp.linalg.inv(cell).T


def heights(cell):
    """(3,) distances between opposite faces of the cell (Å): V / |a_j x a_k|."""
    cross = jnp.stack(
        [
            jnp.cross(cell[1], cell[2]),
            jnp.cross(cell[2], cell[0]),
            jnp.cross(cell[0], cell[1]),
        ]
    )
    return volume(cell) / jnp.linalg.norm(cross, axis=-1)


def host_heights(cell) -> np.ndarray:
    """(3,) plane heights V / |a_j x a_k| in Å, on the host (numpy)."""
    cell = np.asarray(cell, dtype=np.float64)
    cross = np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]])
    return abs(np.linalg.det(cell)) / np.linalg.norm(cross, axis=1)


def fractional(positions, cell):
    """(N, 3) fractional coordinates ``positions @ inv(cell)``."""
    return positions @ jnp.linalg.inv(cell)


def cartesian(fractional_positions, cell):
    """(N, 3) Cartesian positions ``s @ cell`` in Å."""
    return fractional_positions @ cell


def wrap(positions, cell, pbc=(True, True, True)):
    """Wrap positions into the cell along the periodic axes (fractional in [0, 1))."""
    s = fractional(positions, cell)
    mask = jnp.asarray(pbc, dtype=bool)
    s = jnp.where(mask, s - jnp.floor(s), s)
    return s @ cell


def apply_strain(positions, cell, strain):
    """Apply a homogeneous strain: ``x @ (I + strain)`` to positions and cell rows.

    This is the deformation behind DESIGN's stress, sigma = (1/V) dE/d(strain).
    """
    deform = jnp.eye(3, dtype=cell.dtype) + strain
    return positions @ deform, cell @ deform
