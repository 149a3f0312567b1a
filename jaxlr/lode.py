"""LODE descriptors: ``spherical_expansion`` and ``power_spectrum`` (see
:mod:`jaxlr.kernels.lode` for the definition and conventions, featomic's).

``spherical_expansion(positions, species, cell=None, *, smearing, max_radial,
max_angular, radius, ...)`` returns ``(N, n_species, (max_angular+1)^2,
max_radial+1)`` coefficients, species ordered by ``species_list`` (default: the
atomic numbers present, ascending). Periodic cells are summed in reciprocal space,
molecules (``cell=None``) in free space. Everything is differentiable: forces and
stress of a model built on the features come from ``jax.grad``.

Under jit, build a :class:`LodeCalculator` with :func:`prepare` on the host (it
sizes the static k set, and the mesh of the mesh route, from the cell) and call it
inside.

Periodic cells have two routes (``method=``): ``"direct"``, the k sum over atoms,
O(N N_k), exact for the given ``k_cutoff``; ``"mesh"``, per-channel fields by FFT
on a B-spline mesh (smooth-PME style), O(channels x (M log M + N p^3)), with a
B-spline aliasing error sized by ``mesh_accuracy`` (default 1e-5 of the largest
coefficient). ``"auto"`` takes the mesh for periodic cells of at least
``mesh_threshold`` atoms (default :data:`MESH_THRESHOLD`; see docs/lode.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr.kernels.lode import (
    MESH_ACCURACY,
    LodeConfig,
    k_cutoff_for_accuracy,
    kvector_indices,
    lode_free,
    lode_mesh,
    lode_mesh_size,
    lode_periodic,
    mesh_kindices,
)
from jaxlr.kernels.lode import power_spectrum as _power_spectrum

__all__ = [
    "spherical_expansion",
    "power_spectrum",
    "prepare",
    "choose_method",
    "LodeCalculator",
    "LodeConfig",
    "MESH_THRESHOLD",
    "METHODS",
]

#: Periodic cells with at least this many atoms take the mesh route under
#: ``method="auto"``: the measured crossover (2 CPU cores, float64, max_radial 5,
#: max_angular 3) is ~1000 atoms for values and ~1700 for values + forces; at 4096
#: atoms the mesh is 1.8x (values) and 5x (forces) faster (docs/lode.md).
MESH_THRESHOLD = 2000
METHODS = ("auto", "direct", "mesh")
#: Spline orders the mesh sizing chooses from (the cheapest mesh for the accuracy).
MESH_ORDERS = (6, 8, 10)


class LodeCalculator:
    """Pure LODE calculator: ``calc(positions, species, cell=None) -> coefficients``.

    ``species`` are atomic numbers (N,); atoms whose number is not in
    ``species_list`` (padding, e.g. 0) neither carry a density nor count as a
    species (their own rows are meaningless). jit, grad and vmap take it; a cell of
    the same shape class (its k set within the host-sized index set, and for the
    mesh route within the mesh's zone) does not recompile.

    Attributes:
      config: :class:`~jaxlr.kernels.lode.LodeConfig`.
      species_list: tuple of atomic numbers, the order of the species axis.
      kindices: (K, 3) static reciprocal indices (the half space for the direct
        route, ``m_3 >= 0`` for the mesh route), or None (free space).
      method: "direct", "mesh" or "free".
      mesh, order: the mesh route's static (K1, K2, K3) mesh and B-spline order.
      channel_chunk: channels per step of the mesh route (None: by memory).
    """

    def __init__(
        self,
        config: LodeConfig,
        species_list,
        kindices=None,
        mesh=None,
        order=None,
        channel_chunk=None,
    ):
        self.config = config
        self.species_list = tuple(int(z) for z in species_list)
        self.kindices = None if kindices is None else np.asarray(kindices)
        self.mesh = None if mesh is None else tuple(int(k) for k in mesh)
        self.order = order
        self.channel_chunk = channel_chunk

    @property
    def periodic(self):
        return self.kindices is not None

    @property
    def method(self):
        if not self.periodic:
            return "free"
        return "direct" if self.mesh is None else "mesh"

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
            if self.mesh is not None:
                return lode_mesh(
                    positions,
                    onehot,
                    cell,
                    self.config,
                    self.kindices,
                    self.mesh,
                    self.order,
                    self.channel_chunk,
                )
            return lode_periodic(positions, onehot, cell, self.config, self.kindices)
        return lode_free(positions, onehot, self.config)


def choose_method(method, periodic, n_atoms, mesh_threshold=MESH_THRESHOLD):
    """Host: the route ``method`` resolves to: "free" for a molecule; for a periodic
    cell "direct" or "mesh" as asked, and under "auto" the mesh when ``n_atoms >=
    mesh_threshold`` (``n_atoms`` unknown: direct)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not periodic:
        if method == "mesh":
            raise ValueError(
                "method='mesh' needs a periodic cell; a molecule (cell=None) is summed in "
                "free space (use method='auto' or 'direct')"
            )
        return "free"
    if method == "auto":
        return "mesh" if n_atoms is not None and n_atoms >= mesh_threshold else "direct"
    return method


#: Mesh route cost model (seconds per channel, 2 CPU cores, float64, values):
#: an inverse FFT costs COST_FFT x M log2 M, the interpolation COST_INTERP x N p^3.
COST_FFT = 2e-9
COST_INTERP = 6e-9


def _mesh_for(config, cell, kindices, order, accuracy, n_atoms):
    """Host: ``(mesh, order)``: the given order, or of :data:`MESH_ORDERS` the one
    whose mesh is cheapest by the cost model (``n_atoms`` unknown: M / 8)."""
    if order is not None:
        return lode_mesh_size(config, cell, kindices, int(order), accuracy), int(order)
    best = None
    for p in MESH_ORDERS:
        try:
            mesh = lode_mesh_size(config, cell, kindices, p, accuracy)
        except ValueError:
            continue
        m = float(np.prod(mesh))
        n = m / 8.0 if n_atoms is None else float(n_atoms)
        cost = COST_FFT * m * np.log2(m) + COST_INTERP * n * p**3
        if best is None or cost < best[0]:
            best = (cost, mesh, p)
    if best is None:
        raise ValueError(f"mesh_accuracy {accuracy} is out of reach of orders {MESH_ORDERS}")
    return best[1], best[2]


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
    method="auto",
    n_atoms=None,
    mesh_threshold=MESH_THRESHOLD,
    mesh_accuracy=None,
    mesh_order=None,
    channel_chunk=None,
):
    """Host preparation of a :class:`LodeCalculator` (arguments as
    :func:`spherical_expansion`; ``species_list`` required). For a periodic cell the
    k index set is sized to ``k_cutoff * k_margin`` for this cell; inside the
    calculator it is masked by the exact ``|k| < k_cutoff``.

    Route: ``method`` in {"auto", "direct", "mesh"} (:func:`choose_method`; "auto"
    needs ``n_atoms`` to pick the mesh). The mesh route's mesh holds the whole index
    set and is sized for ``mesh_accuracy`` (default 1e-5: the B-spline aliasing
    error relative to the largest coefficient, from
    :func:`~jaxlr.kernels.lode.mesh_error_estimate`), with the cheapest of the
    B-spline orders 6, 8, 10 unless ``mesh_order`` is given; ``channel_chunk``
    bounds the channels per mesh step (memory)."""
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
    route = choose_method(method, cell is not None, n_atoms, mesh_threshold)
    if mesh_accuracy is not None and not 0.0 < float(mesh_accuracy) < 1.0:
        raise ValueError(f"mesh_accuracy must be in (0, 1), got {mesh_accuracy}")
    if route == "free":
        return LodeCalculator(config, species_list)
    cell_np = np.asarray(cell, np.float64)
    if cell_np.shape != (3, 3) or abs(np.linalg.det(cell_np)) < 1e-12:
        raise ValueError(f"cell must be a non-singular (3, 3) array, got shape {cell_np.shape}")
    if route == "direct":
        return LodeCalculator(
            config, species_list, kvector_indices(cell_np, config.k_cutoff, k_margin)
        )
    kindices = mesh_kindices(cell_np, config.k_cutoff, k_margin)
    # the estimate runs ~3x below the error measured against the largest coefficient
    target = (MESH_ACCURACY if mesh_accuracy is None else float(mesh_accuracy)) / 3.0
    mesh, order = _mesh_for(config, cell_np, kindices, mesh_order, target, n_atoms)
    return LodeCalculator(config, species_list, kindices, mesh, order, channel_chunk)


@functools.lru_cache(maxsize=32)
def _compiled(config, species_list, kbytes, kshape, mesh, order):
    kindices = None if kbytes is None else np.frombuffer(kbytes, np.int64).reshape(kshape)
    return jax.jit(LodeCalculator(config, species_list, kindices, mesh, order).__call__)


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
    method="auto",
    mesh_threshold=MESH_THRESHOLD,
    mesh_accuracy=None,
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
      method: "auto", "direct" or "mesh" (periodic cells only): the direct k sum,
        O(N N_k), or per-channel fields by FFT on a B-spline mesh, O(channels x
        (M log M + N p^3)). "auto" takes the mesh for ``N >= mesh_threshold``.
      mesh_threshold: the atom count from which "auto" takes the mesh (default
        2000, the measured crossover).
      mesh_accuracy: the mesh route's aliasing error relative to the largest
        coefficient (default 1e-5; on top of the k_cutoff truncation).

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
        method=method,
        n_atoms=len(pos),
        mesh_threshold=mesh_threshold,
        mesh_accuracy=mesh_accuracy,
    )
    k = calc.kindices
    fn = _compiled(
        calc.config,
        calc.species_list,
        None if k is None else k.astype(np.int64).tobytes(),
        None if k is None else k.shape,
        calc.mesh,
        calc.order,
    )
    return fn(jnp.asarray(positions), jnp.asarray(z), None if cell is None else jnp.asarray(cell))


def power_spectrum(coefficients):
    """(N, A, A, L+1, n, n) rotation-invariant power spectrum ``sum_m c c``."""
    return _power_spectrum(jnp.asarray(coefficients))
