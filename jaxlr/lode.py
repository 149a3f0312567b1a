"""LODE descriptors: ``spherical_expansion`` and ``power_spectrum`` (see
:mod:`jaxlr.kernels.lode` for the definition and conventions, featomic's).

``spherical_expansion(positions, species, cell=None, *, smearing, max_radial,
max_angular, radius, ...)`` returns ``(N, n_species, (max_angular+1)^2,
max_radial+1)`` coefficients, species ordered by ``species_list`` (default: the
atomic numbers present, ascending). Periodic cells are summed in reciprocal space,
molecules (``cell=None``) in free space. Everything is differentiable: forces and
stress of a model built on the features come from ``jax.grad``.

Under jit, build a :class:`LodeCalculator` with :func:`prepare` on the host (it
sizes the static k set from the cell) and call it inside.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr.kernels.lode import (
    LodeConfig,
    k_cutoff_for_accuracy,
    kvector_indices,
    lode_free,
    lode_periodic,
)
from jaxlr.kernels.lode import power_spectrum as _power_spectrum

__all__ = ["spherical_expansion", "power_spectrum", "prepare", "LodeCalculator", "LodeConfig"]


class LodeCalculator:
    """Pure LODE calculator: ``calc(positions, species, cell=None) -> coefficients``.

    ``species`` are atomic numbers (N,); atoms whose number is not in
    ``species_list`` (padding, e.g. 0) neither carry a density nor count as a
    species (their own rows are meaningless). jit, grad and vmap take it; a cell of
    the same shape class (its k set within the host-sized index set) does not
    recompile.

    Attributes:
      config: :class:`~jaxlr.kernels.lode.LodeConfig`.
      species_list: tuple of atomic numbers, the order of the species axis.
      kindices: (K, 3) static half-space reciprocal indices, or None (free space).
    """

    def __init__(self, config: LodeConfig, species_list, kindices=None):
        self.config = config
        self.species_list = tuple(int(z) for z in species_list)
        self.kindices = None if kindices is None else np.asarray(kindices)

    @property
    def periodic(self):
        return self.kindices is not None

    def onehot(self, species):
        return (jnp.asarray(species)[:, None] == jnp.asarray(self.species_list)[None, :]).astype(
            jnp.float32
        )

    def __call__(self, positions, species, cell=None):
        positions = jnp.asarray(positions)
        onehot = self.onehot(species).astype(positions.dtype)
        if self.periodic:
            if cell is None:
                raise ValueError("this calculator was prepared for a periodic cell: pass cell")
            cell = jnp.asarray(cell, positions.dtype)
            return lode_periodic(positions, onehot, cell, self.config, self.kindices)
        return lode_free(positions, onehot, self.config)


def prepare(
    cell=None,
    *,
    smearing,
    max_radial,
    max_angular,
    radius,
    species_list,
    potential_exponent=1,
    center_atom_weight=1.0,
    k_cutoff=None,
    accuracy=None,
    k_margin=1.05,
):
    """Host preparation of a :class:`LodeCalculator` (arguments as
    :func:`spherical_expansion`; ``species_list`` required). For a periodic cell the
    k index set is sized to ``k_cutoff * k_margin`` for this cell; inside the
    calculator it is masked by the exact ``|k| < k_cutoff``."""
    if accuracy is not None:
        if k_cutoff is not None:
            raise ValueError("pass k_cutoff or accuracy, not both")
        k_cutoff = k_cutoff_for_accuracy(
            int(max_radial),
            int(max_angular),
            float(radius),
            float(smearing),
            int(potential_exponent),
            accuracy,
        )
    config = LodeConfig(
        max_radial=int(max_radial),
        max_angular=int(max_angular),
        radius=float(radius),
        smearing=float(smearing),
        exponent=int(potential_exponent),
        center_atom_weight=float(center_atom_weight),
        k_cutoff=None if k_cutoff is None else float(k_cutoff),
    )
    if len(species_list) == 0:
        raise ValueError("species_list is empty")
    if cell is None:
        return LodeCalculator(config, species_list)
    cell_np = np.asarray(cell, np.float64)
    if cell_np.shape != (3, 3) or abs(np.linalg.det(cell_np)) < 1e-12:
        raise ValueError(f"cell must be a non-singular (3, 3) array, got shape {cell_np.shape}")
    return LodeCalculator(config, species_list, kvector_indices(cell_np, config.k_cutoff, k_margin))


@functools.lru_cache(maxsize=32)
def _compiled(config, species_list, kbytes, kshape):
    kindices = None if kbytes is None else np.frombuffer(kbytes, np.int64).reshape(kshape)
    return jax.jit(LodeCalculator(config, species_list, kindices).__call__)


def spherical_expansion(
    positions,
    species,
    cell=None,
    *,
    smearing,
    max_radial,
    max_angular,
    radius,
    potential_exponent=1,
    center_atom_weight=1.0,
    k_cutoff=None,
    accuracy=None,
    species_list=None,
):
    """LODE spherical expansion coefficients.

    Args:
      positions: (N, 3) Å.
      species: (N,) atomic numbers.
      cell: (3, 3) lattice rows (periodic in all three directions), or None for a
        molecule (free space).
      smearing: Gaussian width sigma of the atom densities, Å.
      max_radial, max_angular: largest radial index n and angular l.
      radius: GTO basis radius, Å.
      potential_exponent: p of the smeared 1/r^p density (0..6; 1 = Coulomb).
      center_atom_weight: weight of an atom's own density in its expansion.
      k_cutoff: reciprocal cutoff (1/Å), default ``1.2 pi / smearing`` (featomic's,
        ~2e-5 relative truncation for smearing 1, radius 4).
      accuracy: instead of ``k_cutoff``, the relative truncation error to reach
        (measured errors stay within ~2x of it; see docs/lode.md).
      species_list: atomic numbers, the order of the species axis (default: those
        present, ascending).

    Returns:
      ``(N, len(species_list), (max_angular+1)**2, max_radial+1)`` array.

    Examples:
      >>> import numpy as np, jaxlr
      >>> pos = np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
      >>> c = jaxlr.lode.spherical_expansion(pos, [11, 17], 4.0 * np.eye(3),
      ...     smearing=1.0, max_radial=2, max_angular=1, radius=3.0)
      >>> c.shape
      (2, 2, 4, 3)
    """
    pos = np.asarray(positions)
    z = np.asarray(species)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {pos.shape}")
    if z.shape != (len(pos),) or not np.issubdtype(z.dtype, np.integer):
        raise ValueError(f"species must be ({len(pos)},) integers (atomic numbers), got {z.shape}")
    if species_list is None:
        species_list = sorted(set(z.tolist()))
    unknown = sorted(set(z.tolist()) - set(int(x) for x in species_list))
    if unknown:
        raise ValueError(f"species {unknown} are not in species_list {tuple(species_list)}")
    calc = prepare(
        cell,
        smearing=smearing,
        max_radial=max_radial,
        max_angular=max_angular,
        radius=radius,
        species_list=tuple(species_list),
        potential_exponent=potential_exponent,
        center_atom_weight=center_atom_weight,
        k_cutoff=k_cutoff,
        accuracy=accuracy,
    )
    k = calc.kindices
    fn = _compiled(
        calc.config,
        calc.species_list,
        None if k is None else k.astype(np.int64).tobytes(),
        None if k is None else k.shape,
    )
    return fn(jnp.asarray(positions), jnp.asarray(z), None if cell is None else jnp.asarray(cell))


def power_spectrum(coefficients):
    """(N, A, A, L+1, n, n) rotation-invariant power spectrum ``sum_m c c``."""
    return _power_spectrum(jnp.asarray(coefficients))
