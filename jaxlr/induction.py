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
    solve_induced_dense,
    solve_induced_matrix_free,
)
from jaxlr.units import COULOMB

__all__ = [
    "solve",
    "energy",
    "prepare",
    "InductionResult",
    "InductionSolver",
    "THOLE",
]

#: AMOEBA's Thole damping parameter (Ren & Ponder 2003).
THOLE = 0.39

#: method="auto": the dense path (a 3N x 3N Cholesky) up to this many atoms.
DENSE_MAX_ATOMS = 600

#: the host diagnosis of a failed solve (smallest eigenvalue) up to this many atoms.
_DIAGNOSE_MAX_ATOMS = 2000


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

    Attributes:
      n_atoms: number of atoms.
      thole: Thole parameter a (None: no damping).
      damp_field: whether the charges' field is Thole-damped.
      sigma: (N,) Gaussian widths of the charges (Å; 0 point charges) or None.
    """

    def __init__(self, n_atoms, thole, damp_field, sigma):
        self.n_atoms = n_atoms
        self.thole = thole
        self.damp_field = damp_field
        self.sigma = sigma

    @property
    def periodic(self):
        return False

    def permanent_field(self, positions, polarizability, charges=None, field=None, cell=None):
        """(N, 3) permanent field E0 in V/Å: the charges' field (damped unless
        ``damp_field=False``) plus the external ``field`` ((3,) or (N, 3))."""
        dtype = positions.dtype
        e0 = jnp.zeros((self.n_atoms, 3), dtype)
        if charges is not None:
            damp = self.thole if self.damp_field else None
            sig = None if self.sigma is None else jnp.asarray(self.sigma, dtype)
            e0 = COULOMB * charge_field(positions, charges, polarizability, damp, sig)
        if field is not None:
            e0 = e0 + jnp.broadcast_to(jnp.asarray(field, dtype), (self.n_atoms, 3))
        return e0

    def matrix(self, positions, polarizability, cell=None):
        """(3N, 3N) ``A = diag(1/alpha) - T`` in 1/Å^3 (index ``3 i + axis``)."""
        return induction_matrix(positions, polarizability, self.thole)

    def operator(self, positions, polarizability, cell=None):
        """``(matvec, diagonal, overflow)``: ``matvec(v) = A v`` for (N, 3) v, the
        (N,) diagonal ``1/alpha`` and the neighbour overflow flag."""
        alpha = jnp.broadcast_to(jnp.asarray(polarizability, positions.dtype), (self.n_atoms,))
        diag = _inverse_alpha(alpha)

        def matvec(v):
            return diag[:, None] * v - dipole_field(positions, v, alpha, self.thole)

        return matvec, diag, jnp.asarray(False)

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
        alpha = jnp.broadcast_to(jnp.asarray(polarizability, dtype), (self.n_atoms,))
        e0 = self.permanent_field(positions, alpha, charges, field, cell)
        rhs = jnp.where((alpha > 0)[:, None], e0 / COULOMB, 0.0)
        if method == "dense":
            a = self.matrix(positions, alpha, cell)
            mu, ok = solve_induced_dense(a, rhs)
            applied = (a @ mu.reshape(-1)).reshape(-1, 3)
            its, res = jnp.asarray(0), jnp.asarray(0.0, dtype)
            low = jnp.asarray(jnp.inf, dtype)
            overflow = jnp.asarray(False)
        elif method == "matrix_free":
            matvec, diag, overflow = self.operator(positions, alpha, cell)
            mu, ok, its, res, low = solve_induced_matrix_free(
                matvec, diag, rhs, tol=tol, max_iter=max_iter, x0=guess
            )
            applied = matvec(mu)
        else:
            raise ValueError(f"method must be 'dense' or 'matrix_free', got {method!r}")
        u = 0.5 * COULOMB * jnp.sum(mu * applied) - jnp.sum(mu * e0)
        return InductionResult(mu, u, e0, ok & ~overflow, its, res, low)

    def energy(self, positions, polarizability, dipoles, charges=None, field=None, cell=None):
        """Induction energy ``k/2 mu.A mu - mu.E0`` (eV) of given dipoles (e·Å):
        minimal (and ``-1/2 mu.E0``) at the solution. With the dipoles held fixed
        its gradient is the Hellmann-Feynman force."""
        dtype = positions.dtype
        alpha = jnp.broadcast_to(jnp.asarray(polarizability, dtype), (self.n_atoms,))
        e0 = self.permanent_field(positions, alpha, charges, field, cell)
        matvec, _, _ = self.operator(positions, alpha, cell)
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


def prepare(positions, cell=None, *, thole=THOLE, damp_field=True, sigma=None, pbc=None):
    """Host preparation of an induced-dipole solver for structures like this one.

    Args:
      positions: (N, 3) Å (its shape fixes N).
      cell: (3, 3) lattice rows in Å, or None for a molecule.
      thole: Thole damping parameter a (dimensionless; 0 or None: undamped).
      damp_field: Thole-damp the charges' field at the dipoles (AMOEBA does).
      sigma: Gaussian widths of the charges (scalar or (N,), Å; 0: point charge),
        or None for point charges.
      pbc: periodic axes.

    Returns:
      An :class:`InductionSolver` whose ``.solve`` is pure.

    Raises:
      ValueError: bad input (the message names the argument).
      NotImplementedError: a periodic cell (not yet supported).
    """
    n = _check_positions(positions)
    thole = _check_thole(thole)
    sig = _check_sigma(sigma, n)
    if cell is not None or (pbc is not None and any(pbc)):
        raise NotImplementedError(
            "induced dipoles in a periodic cell are not implemented yet: pass cell=None "
            "(a molecule)"
        )
    return InductionSolver(n, thole, bool(damp_field), sig)


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


def _auto(method, n):
    if method not in ("auto", "dense", "matrix_free"):
        raise ValueError(f"method must be 'auto', 'dense' or 'matrix_free', got {method!r}")
    if method == "auto":
        return "dense" if n <= DENSE_MAX_ATOMS else "matrix_free"
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
    if n <= _DIAGNOSE_MAX_ATOMS:
        a = np.asarray(solver.matrix(jnp.asarray(positions), jnp.asarray(polarizability), cell))
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
    if isinstance(sig, jax.core.Tracer):
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
    tol,
    max_iter,
):
    n = _check_inputs(positions, polarizability, charges, field)
    method = _auto(method, n)
    solver = prepare(positions, cell, thole=thole, damp_field=damp_field, sigma=sigma, pbc=pbc)
    pos = jnp.asarray(positions)
    dtype = pos.dtype
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
    tol=1e-8,
    max_iter=500,
):
    """Induced dipoles (N, 3) in e·Å: ``(1/alpha - T) mu = E0 / COULOMB``.

    Args:
      positions: (N, 3) Å.
      polarizability: (N,) or scalar isotropic polarizabilities in Å^3 (the
        polarizability volume; 0: a non-polarizable atom).
      cell: (3, 3) lattice rows in Å, or None for a molecule (periodic cells are
        not implemented yet).
      charges: (N,) permanent charges in e whose field polarizes the atoms, or None.
      field: external field in V/Å, uniform (3,) or per atom (N, 3), or None.
      thole: Thole damping parameter a (default AMOEBA's 0.39; 0 or None undamped).
      damp_field: Thole-damp the charges' field too (lambda3), as AMOEBA does.
      sigma: Gaussian widths of the charges (Å, scalar or (N,); 0: point), or None.
      pbc: periodic axes (only None / all False for now).
      method: "auto" (dense up to ``DENSE_MAX_ATOMS`` atoms), "dense" (Cholesky of
        the 3N x 3N matrix) or "matrix_free" (preconditioned CG on the direct
        dipole-field sum).
      tol, max_iter: relative residual and iteration limit of the matrix-free path.

    Returns:
      (N, 3) induced dipoles in e·Å, dtype of ``positions``.

    Raises:
      ValueError: polarization catastrophe (the matrix is not positive definite; the
        message gives its smallest eigenvalue and the atoms of that mode), a
        matrix-free solve that did not converge (both checked when the inputs are
        concrete; inside jit use :func:`prepare` and the ``ok`` flag of its
        result), or bad input (the message names the argument).
      NotImplementedError: a periodic cell.

    Examples:
      >>> import numpy as np, jaxlr
      >>> mu = jaxlr.induction.solve(np.zeros((1, 3)), 1.5, field=np.array([0.0, 0.0, 0.1]))
      >>> round(float(mu[0, 2] * jaxlr.units.COULOMB), 12)  # alpha E
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
    tol=1e-8,
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
      >>> round(float(u * jaxlr.units.COULOMB), 12)  # -1/2 alpha E^2
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
        tol,
        max_iter,
    ).energy
