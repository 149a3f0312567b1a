"""Public entry points: electrostatic energy and potential, prepared energy functions,
and energy / forces / stress by autodiff."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr.cell import validate_cell, validate_positions
from jaxlr.kernels.coulomb import coulomb_energy, coulomb_field, coulomb_potential
from jaxlr.kernels.ewald import (
    EwaldConfig,
    ewald_energy,
    ewald_field,
    ewald_potential,
    field_from_energy,
)
from jaxlr.kernels.pme import PMEConfig, pme_energy, pme_field, pme_potential
from jaxlr.kernels.slab import slab_cell, slab_correction, slab_length, slab_thickness
from jaxlr.kernels.tuning import (
    ewald_cost,
    ewald_error_estimate,
    pme_cost,
    pme_error_estimate,
    tune_ewald,
    tune_pme,
)
from jaxlr.neighbors import neighbor_list
from jaxlr.units import COULOMB

__all__ = [
    "electrostatic_energy",
    "electrostatic_potential",
    "electrostatic_field",
    "prepare_energy",
    "PreparedEnergy",
    "energy_forces_stress",
]

METHODS = ("auto", "direct", "ewald", "pme")

#: periodic structures with at least this many atoms are evaluated in a spatial
#: order (sorted inside jit): once the data outgrow the caches, locality beats the
#: cost of the sort (measured: PME energy + forces 20-30% faster at 128k atoms).
SORT_MIN_ATOMS = 16384

#: method="auto" on periodic cells: Ewald below this many atoms, above it whichever
#: of Ewald and PME the cost model finds cheaper. Measured (benchmarks/crossover.py,
#: 2 CPU cores, accuracy 1e-6): PME evaluates faster from 64 atoms up (0.4-0.7 x
#: Ewald's time below 1k atoms, 0.25 x at 4k-8k), but below 500 atoms both take
#: under 10 ms while tuning PME costs about a second on the host and Ewald's error
#: estimate is the tighter one.
AUTO_PME_MIN_ATOMS = 500


def _validate_dipoles(dipoles, n):
    """Host check of (N, 3) dipoles; returns a float64 numpy array or None."""
    if dipoles is None:
        return None
    mu = np.asarray(dipoles)
    if mu.shape != (n, 3):
        raise ValueError(f"dipoles must have shape ({n}, 3) to match positions, got {mu.shape}")
    if not np.issubdtype(mu.dtype, np.number) or not np.all(np.isfinite(mu)):
        raise ValueError("dipoles has non-finite values")
    return mu.astype(np.float64)


def _charges_or_zeros(charges, dipoles, n):
    if charges is None:
        if dipoles is None:
            raise ValueError(
                "charges is None: pass charges, or dipoles for a purely dipolar system"
            )
        return np.zeros(n)
    return charges


def _validate(positions, charges, cell, pbc, method, accuracy, sigma, dipoles=None):
    pos = validate_positions(positions)
    _validate_dipoles(dipoles, len(pos))
    q = np.asarray(_charges_or_zeros(charges, dipoles, len(pos)))
    if q.shape != (len(pos),):
        raise ValueError(f"charges must have shape ({len(pos)},) to match positions, got {q.shape}")
    if not np.all(np.isfinite(q)):
        raise ValueError("charges has non-finite values")
    cell_np, pbc = validate_cell(None if cell is None else np.asarray(cell), pbc)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not (0.0 < accuracy < 1.0):
        raise ValueError(f"accuracy must be in (0, 1), got {accuracy}")
    if sigma is not None:
        s = np.asarray(sigma, dtype=np.float64)
        if s.ndim not in (0, 1) or (s.ndim == 1 and s.shape != (len(pos),)):
            raise ValueError(f"sigma must be a scalar or shape ({len(pos)},), got {s.shape}")
        if not np.all(np.isfinite(s)) or np.any(s < 0):
            raise ValueError(
                f"sigma must be finite and non-negative (0 marks a point charge), got min {s.min()}"
            )
    periodic = any(pbc)
    if periodic and not all(pbc) and pbc != (True, True, False):
        raise ValueError(
            f"pbc={pbc}: a slab must have its open direction last, pbc=(True, True, "
            "False) with the periodic vectors as the first two cell rows (permute the "
            "cell rows and pbc); one periodic axis (a wire) is not supported"
        )
    if method == "auto" and not periodic:
        method = "direct"
    if method == "direct" and periodic:
        total = float(q.sum())
        raise ValueError(
            f"method='direct' cannot sum a periodic cell or slab (charges sum to {total:.6g}; "
            "a lattice sum is only conditionally convergent): use method='ewald', "
            "or cell=None for a molecule"
        )
    if method in ("ewald", "pme") and not periodic:
        raise ValueError(
            f"method={method!r} needs a periodic cell; pass cell=... or method='direct'"
        )
    return pos, q, cell_np, pbc, method


class PreparedEnergy:
    """A pure energy function prepared on the host by :func:`prepare_energy`.

    ``fn(positions, charges, cell=None, dipoles=None) -> E`` (eV) is pure: jit, grad
    and vmap take it, it does no host work, and it rebuilds its pairs inside jit
    within the capacities sized at preparation. Compilation depends only on shapes
    and the frozen config, never on the values of positions, charges, dipoles or
    cell. ``dipoles`` ((N, 3) e·Å) adds point or Gaussian atomic dipoles (tin-foil
    boundary for periodic cells); the accuracy covers them when the function was
    prepared with example dipoles. :meth:`field` and :meth:`field_operator` give
    the field at the atoms (V/Å), ``-dE/dmu_i`` without the Gaussian dipole self
    energy.

    Overflow (more atoms per bin or pairs than the capacity, or a cell shrunk below
    the bin grid) is never truncated: ``fn`` raises a runtime error (the energy is
    NaN if the error is caught), and :meth:`energy_and_overflow` returns the flag
    instead, for loops that re-prepare on the host.

    Attributes:
      method: "direct", "ewald" or "pme".
      config: :class:`~jaxlr.kernels.EwaldConfig` or
        :class:`~jaxlr.kernels.PMEConfig` (None for direct).
      estimated_error: estimated absolute energy error in eV (0 for direct).
      neighbors: the jit neighbour list (None for direct).
      slab_length: for a slab, the periodic length along the normal (Å) in which
        it is summed; None otherwise.
    """

    def __init__(
        self, method, config, neighbors, pbc, sigma, prefactor, estimated_error, slab_length=None
    ):
        self.slab_length = slab_length
        self.method = method
        self.config = config
        self.neighbors = neighbors
        self.pbc = pbc
        self.sigma = sigma
        self.prefactor = prefactor
        self.estimated_error = estimated_error
        # called on concrete arrays, evaluate compiled: op-by-op dispatch of the
        # kernels costs seconds; inside an outer jit this inner jit just inlines
        self._compiled = jax.jit(self._evaluate, static_argnames=("potential",))
        self._compiled_field = jax.jit(self._field)

    def __repr__(self):
        return (
            f"PreparedEnergy(method={self.method!r}, config={self.config}, "
            f"estimated_error={self.estimated_error:.3g} eV)"
        )

    def _sigma(self, dtype):
        return None if self.sigma is None else jnp.asarray(self.sigma, dtype)

    def energy_and_overflow(self, positions, charges, cell=None, dipoles=None):
        """``(E, overflow)``: the energy and the capacity-overflow flag (bool scalar)."""
        return self._compiled(positions, charges, cell, potential=False, dipoles=dipoles)

    def potential_and_overflow(self, positions, charges, cell=None, dipoles=None):
        """``(phi, overflow)``: (N,) potential in V and the overflow flag."""
        return self._compiled(positions, charges, cell, potential=True, dipoles=dipoles)

    def field_and_overflow(self, positions, charges, cell=None, dipoles=None):
        """``(field, overflow)``: (N, 3) field in V/Å and the overflow flag."""
        return self._compiled_field(positions, charges, cell, dipoles)

    def _field(self, positions, charges, cell, dipoles):
        fn, overflow = self.field_operator(positions, cell)
        return fn(charges, dipoles), overflow

    def _evaluate(self, positions, charges, cell, potential, sigma=None, dipoles=None):
        """Energy or potential, and the overflow flag; ``sigma`` (traced widths, for
        derivatives with respect to them) replaces the prepared widths."""
        kind = "potential" if potential else "energy"
        fn, overflow, positions = self._operator(positions, cell, sigma, kind)
        mu = None if dipoles is None else jnp.asarray(dipoles).astype(positions.dtype)
        q = _charges_or_zeros(charges, dipoles, positions.shape[0])
        return fn(jnp.asarray(q).astype(positions.dtype), mu), overflow

    def field_operator(self, positions, cell=None, sigma=None):
        """``(field_fn, overflow)``: ``field_fn(charges, dipoles)`` the (N, 3) field in
        V/Å at each atom (``-dE/dmu_i`` without the Gaussian dipole self energy)
        for these positions, linear in (charges, dipoles), with the pairs (and the
        spatial order) built once: for solvers that apply it many times (induced
        dipoles by conjugate gradients). ``charges`` or ``dipoles`` may be None
        (zeros). ``sigma`` replaces the prepared widths."""
        fn, overflow, positions = self._operator(positions, cell, sigma, "field")
        n, dtype = positions.shape[0], positions.dtype

        def field_fn(charges, dipoles):
            q = jnp.zeros(n, dtype) if charges is None else jnp.asarray(charges).astype(dtype)
            mu = jnp.zeros((n, 3), dtype) if dipoles is None else jnp.asarray(dipoles).astype(dtype)
            return fn(q, mu)

        return field_fn, overflow

    def potential_operator(self, positions, cell=None, sigma=None):
        """``(phi, overflow)``: ``phi(q)`` the (N,) potential of charges q for these
        positions, linear in q, with the pairs (and the spatial order) built once:
        for solvers that apply it many times (charge equilibration). ``sigma``
        replaces the prepared widths."""
        fn, overflow, _ = self._operator(positions, cell, sigma, "potential")
        return (lambda q: fn(q, None)), overflow

    def _operator(self, positions, cell, sigma, kind):
        """``(fn, overflow, positions)``, ``fn(q, mu)`` the energy, potential or field
        (``kind``) of charges q and dipoles mu (None: none)."""
        positions = jnp.asarray(positions)
        dtype = positions.dtype
        sigma = self._sigma(dtype) if sigma is None else jnp.asarray(sigma, dtype)
        potential = kind == "potential"
        if self.method == "direct":

            def direct(q, mu):
                kw = dict(sigma=sigma, prefactor=self.prefactor)
                if kind == "field":
                    return coulomb_field(positions, q, mu, **kw)
                if mu is not None:
                    if potential:
                        return coulomb_potential(positions, q, dipoles=mu, **kw)
                    return coulomb_energy(positions, q, dipoles=mu, **kw)
                phi = coulomb_potential(positions, q, **kw)
                return phi if potential else 0.5 * jnp.sum(q * phi)

            return direct, jnp.asarray(False), positions
        if cell is None:
            raise ValueError("this energy function was prepared for a periodic cell: pass cell")
        cell = jnp.asarray(cell).astype(dtype)
        perm = None
        if positions.shape[0] >= SORT_MIN_ATOMS:
            # visit atoms in space-filling order: the pair build, the pair gathers and
            # the mesh scatter then walk memory instead of jumping through it (the
            # energy does not depend on the order; the potential is put back)
            perm = _spatial_order(positions, cell, self.neighbors.config.n_bins)
            positions = positions[perm]
            if sigma is not None and sigma.ndim:
                sigma = sigma[perm]
        pairs, overflow = self.neighbors.build(positions, cell)

        def periodic(q, mu):
            q = q.astype(dtype)
            if perm is not None:
                q = q[perm]
                mu = None if mu is None else mu[perm]
            kw = dict(config=self.config, sigma=sigma, prefactor=self.prefactor)
            if self.slab_length is not None:
                out = self._evaluate_slab(positions, q, mu, cell, pairs, sigma, kind)
            elif kind == "field":
                kernel = pme_field if self.method == "pme" else ewald_field
                out = kernel(positions, q, mu, cell, pairs, **kw)
            else:
                if self.method == "pme":
                    kernel = pme_potential if potential else pme_energy
                else:
                    kernel = ewald_potential if potential else ewald_energy
                if mu is not None:
                    kw["dipoles"] = mu
                out = kernel(positions, q, cell, pairs, **kw)
            if kind != "energy" and perm is not None:
                out = jnp.zeros_like(out).at[perm].set(out, unique_indices=True)
            return out

        return periodic, overflow, positions

    def _evaluate_slab(self, positions, charges, dipoles, cell, pairs, sigma, kind):
        length = self.slab_length
        periodic = slab_cell(cell, length)

        def total(q, mu):
            kernel = pme_energy if self.method == "pme" else ewald_energy
            kw = dict(config=self.config, sigma=sigma, prefactor=1.0)
            if mu is not None:
                kw["dipoles"] = mu
            e = kernel(positions, q, periodic, pairs, **kw)
            return e + slab_correction(positions, q, cell, length, sigma, mu)

        if kind == "field":
            return field_from_energy(
                lambda mu: total(charges, mu), dipoles, sigma, charges, self.prefactor
            )
        if kind == "potential":
            return self.prefactor * jax.grad(total)(charges, dipoles)
        return self.prefactor * total(charges, dipoles)

    def potential(self, positions, charges, cell=None, dipoles=None):
        """(N,) potential phi_i in V (``E = 1/2 sum q_i phi_i`` without dipoles;
        ``phi_i = dE/dq_i`` always); raises on overflow."""
        phi, overflow = self.potential_and_overflow(positions, charges, cell, dipoles)
        return _checked(phi, overflow)

    def field(self, positions, charges, cell=None, dipoles=None):
        """(N, 3) field in V/Å at each atom from all other charges and dipoles
        (``-dE/dmu_i`` without the Gaussian dipole self energy); raises on overflow."""
        f, overflow = self.field_and_overflow(positions, charges, cell, dipoles)
        return _checked(f, overflow)

    def __call__(self, positions, charges, cell=None, dipoles=None):
        e, overflow = self.energy_and_overflow(positions, charges, cell, dipoles)
        return _checked(e, overflow)


def _spatial_order(positions, cell, n_bins):
    """Permutation visiting atoms bin by bin (row-major over wrapped fractional
    coordinates on the neighbour grid); computed inside jit, no gradient."""
    s = jax.lax.stop_gradient(positions @ jnp.linalg.inv(cell))
    nb = np.asarray(n_bins, np.int32)
    b = jnp.floor((s % 1.0) * jnp.asarray(nb, s.dtype)[None, :]).astype(jnp.int32)
    b = jnp.clip(b, 0, nb[None, :] - 1)
    return jnp.argsort((b[:, 0] * nb[1] + b[:, 1]) * nb[2] + b[:, 2])


def _raise_on_overflow(flag):
    if np.any(flag):
        raise RuntimeError(
            "jaxlr: neighbour capacity overflow (atoms per bin or pairs exceeded the "
            "capacity sized by prepare_energy, or the cell shrank below the bin grid); "
            "call jaxlr.prepare_energy again on the new structure"
        )


def _checked(value, overflow):
    if isinstance(overflow, jax.Array) and not isinstance(overflow, jax.core.Tracer):
        _raise_on_overflow(np.asarray(overflow))
    else:
        jax.debug.callback(_raise_on_overflow, overflow)
    return jnp.where(overflow, jnp.nan, value)


def prepare_energy(
    positions,
    charges,
    cell=None,
    *,
    pbc=None,
    method="auto",
    accuracy=1e-6,
    prefactor=COULOMB,
    sigma=None,
    capacity_multiplier=1.25,
    config: EwaldConfig | PMEConfig | None = None,
    dipoles=None,
):
    r"""Prepare, on the host, a pure energy function for structures like this one.

    Validates the input, tunes the method's parameters for ``accuracy`` and sizes
    the pair capacities from this example (times ``capacity_multiplier``).

    Args:
      positions: (N, 3) example positions in Å.
      charges: (N,) example charges in e (they set the error scale).
      cell: (3, 3) lattice vectors as rows in Å, or None for a molecule.
      pbc: periodic axes (3 bools); default all True with a cell.
        ``(True, True, False)`` is a slab: the first two cell rows are periodic,
        the normal to them is open (see docs/pme.md); the slab's extent along the
        normal is taken from this example, so an atom that later moves far out
        of it shrinks the vacuum gap and loosens the accuracy.
      method: "auto", "direct", "ewald" or "pme". "auto" takes direct for
        molecules; for periodic cells Ewald below ``AUTO_PME_MIN_ATOMS`` atoms,
        above it whichever of Ewald and PME the cost model finds cheaper.
      accuracy: requested relative energy error (see :mod:`jaxlr.kernels.tuning`).
      prefactor: Coulomb constant; 1.0 gives Gaussian units (e^2/Å).
      sigma: None for point charges, or Gaussian widths in Å (scalar or (N,));
        a width of 0 marks a point charge among Gaussian ones.
      capacity_multiplier: head room on the pair and bin capacities.
      config: explicit :class:`~jaxlr.kernels.EwaldConfig` or
        :class:`~jaxlr.kernels.PMEConfig` instead of tuning (it sets the method).
      dipoles: optional (N, 3) example atomic dipoles in e·Å: the tuner then sizes
        the parameters for the dipolar energy (``charges`` may be None).

    Returns:
      :class:`PreparedEnergy`, ``fn(positions, charges, cell, dipoles=None) -> E``
      in eV.

    Raises:
      ValueError: bad shapes, non-finite values, singular cell, bad sigma or
        accuracy, a periodic cell with ``method="direct"``, or a mixed
        periodicity other than the slab ``(True, True, False)``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxlr
      >>> pos = jnp.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
      >>> q, cell = jnp.array([1.0, -1.0]), 4.0 * jnp.eye(3)  # CsCl, a = 4 Å
      >>> fn = jaxlr.prepare_energy(pos, q, cell, accuracy=1e-8, prefactor=1.0)
      >>> e = jax.jit(fn)(pos, q, cell)
      >>> round(-float(e) * 2 * 3**0.5, 6)  # Madelung constant of CsCl (d = 2 sqrt(3))
      1.762675
    """
    pos, q, cell_np, pbc, method = _validate(
        positions, charges, cell, pbc, method, accuracy, sigma, dipoles
    )
    mu = _validate_dipoles(dipoles, len(pos))
    sig = None if sigma is None else np.asarray(sigma, np.float64)
    if method == "direct":
        return PreparedEnergy("direct", None, None, pbc, sig, prefactor, 0.0)
    slab = not all(pbc)
    length = slab_length(pos, cell_np, accuracy, sig) if slab else None
    for _ in range(3):
        # a slab is summed in a periodic cell whose gap must exceed the real cutoff
        periodic_cell = cell_np if not slab else _host_slab_cell(cell_np, length)
        cfg, method_used = _configure(pos, q, periodic_cell, method, accuracy, sig, config, mu)
        if not slab or cfg.r_cut <= length - slab_thickness(pos, cell_np, sig):
            break
        length = slab_length(pos, cell_np, accuracy, sig, cfg.r_cut)
    nl = neighbor_list(
        pos, cfg.r_cut, cell_np, pbc, half=True, capacity_multiplier=capacity_multiplier
    )
    return PreparedEnergy(
        method_used,
        cfg,
        nl,
        pbc,
        sig,
        prefactor,
        abs(prefactor) * cfg.estimated_error,
        slab_length=length,
    )


def _host_slab_cell(cell, length):
    n = np.cross(cell[0], cell[1])
    return np.stack([cell[0], cell[1], length * n / np.linalg.norm(n)])


def _configure(pos, q, cell_np, method, accuracy, sig, config, mu=None):
    """Tuned (or checked) config and the method it belongs to."""
    if config is not None:
        method = "pme" if isinstance(config, PMEConfig) else "ewald"
        if config.estimated_error is None:
            if method == "pme":
                estimate = pme_error_estimate(q, cell_np, config, sig, mu, positions=pos)
            else:
                estimate = ewald_error_estimate(q, cell_np, config, sig, mu)
            config = dataclasses.replace(config, estimated_error=estimate)
        return config, method
    kw = dict(accuracy=accuracy, sigma=sig, dipoles=mu)
    if method == "ewald":
        return tune_ewald(pos, q, cell_np, **kw), "ewald"
    if method == "pme":
        return tune_pme(pos, q, cell_np, **kw), "pme"
    config = tune_ewald(pos, q, cell_np, **kw)
    if len(pos) >= AUTO_PME_MIN_ATOMS:
        pme_cfg = tune_pme(pos, q, cell_np, **kw)
        if pme_cost(len(pos), cell_np, pme_cfg) < ewald_cost(len(pos), cell_np, config):
            return pme_cfg, "pme"
    return config, "ewald"


def _prepared_call(positions, charges, cell, dipoles, kw):
    fn = prepare_energy(positions, charges, cell, dipoles=dipoles, **kw)
    positions = jnp.asarray(positions)
    q = _charges_or_zeros(charges, dipoles, positions.shape[0])
    mu = None if dipoles is None else jnp.asarray(dipoles)
    return fn, (positions, jnp.asarray(q), None if cell is None else jnp.asarray(cell), mu)


def electrostatic_energy(
    positions,
    charges,
    cell=None,
    *,
    dipoles=None,
    pbc=None,
    method="auto",
    accuracy=1e-6,
    prefactor=COULOMB,
    sigma=None,
):
    r"""Electrostatic energy of one structure, E = 1/2 sum_i q_i phi_i.

    Args:
      positions: (N, 3) Cartesian positions in Å.
      charges: (N,) charges in e; a charged periodic cell gets a uniform background.
        May be None when ``dipoles`` are given (then zeros).
      cell: (3, 3) lattice vectors as rows in Å, or None for a molecule.
      dipoles: optional (N, 3) atomic dipoles in e·Å: point dipoles, or Gaussian
        ones of the atom's width ``sigma`` (self energy
        ``|mu|^2 / (12 sqrt(pi) sigma^3)`` included). Periodic cells use the
        tin-foil (conducting) boundary (see docs/dipoles.md).
      pbc: periodic axes; default all True with a cell.
      method: "auto", "direct" (molecules), "ewald" or "pme" (periodic).
      accuracy: requested relative energy error.
      prefactor: Coulomb constant (``COULOMB`` eV·Å; 1.0 for Gaussian units).
      sigma: None for point charges or Gaussian widths in Å (scalar or (N,)); their
        self energy q^2/(2 sqrt(pi) sigma) is included.

    Returns:
      Energy in eV (e^2/Å if ``prefactor=1.0``), dtype of ``positions``.

    Raises:
      ValueError: see :func:`prepare_energy`; bad ``dipoles`` shape or values.

    Examples:
      >>> import jax.numpy as jnp, jaxlr
      >>> pos = jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
      >>> float(jaxlr.electrostatic_energy(pos, jnp.array([1.0, -1.0]), prefactor=1.0))
      -0.5
      >>> mu = jnp.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # head to tail: -2 mu^2 / r^3
      >>> float(jaxlr.electrostatic_energy(pos, None, dipoles=mu, prefactor=1.0))
      -0.25
    """
    kw = dict(pbc=pbc, method=method, accuracy=accuracy, prefactor=prefactor, sigma=sigma)
    fn, args = _prepared_call(positions, charges, cell, dipoles, kw)
    return fn(*args)


def electrostatic_potential(
    positions,
    charges,
    cell=None,
    *,
    dipoles=None,
    pbc=None,
    method="auto",
    accuracy=1e-6,
    prefactor=COULOMB,
    sigma=None,
):
    r"""(N,) electrostatic potential phi_i (V), the physical one: E = 1/2 sum q_i phi_i.

    phi_i = sum_j q_j v(r_ij) over all other charges and images, plus the Gaussian
    self term, the Ewald self and background terms (arguments as
    :func:`electrostatic_energy`); with ``dipoles``, ``phi_i = dE/dq_i`` includes
    the dipoles' potential.
    """
    kw = dict(pbc=pbc, method=method, accuracy=accuracy, prefactor=prefactor, sigma=sigma)
    fn, args = _prepared_call(positions, charges, cell, dipoles, kw)
    return fn.potential(*args)


def electrostatic_field(
    positions,
    charges,
    cell=None,
    *,
    dipoles=None,
    pbc=None,
    method="auto",
    accuracy=1e-6,
    prefactor=COULOMB,
    sigma=None,
):
    r"""(N, 3) electric field at each atom in V/Å from all OTHER charges and dipoles
    (and their periodic images).

    Defined as ``field_i = -dE/dmu_i`` with the Gaussian dipole self energy left
    out: for point sites it is ``-grad phi`` at atom i of every other source; for
    Gaussian sites, the field of the other smeared sources averaged over atom i's
    Gaussian. It is linear in (charges, dipoles), so ``-1/2 sum mu_i . field_i`` is
    the dipoles' share of the energy. Arguments as :func:`electrostatic_energy`
    (``charges`` or ``dipoles`` may be None; ``prefactor=1.0`` gives e/Å^2).

    Examples:
      >>> import jax.numpy as jnp, jaxlr
      >>> pos = jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
      >>> f = jaxlr.electrostatic_field(pos, jnp.array([1.0, 0.0]), prefactor=1.0)
      >>> round(float(f[1, 2]), 6)  # q / r^2 along +z at the second atom
      0.25
    """
    n = np.shape(positions)[0]
    if charges is None and dipoles is None:
        raise ValueError("pass charges, dipoles or both")
    kw = dict(pbc=pbc, method=method, accuracy=accuracy, prefactor=prefactor, sigma=sigma)
    q = np.zeros(n) if charges is None else charges
    fn, args = _prepared_call(positions, q, cell, dipoles, kw)
    return fn.field(*args)


def energy_forces_stress(energy_fn, positions, cell, *args, **kwargs):
    r"""Energy, forces and stress of ``energy_fn(positions, cell, *args, **kwargs)``.

    Forces are ``-dE/dR``; the stress is ASE's, ``sigma = (1/V) dE/d(eps)`` with the
    strain applied as ``cell @ (I + eps)`` and atoms carried along, so it sees the
    cell dependence through positions AND cell. Pure: jit and vmap take it.

    Args:
      energy_fn: scalar function ``(positions, cell, *args, **kwargs)``.
      positions: (N, 3) positions in Å.
      cell: (3, 3) lattice vectors as rows in Å, or None (then stress is None).

    Returns:
      ``(E, F, stress)``: scalar eV, (N, 3) eV/Å, (3, 3) eV/Å^3 (or None).
    """
    if cell is None:
        e, g = jax.value_and_grad(lambda p: energy_fn(p, None, *args, **kwargs))(positions)
        return e, -g, None
    eye = jnp.eye(3, dtype=cell.dtype)

    def strained(pos, eps):
        deform = eye + eps
        return energy_fn(pos @ deform, cell @ deform, *args, **kwargs)

    e, (g, ge) = jax.value_and_grad(strained, argnums=(0, 1))(positions, jnp.zeros_like(cell))
    return e, -g, ge / jnp.abs(jnp.linalg.det(cell))
