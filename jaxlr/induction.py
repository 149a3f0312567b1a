r"""Induced dipoles: isotropic polarizabilities with Thole-damped dipole coupling.

Each atom i has a polarizability ``alpha_i`` (Å^3) and carries the induced dipole
``mu_i`` (e·Å) that solves

    mu_i = alpha_i (E0_i / k + sum_{j != i} T_ij mu_j),    k = COULOMB (eV·Å/e^2),

i.e. ``A mu = E0 / k`` with ``A = diag(1/alpha) - T`` (1/Å^3). ``E0`` (V/Å) is the
permanent field: the field of the charges (point charges, or Gaussians of width
``sigma``) at each atom, Thole-damped unless ``damp_field=False``, plus an external
field. ``T`` is the dipole field tensor with Thole's exponential damping
(``thole`` = a, AMOEBA's 0.39; see :mod:`jaxlr.kernels.induction`). A lone atom
in a field E (V/Å) gets ``mu = alpha E / k``: alpha is the polarizability volume
in Å^3 (multiply by ``4 pi eps0`` for SI).

The induction energy (eV) is ``U = k/2 mu.A mu - mu.E0 = -1/2 mu.E0`` at the
solution; it does not include the charge-charge energy (see
:func:`jaxlr.electrostatic_energy`). A must be positive definite; where it is
not (a *polarization catastrophe*: atoms too close for their polarizabilities,
too little damping) the solvers raise on the host, naming the smallest eigenvalue
and the atoms of its mode, or flag it (``ok``) inside jit.

The dense path factorises A (3N x 3N) once; the matrix-free one runs
Jacobi-preconditioned CG on the dipole-field mat-vec, flagging a direction of
negative curvature. Both are implicitly differentiated: gradients with respect to
positions, polarizabilities, charges, widths and the external field cost one more
solve, and the energy's gradient at the solution equals its partial derivative at
fixed dipoles (Hellmann-Feynman).

In a periodic cell the dipolar field is the Ewald / PME lattice sum of
:meth:`jaxlr.PreparedEnergy.field_operator` (tin-foil boundary, own images
included) plus the short-range Thole correction over the pairs within
:func:`thole_range`; a periodic solve is tuned on the host, so under jit use
:func:`prepare` outside and the pure ``.solve`` of the result inside.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr.kernels.induction import (
    _inverse_alpha,
    charge_field,
    dipole_field,
    induction_matrix,
    pair_charge_field,
    pair_tensor_field,
    solve_induced_dense,
    solve_induced_matrix_free,
    thole_correction,
)
from jaxlr.neighbors import neighbor_list, pair_vectors
from jaxlr.units import COULOMB

__all__ = [
    "solve",
    "energy",
    "prepare",
    "InductionResult",
    "InductionSolver",
    "THOLE",
    "thole_range",
]

#: AMOEBA's Thole damping parameter (Ren & Ponder 2003).
THOLE = 0.39

#: method="auto": the dense path (a 3N x 3N Cholesky) up to this many atoms.
DENSE_MAX_ATOMS = 600

#: method="auto" in a periodic cell: the dense path (the matrix assembled from 3N
#: periodic field evaluations) up to this many atoms, matrix-free CG above.
DENSE_MAX_PERIODIC = 10

#: the matrix-free path sums the periodic field by PME from this many atoms.
PME_MIN_ATOMS = 1000

#: the host diagnosis of a failed solve (smallest eigenvalue) up to this many atoms
#: (molecule, periodic cell).
_DIAGNOSE_MAX_ATOMS = (2000, 200)


class InductionResult(NamedTuple):
    """Induced dipoles and solver status.

    Attributes:
      dipoles: (N, 3) induced dipoles in e·Å.
      energy: induction energy ``k/2 mu.A mu - mu.E0`` in eV (``-1/2 mu.E0`` at
        the solution).
      field: (N, 3) permanent field E0 in V/Å (charges and external field).
      ok: False on a polarization catastrophe (A not positive definite), a
        matrix-free solve that did not converge, or a neighbour overflow.
      iterations: CG iterations (0 for the dense path).
      residual: relative residual of the matrix-free path (0 for the dense one).
      curvature: smallest ``p.Ap / p.p`` met by CG (1/Å^3; inf for the dense path).
    """

    dipoles: jax.Array
    energy: jax.Array
    field: jax.Array
    ok: jax.Array
    iterations: jax.Array
    residual: jax.Array
    curvature: jax.Array


class InductionSolver:
    """Pure induced-dipole solver prepared on the host (see :func:`prepare`).

    For a molecule the dipole field is the direct Thole-damped sum. In a periodic
    cell it is the bare dipolar field of the prepared Ewald / PME operator
    (tin-foil boundary, each atom's own images included) plus the short-range
    Thole correction ``T_thole - T_bare`` over the neighbour pairs within
    ``thole_cutoff`` (the same for the charges' field when ``damp_field``).

    Attributes:
      n_atoms: number of atoms.
      thole: Thole parameter a (None: no damping).
      damp_field: whether the charges' field is Thole-damped.
      sigma: (N,) Gaussian widths of the charges (Å; 0 point charges) or None.
      prepared: the periodic :class:`~jaxlr.PreparedEnergy` (Gaussian units), or None.
      neighbors: the jit neighbour list of the Thole correction (periodic, damped).
      thole_cutoff: range (Å) of the Thole correction (None for a molecule).
    """

    def __init__(
        self, n_atoms, thole, damp_field, sigma, prepared=None, neighbors=None, thole_cutoff=None
    ):
        self.n_atoms = n_atoms
        self.thole = thole
        self.damp_field = damp_field
        self.sigma = sigma
        self.prepared = prepared
        self.neighbors = neighbors
        self.thole_cutoff = thole_cutoff

    @property
    def periodic(self):
        return self.prepared is not None

    def _alpha(self, polarizability, dtype):
        return jnp.broadcast_to(jnp.asarray(polarizability, dtype), (self.n_atoms,))

    def _periodic_parts(self, positions, alpha, cell):
        """``(field_fn, corrections, overflow)`` for a periodic cell: the bare field
        operator (Gaussian units) and the Thole pair corrections (or None)."""
        if cell is None:
            raise ValueError("this solver was prepared for a periodic cell: pass cell")
        cell = jnp.asarray(cell, positions.dtype)
        field_fn, overflow = self.prepared.field_operator(positions, cell)
        if self.neighbors is None:
            return field_fn, None, overflow
        pairs, overflow_pairs = self.neighbors.build(positions, cell)
        r_vec = pair_vectors(positions, pairs, cell)
        live = (alpha[pairs.i] > 0) & (alpha[pairs.j] > 0)
        dt, dh = thole_correction(
            r_vec, alpha[pairs.i], alpha[pairs.j], self.thole, pairs.mask & live
        )
        return field_fn, (pairs, r_vec, dt, dh), overflow | overflow_pairs

    def _field(self, positions, alpha, charges, field, cell, parts=None):
        """``(E0 (N, 3) V/Å, overflow)``."""
        dtype = positions.dtype
        n = self.n_atoms
        e0 = jnp.zeros((n, 3), dtype)
        overflow = jnp.asarray(False)
        if charges is not None:
            q = jnp.asarray(charges, dtype)
            if not self.periodic:
                damp = self.thole if self.damp_field else None
                sig = None if self.sigma is None else jnp.asarray(self.sigma, dtype)
                e0 = COULOMB * charge_field(positions, q, alpha, damp, sig)
            else:
                field_fn, corr, overflow = parts or self._periodic_parts(positions, alpha, cell)
                e_q = field_fn(q, None)
                if corr is not None and self.damp_field:
                    pairs, r_vec, _, dh = corr
                    e_q = e_q + pair_charge_field(dh, r_vec, q, pairs, n)
                e0 = COULOMB * e_q
        if field is not None:
            e0 = e0 + jnp.broadcast_to(jnp.asarray(field, dtype), (n, 3))
        return e0, overflow

    def permanent_field(self, positions, polarizability, charges=None, field=None, cell=None):
        """(N, 3) permanent field E0 in V/Å: the charges' field (damped unless
        ``damp_field=False``) plus the external ``field`` ((3,) or (N, 3))."""
        alpha = self._alpha(polarizability, positions.dtype)
        return self._field(positions, alpha, charges, field, cell)[0]

    def operator(self, positions, polarizability, cell=None, parts=None):
        """``(matvec, diagonal, overflow)``: ``matvec(v) = A v`` for (N, 3) v, the
        (N,) diagonal ``1/alpha`` and the neighbour overflow flag."""
        alpha = self._alpha(polarizability, positions.dtype)
        diag = _inverse_alpha(alpha)
        if not self.periodic:

            def matvec(v):
                return diag[:, None] * v - dipole_field(positions, v, alpha, self.thole)

            return matvec, diag, jnp.asarray(False)
        field_fn, corr, overflow = parts or self._periodic_parts(positions, alpha, cell)
        live = (alpha > 0)[:, None]

        def matvec_periodic(v):
            v_live = jnp.where(live, v, 0.0)
            t_v = field_fn(None, v_live)
            if corr is not None:
                pairs, _, dt, _ = corr
                t_v = t_v + pair_tensor_field(dt, v_live, pairs, self.n_atoms)
            return diag[:, None] * v - jnp.where(live, t_v, 0.0)

        return matvec_periodic, diag, overflow

    def _matrix(self, positions, alpha, cell, parts=None):
        if not self.periodic:
            return induction_matrix(positions, alpha, self.thole), jnp.asarray(False)
        matvec, _, overflow = self.operator(positions, alpha, cell, parts)
        n3 = 3 * self.n_atoms
        basis = jnp.eye(n3, dtype=positions.dtype).reshape(n3, self.n_atoms, 3)
        cols = jax.lax.map(matvec, basis).reshape(n3, n3)  # row c = A e_c
        return 0.5 * (cols + cols.T), overflow

    def matrix(self, positions, polarizability, cell=None):
        """(3N, 3N) ``A = diag(1/alpha) - T`` in 1/Å^3 (index ``3 i + axis``); in a
        periodic cell assembled column by column from the mat-vec."""
        alpha = self._alpha(polarizability, positions.dtype)
        return self._matrix(positions, alpha, cell)[0]

    def solve(
        self,
        positions,
        polarizability,
        charges=None,
        field=None,
        cell=None,
        *,
        method="dense",
        tol=1e-8,
        max_iter=500,
        guess=None,
    ) -> InductionResult:
        """Pure solve (jit, grad, vmap).

        Args:
          positions: (N, 3) Å. polarizability: (N,) or scalar, Å^3.
          charges: (N,) e, or None. field: external field (3,) or (N, 3) V/Å, or None.
          cell: (3, 3) for a periodic solver, else None.
          method: "dense" (Cholesky of A) or "matrix_free" (preconditioned CG);
            ``tol`` (relative residual), ``max_iter`` and ``guess`` ((N, 3)
            starting dipoles) are the matrix-free path's.

        Returns:
          :class:`InductionResult`.
        """
        dtype = positions.dtype
        alpha = self._alpha(polarizability, dtype)
        parts = self._periodic_parts(positions, alpha, cell) if self.periodic else None
        e0, overflow = self._field(positions, alpha, charges, field, cell, parts)
        rhs = jnp.where((alpha > 0)[:, None], e0 / COULOMB, 0.0)
        if method == "dense":
            a, overflow_a = self._matrix(positions, alpha, cell, parts)
            mu, ok = solve_induced_dense(a, rhs)
            applied = (a @ mu.reshape(-1)).reshape(-1, 3)
            its, res = jnp.asarray(0), jnp.asarray(0.0, dtype)
            low = jnp.asarray(jnp.inf, dtype)
            overflow = overflow | overflow_a
        elif method == "matrix_free":
            matvec, diag, overflow_op = self.operator(positions, alpha, cell, parts)
            mu, ok, its, res, low = solve_induced_matrix_free(
                matvec, diag, rhs, tol=tol, max_iter=max_iter, x0=guess
            )
            applied = matvec(mu)
            overflow = overflow | overflow_op
        else:
            raise ValueError(f"method must be 'dense' or 'matrix_free', got {method!r}")
        u = 0.5 * COULOMB * jnp.sum(mu * applied) - jnp.sum(mu * e0)
        return InductionResult(mu, u, e0, ok & ~overflow, its, res, low)

    def energy(self, positions, polarizability, dipoles, charges=None, field=None, cell=None):
        """Induction energy ``k/2 mu.A mu - mu.E0`` (eV) of given dipoles (e·Å):
        minimal (and ``-1/2 mu.E0``) at the solution. With the dipoles held fixed
        its gradient is the Hellmann-Feynman force."""
        dtype = positions.dtype
        alpha = self._alpha(polarizability, dtype)
        parts = self._periodic_parts(positions, alpha, cell) if self.periodic else None
        e0, _ = self._field(positions, alpha, charges, field, cell, parts)
        matvec, _, _ = self.operator(positions, alpha, cell, parts)
        return 0.5 * COULOMB * jnp.sum(dipoles * matvec(dipoles)) - jnp.sum(dipoles * e0)


def _check_thole(thole):
    if thole is None:
        return None
    if isinstance(thole, jax.core.Tracer):
        raise ValueError("thole must be a concrete number (a model hyper-parameter)")
    a = float(thole)
    if not np.isfinite(a) or a < 0:
        raise ValueError(f"thole must be a finite number >= 0 (0 or None: no damping), got {a}")
    return None if a == 0 else a


def _check_sigma(sigma, n):
    if sigma is None:
        return None
    if jnp.shape(sigma) not in ((), (n,)):
        raise ValueError(f"sigma must be a scalar or shape ({n},), got {jnp.shape(sigma)}")
    if isinstance(sigma, jax.core.Tracer):
        return sigma
    sig = np.broadcast_to(np.asarray(sigma, np.float64), (n,))
    if not np.all(np.isfinite(sig)) or np.any(sig < 0):
        raise ValueError("sigma must be finite and >= 0 (Gaussian widths in Å; 0: point charge)")
    return sig


def thole_range(thole, max_polarizability, accuracy=1e-6):
    """Distance (Å) beyond which Thole's damping changes the dipole field tensor by
    less than ``1e-3 accuracy`` relative: ``(1 + x) exp(-x) = 1e-3 accuracy`` with
    ``x = a r^3 / max_polarizability``."""
    eps = 1e-3 * accuracy
    x = -np.log(eps)
    for _ in range(50):  # fixed point of x = log((1 + x) / eps)
        x = np.log((1.0 + x) / eps)
    return float((x * max_polarizability / thole) ** (1.0 / 3.0))


def prepare(
    positions,
    cell=None,
    *,
    polarizability=None,
    thole=THOLE,
    damp_field=True,
    sigma=None,
    pbc=None,
    accuracy=1e-6,
    kernel="ewald",
):
    """Host preparation of an induced-dipole solver for structures like this one.

    Args:
      positions: (N, 3) Å (its shape fixes N; in a cell, it sizes the pair lists).
      cell: (3, 3) lattice rows in Å, or None for a molecule.
      polarizability: (N,) or scalar Å^3; needed with a cell and damping: its
        maximum sets the range of the Thole correction (a larger polarizability
        passed later to ``.solve`` is damped only within that range).
      thole: Thole damping parameter a (dimensionless; 0 or None: undamped).
      damp_field: Thole-damp the charges' field at the dipoles (AMOEBA does).
      sigma: Gaussian widths of the charges (scalar or (N,), Å; 0: point charge),
        or None for point charges (molecules only).
      pbc: periodic axes (default all with a cell; ``(True, True, False)`` a slab).
      accuracy: relative accuracy of the periodic field (Ewald / PME tuning) and
        of the truncated Thole correction.
      kernel: "ewald" or "pme", the periodic dipolar field.

    Returns:
      An :class:`InductionSolver` whose ``.solve`` is pure.

    Raises:
      ValueError: bad input (the message names the argument).
      NotImplementedError: Gaussian charges (``sigma``) in a periodic cell.
    """
    n = _check_positions(positions)
    thole = _check_thole(thole)
    sig = _check_sigma(sigma, n)
    if cell is None:
        if pbc is not None and any(pbc):
            raise ValueError(f"pbc={pbc} needs a cell")
        return InductionSolver(n, thole, bool(damp_field), sig)
    if sig is not None:
        raise NotImplementedError(
            "Gaussian charges (sigma) with induced dipoles in a periodic cell are not "
            "implemented: pass sigma=None (point charges) or cell=None"
        )
    if kernel not in ("ewald", "pme"):
        raise ValueError(f"kernel must be 'ewald' or 'pme', got {kernel!r}")
    if any(isinstance(x, jax.core.Tracer) for x in (positions, cell, polarizability)):
        raise ValueError(
            "a periodic solve tunes Ewald / PME on the host: call jaxlr.induction.prepare("
            "...) outside jit and use its pure .solve(...) inside"
        )
    from jaxlr._api import prepare_energy

    pos = np.asarray(positions, np.float64)
    cell_np = np.asarray(cell, np.float64)
    example_q = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    example_mu = 0.3 * np.random.default_rng(0).normal(size=(n, 3))
    prepared = prepare_energy(
        pos,
        example_q,
        cell_np,
        pbc=pbc,
        method=kernel,
        accuracy=accuracy,
        prefactor=1.0,
        dipoles=example_mu,
    )
    neighbors, cutoff = None, None
    if thole is not None:
        if polarizability is None:
            raise ValueError(
                "with a cell and Thole damping, pass polarizability (Å^3) to prepare: "
                "its maximum sets the range of the damping correction"
            )
        alpha = np.asarray(polarizability, np.float64)
        if not np.all(np.isfinite(alpha)) or np.any(alpha < 0):
            raise ValueError("polarizability must be finite and >= 0 (Å^3)")
        if np.max(alpha) > 0:
            cutoff = thole_range(thole, float(np.max(alpha)), accuracy)
            neighbors = neighbor_list(pos, cutoff, cell_np, pbc)
    return InductionSolver(n, thole, bool(damp_field), None, prepared, neighbors, cutoff)


def _check_positions(positions):
    shape = jnp.shape(positions)
    if len(shape) != 2 or shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {shape}")
    if not isinstance(positions, jax.core.Tracer) and not np.all(
        np.isfinite(np.asarray(positions))
    ):
        raise ValueError("positions contain non-finite values")
    return shape[0]


def _check_inputs(positions, polarizability, charges, field):
    n = _check_positions(positions)
    if jnp.shape(polarizability) not in ((), (n,)):
        raise ValueError(
            f"polarizability must be a scalar or shape ({n},) (Å^3), got "
            f"{jnp.shape(polarizability)}"
        )
    if not isinstance(polarizability, jax.core.Tracer):
        alpha = np.asarray(polarizability, np.float64)
        if not np.all(np.isfinite(alpha)) or np.any(alpha < 0):
            raise ValueError(
                "polarizability must be finite and >= 0 (Å^3; 0: a non-polarizable atom)"
            )
    if charges is not None and jnp.shape(charges) != (n,):
        raise ValueError(f"charges must have shape ({n},) (e), got {jnp.shape(charges)}")
    if field is not None and jnp.shape(field) not in ((3,), (n, 3)):
        raise ValueError(
            f"field must be a uniform (3,) or per-atom ({n}, 3) field in V/Å, got "
            f"{jnp.shape(field)}"
        )
    return n


def _auto(method, n, periodic):
    if method not in ("auto", "dense", "matrix_free"):
        raise ValueError(f"method must be 'auto', 'dense' or 'matrix_free', got {method!r}")
    if method == "auto":
        limit = DENSE_MAX_PERIODIC if periodic else DENSE_MAX_ATOMS
        return "dense" if n <= limit else "matrix_free"
    return method


def _raise_if_bad(result, solver, positions, polarizability, cell, method):
    """Host: explain a failed solve (catastrophe with its eigenvalue, or no convergence)."""
    if bool(np.asarray(result.ok)):
        return
    n = solver.n_atoms
    low = float(np.asarray(result.curvature))
    finite = bool(np.all(np.isfinite(np.asarray(result.dipoles))))
    detail = ""
    catastrophe = method == "dense" or low <= 0 or not finite
    if n <= _DIAGNOSE_MAX_ATOMS[solver.periodic]:
        a = solver.matrix(
            jnp.asarray(positions),
            jnp.asarray(polarizability, jnp.asarray(positions).dtype),
            None if cell is None else jnp.asarray(cell),
        )
        a = np.asarray(a, np.float64)
        w, v = np.linalg.eigh(0.5 * (a + a.T))
        if w[0] <= 0:
            catastrophe = True
            weight = np.sum(v[:, 0].reshape(n, 3) ** 2, axis=1)
            atoms = np.argsort(weight)[::-1]
            atoms = sorted(int(i) for i in atoms[: max(2, int(np.sum(weight > 0.1)))])
            detail = (
                f": smallest eigenvalue of A = 1/alpha - T is {w[0]:.4g} 1/Å^3 (its mode "
                f"sits on atoms {atoms})"
            )
    if catastrophe:
        raise ValueError(
            "polarization catastrophe: the induced-dipole matrix is not positive "
            f"definite{detail}. Atoms are too close for their polarizabilities: increase "
            "the Thole damping `thole`, reduce `polarizability`, or move the atoms apart"
        )
    raise ValueError(
        "the matrix-free induced-dipole solve did not converge: relative residual "
        f"{float(result.residual):.3g} after {int(result.iterations)} iterations "
        "(raise max_iter or tol)"
    )


@functools.lru_cache(maxsize=32)
def _cached_runner(n, thole, damp_field, sigma):
    sig = None if sigma is None else np.asarray(sigma)
    solver = InductionSolver(n, thole, damp_field, sig)
    return jax.jit(solver.solve, static_argnames=("method", "tol", "max_iter"))


def _runner(solver):
    """A jitted ``solver.solve``, shared by molecule solvers with the same settings
    (repeated calls of :func:`solve` with new positions do not recompile)."""
    sig = solver.sigma
    if isinstance(sig, jax.core.Tracer) or solver.periodic:
        return jax.jit(solver.solve, static_argnames=("method", "tol", "max_iter"))
    key = None if sig is None else tuple(np.asarray(sig, np.float64).tolist())
    return _cached_runner(solver.n_atoms, solver.thole, solver.damp_field, key)


def _solve(
    positions,
    polarizability,
    cell,
    charges,
    field,
    thole,
    damp_field,
    sigma,
    pbc,
    method,
    accuracy,
    tol,
    max_iter,
):
    n = _check_inputs(positions, polarizability, charges, field)
    method = _auto(method, n, cell is not None)
    kernel = "pme" if (method == "matrix_free" and n >= PME_MIN_ATOMS) else "ewald"
    solver = prepare(
        positions,
        cell,
        polarizability=polarizability,
        thole=thole,
        damp_field=damp_field,
        sigma=sigma,
        pbc=pbc,
        accuracy=accuracy,
        kernel=kernel,
    )
    pos = jnp.asarray(positions)
    dtype = pos.dtype
    if tol is None:
        tol = 1e-8 if jnp.finfo(dtype).bits == 64 else 1e-5
    result = _runner(solver)(
        pos,
        jnp.asarray(polarizability, dtype),
        None if charges is None else jnp.asarray(charges, dtype),
        None if field is None else jnp.asarray(field, dtype),
        None if cell is None else jnp.asarray(cell, dtype),
        method=method,
        tol=tol,
        max_iter=max_iter,
    )
    if not isinstance(result.ok, jax.core.Tracer):
        _raise_if_bad(result, solver, pos, polarizability, cell, method)
    return result


def solve(
    positions,
    polarizability,
    cell=None,
    *,
    charges=None,
    field=None,
    thole=THOLE,
    damp_field=True,
    sigma=None,
    pbc=None,
    method="auto",
    accuracy=1e-6,
    tol=None,
    max_iter=500,
):
    """Induced dipoles (N, 3) in e·Å: ``(1/alpha - T) mu = E0 / COULOMB``.

    Args:
      positions: (N, 3) Å.
      polarizability: (N,) or scalar isotropic polarizabilities in Å^3 (the
        polarizability volume; 0: a non-polarizable atom).
      cell: (3, 3) lattice rows in Å, or None for a molecule. In a cell the
        dipolar field is the Ewald (PME from ``PME_MIN_ATOMS`` atoms on the
        matrix-free path) lattice sum with tin-foil boundary, each atom's own
        images included, plus the Thole correction over the pairs within
        :func:`thole_range`.
      charges: (N,) permanent charges in e whose field polarizes the atoms, or None.
      field: external field in V/Å, uniform (3,) or per atom (N, 3), or None.
      thole: Thole damping parameter a (default AMOEBA's 0.39; 0 or None undamped).
      damp_field: Thole-damp the charges' field too (lambda3), as AMOEBA does.
      sigma: Gaussian widths of the charges (Å, scalar or (N,); 0: point), or None
        (molecules only); the dipoles stay points.
      pbc: periodic axes (default all with a cell; ``(True, True, False)`` a slab).
      method: "auto" (dense up to ``DENSE_MAX_ATOMS`` atoms in a molecule,
        ``DENSE_MAX_PERIODIC`` in a cell), "dense" (Cholesky of the 3N x 3N
        matrix) or "matrix_free" (preconditioned CG on the dipole-field mat-vec).
      accuracy: relative accuracy of the periodic field (Ewald / PME tuning).
      tol, max_iter: relative residual and iteration limit of the matrix-free path
        (default tol: 1e-8 in float64, 1e-5 in float32).

    Returns:
      (N, 3) induced dipoles in e·Å, dtype of ``positions``.

    Raises:
      ValueError: polarization catastrophe (the matrix is not positive definite; the
        message gives its smallest eigenvalue and the atoms of that mode), a
        matrix-free solve that did not converge (both checked when the inputs are
        concrete; inside jit use :func:`prepare` and the ``ok`` flag of its
        result), or bad input (the message names the argument).
      NotImplementedError: Gaussian charges (sigma) in a periodic cell.

    Examples:
      >>> import numpy as np, jaxlr
      >>> mu = jaxlr.induction.solve(np.zeros((1, 3)), 1.5, field=np.array([0.0, 0.0, 0.1]))
      >>> round(float(mu[0, 2] * jaxlr.units.COULOMB), 5)  # alpha E
      0.15
    """
    return _solve(
        positions,
        polarizability,
        cell,
        charges,
        field,
        thole,
        damp_field,
        sigma,
        pbc,
        method,
        accuracy,
        tol,
        max_iter,
    ).dipoles


def energy(
    positions,
    polarizability,
    cell=None,
    *,
    charges=None,
    field=None,
    thole=THOLE,
    damp_field=True,
    sigma=None,
    pbc=None,
    method="auto",
    accuracy=1e-6,
    tol=None,
    max_iter=500,
):
    """Induction energy (eV) at the induced dipoles: ``-1/2 mu.E0`` (arguments as
    :func:`solve`), evaluated as ``k/2 mu.A mu - mu.E0`` so that its gradient does
    not feel the solver's error to first order. Its gradient with respect to
    positions (minus the induction forces) equals the partial derivative at fixed
    dipoles; gradients with respect to polarizability, charges, sigma and field are
    exact (implicit differentiation).

    Examples:
      >>> import numpy as np, jaxlr
      >>> u = jaxlr.induction.energy(np.zeros((1, 3)), 2.0, field=np.array([0.1, 0, 0]))
      >>> round(float(u * jaxlr.units.COULOMB), 5)  # -1/2 alpha E^2
      -0.01
    """
    return _solve(
        positions,
        polarizability,
        cell,
        charges,
        field,
        thole,
        damp_field,
        sigma,
        pbc,
        method,
        accuracy,
        tol,
        max_iter,
    ).energy
