r"""Charge equilibration and constant-potential electrodes (see :mod:`jaxlr.kernels.qeq`).

**QEq** (:func:`solve`, :func:`energy`): charges minimise

    E(q) = sum_i (chi_i q_i + 1/2 J_i q_i^2) + COULOMB * 1/2 q^T A q

under ``sum q = total_charge`` (or one total per fragment), ``A`` the Coulomb matrix
of Gaussian charges of widths sigma (free space, 3D-periodic by Ewald / PME, or a
slab with two periodic axes).

**Electrodes** (:func:`constant_potential`): the charges of the electrode atoms (an
integer group per atom, -1 for the electrolyte) adjust so that every electrode atom
of group g sits at the potential ``Psi_g`` (V) while the electrolyte keeps its
charges (Siepmann & Sprik 1995; Reed, Lanning & Madden 2007): they minimise the
Legendre-transformed energy

    Omega(q_w) = U(q_w, q_e) - sum_{i in electrodes} Psi_{g(i)} q_i,

``U = COULOMB/2 q^T A q`` the electrostatic energy of all charges, optionally with
``sum q_w = 0`` (then the potentials are set up to one common shift, returned as
``shift``). ``Omega`` at the solution is the energy whose derivatives are the
forces and stress at constant potential: by implicit differentiation of the solve,
``dOmega/dR`` equals the electrostatic force on the charges at fixed charges
(Hellmann-Feynman). Electrode atoms carry Gaussian charges (width ``sigma > 0``),
electrolyte atoms Gaussian or point charges (``sigma = 0``).

Both solves have a dense path (the Coulomb block factorised once) and a
matrix-free one (projected preconditioned CG on the Ewald / PME potential); both
are implicitly differentiated (derivatives are one more solve, never a
derivative of the iterations). A periodic solve is tuned on the host: under jit,
use :func:`prepare` / :func:`prepare_constant_potential` outside and the pure
``.solve`` of the result inside.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr.kernels.coulomb import coulomb_potential
from jaxlr.kernels.ewald import ewald_matrix
from jaxlr.kernels.qeq import (
    coulomb_matrix,
    fragment_matrix,
    solve_dense,
    solve_matrix_free,
)
from jaxlr.kernels.slab import slab_cell, slab_correction_matrix
from jaxlr.units import COULOMB

__all__ = [
    "solve",
    "energy",
    "prepare",
    "constant_potential",
    "prepare_constant_potential",
    "coulomb_matrix",
    "CoulombOperator",
    "QEqResult",
    "QEqSolver",
    "ElectrodeResult",
    "ElectrodeSolver",
]

#: method="auto": the dense path up to this many atoms (QEq) or electrode atoms
#: in a molecule, the matrix-free one above.
DENSE_MAX_ATOMS = 2000

#: method="auto" in a periodic cell or slab: the dense path up to this many atoms.
#: Measured (benchmarks/qeq.py, 2 CPU cores, random ions, residual 1e-6): the
#: matrix-free solve takes 0.7 x the dense one's time at 250 atoms, 0.2 x at 1000,
#: 0.05 x at 4000; at the default tol 1e-8 the two meet near 250 atoms.
DENSE_MAX_PERIODIC = 250

#: the matrix-free path sums the periodic operator by PME from this many atoms.
PME_MIN_ATOMS = 1000

_SQRT_PI = 1.7724538509055159


class QEqResult(NamedTuple):
    """Charges (e), multipliers mu (eV/e, one per fragment), and solver status:
    ``ok`` (converged, positive definite, no neighbour overflow), CG iterations (0
    for the dense path) and the relative residual."""

    charges: jax.Array
    mu: jax.Array
    ok: jax.Array
    iterations: jax.Array
    residual: jax.Array


class ElectrodeResult(NamedTuple):
    """Constant-potential solution.

    Attributes:
      charges: (N,) all charges (e): the electrolyte's as given, the electrodes' solved.
      energy: Legendre-transformed energy ``U - sum Psi q_electrode`` (eV); its
        derivatives are the forces and stress at constant potential.
      shift: with ``neutral``, the common shift (V) the neutrality constraint adds to
        every electrode's potential (the electrodes sit at ``Psi_g + shift``); 0
        otherwise.
      ok, iterations, residual: solver status as :class:`QEqResult`.
    """

    charges: jax.Array
    energy: jax.Array
    shift: jax.Array
    ok: jax.Array
    iterations: jax.Array
    residual: jax.Array


class CoulombOperator:
    """Coulomb operator ``v -> A v`` (Gaussian units) of one set of atoms: the direct
    sum for a molecule, Ewald or PME (with the slab correction for a slab) for a
    periodic cell. Built by :func:`prepare`; pure (jit, grad, vmap)."""

    def __init__(self, n_atoms, prepared=None, block=64):
        self.n_atoms = n_atoms
        self.prepared = prepared
        self.block = block

    @property
    def periodic(self):
        return self.prepared is not None

    @property
    def config(self):
        return None if self.prepared is None else self.prepared.config

    def potential_fn(self, positions, sigma, cell):
        """``(phi, diag, overflow)``: ``phi(v) = A v`` (N,), an estimate of A's
        diagonal (the Gaussian self terms, for the preconditioner) and the neighbour
        overflow flag."""
        sig = jnp.broadcast_to(jnp.asarray(sigma, positions.dtype), (self.n_atoms,))
        point = sig <= 0
        diag = jnp.where(point, 1.0, 1.0 / (_SQRT_PI * jnp.where(point, 1.0, sig)))
        if not self.periodic:

            def phi(v):
                return coulomb_potential(positions, v, sigma=sig, prefactor=1.0)

            return phi, diag, jnp.asarray(False)
        if cell is None:
            raise ValueError("this solver was prepared for a periodic cell: pass cell")
        phi, overflow = self.prepared.potential_operator(positions, cell, sigma=sig)
        return phi, diag, overflow

    def matrix(self, positions, sigma, cell=None, rows=None):
        """Dense block ``A[rows][:, rows]`` (all atoms by default), Gaussian units."""
        n = self.n_atoms
        idx = np.arange(n) if rows is None else np.asarray(rows)
        sig = jnp.broadcast_to(jnp.asarray(sigma, positions.dtype), (n,))
        if not self.periodic:
            return coulomb_matrix(positions[idx], sig[idx]), jnp.asarray(False)
        if self.prepared.method == "ewald":
            return self._ewald_matrix(positions, sig, cell, idx)
        phi, _, overflow = self.potential_fn(positions, sig, cell)
        m = len(idx)
        pad = -m % self.block
        cols = np.concatenate([idx, np.full(pad, idx[0])]).reshape(-1, self.block)

        def block(c):
            basis = jnp.zeros((self.block, n), positions.dtype)
            basis = basis.at[jnp.arange(self.block), c].set(1.0)
            return jax.vmap(phi)(basis)[:, idx]

        a = jax.lax.map(block, jnp.asarray(cols)).reshape(-1, m)[:m]
        return 0.5 * (a + a.T), overflow

    def _ewald_matrix(self, positions, sig, cell, idx):
        """Directly assembled Ewald block (plus the slab correction's)."""
        fn = self.prepared
        pairs, overflow = fn.neighbors.build(positions, cell)
        periodic = cell if fn.slab_length is None else slab_cell(cell, fn.slab_length)
        a = ewald_matrix(positions, periodic, pairs, config=fn.config, sigma=sig, rows=idx)
        if fn.slab_length is not None:
            a = a + slab_correction_matrix(positions[idx], cell, fn.slab_length, sig[idx])
        return a, overflow


def _operator(positions, sigma, cell, pbc, accuracy, kernel, example):
    """Host: the Coulomb operator for these atoms (tuning for a periodic cell)."""
    n = jnp.shape(positions)[0]
    if cell is None:
        if pbc is not None and any(pbc):
            raise ValueError(f"pbc={pbc} needs a cell")
        return CoulombOperator(n)
    if kernel not in ("ewald", "pme"):
        raise ValueError(f"kernel must be 'ewald' or 'pme', got {kernel!r}")
    if any(isinstance(x, jax.core.Tracer) for x in (positions, cell, sigma)):
        raise ValueError(
            "a periodic solve tunes Ewald / PME on the host: call jaxlr.qeq.prepare(...) "
            "(or prepare_constant_potential) outside jit and use its pure .solve(...) inside"
        )
    from jaxlr._api import prepare_energy

    fn = prepare_energy(
        np.asarray(positions, np.float64),
        example,
        np.asarray(cell),
        pbc=pbc,
        method=kernel,
        accuracy=accuracy,
        prefactor=1.0,
        sigma=np.asarray(sigma, np.float64),
    )
    return CoulombOperator(n, fn)


class QEqSolver:
    """Pure QEq solver prepared on the host for one cell shape (see :func:`prepare`)."""

    def __init__(self, operator: CoulombOperator, constraints):
        self.operator = operator
        self.n_atoms = operator.n_atoms
        self.constraints = constraints

    @property
    def periodic(self):
        return self.operator.periodic

    @property
    def config(self):
        return self.operator.config

    def matrix(self, positions, sigma, cell=None):
        """(N, N) Coulomb matrix A (Gaussian units, 1/Å)."""
        return self.operator.matrix(positions, sigma, cell)[0]

    def solve(
        self,
        positions,
        electronegativity,
        hardness,
        sigma,
        cell=None,
        totals=None,
        *,
        method="dense",
        tol=1e-8,
        max_iter=500,
        guess=None,
    ) -> QEqResult:
        """Pure solve (jit, grad, vmap). ``totals``: one constrained sum per fragment
        (default: neutral). ``method`` "dense" (factorised matrix) or "matrix_free"
        (preconditioned CG on the potential mat-vec; ``tol`` is the relative
        residual, ``guess`` warm-starts it)."""
        dtype = positions.dtype
        hard = jnp.broadcast_to(jnp.asarray(hardness, dtype), (self.n_atoms,))
        if totals is None:
            totals = jnp.zeros(self.constraints.shape[0], dtype)
        if method == "dense":
            a, overflow = self.operator.matrix(positions, sigma, cell)
            h = COULOMB * a + jnp.diag(hard)
            q, mu, ok = solve_dense(h, electronegativity, self.constraints, totals)
            zero = jnp.asarray(0.0, dtype)
            return QEqResult(q, mu, ok & ~overflow, jnp.asarray(0), zero)
        if method != "matrix_free":
            raise ValueError(f"method must be 'dense' or 'matrix_free', got {method!r}")
        phi, diag, overflow = self.operator.potential_fn(positions, sigma, cell)

        def matvec(v):
            return hard * v + COULOMB * phi(v)

        q, lam, its, res = solve_matrix_free(
            matvec,
            hard + COULOMB * diag,
            electronegativity,
            self.constraints,
            totals,
            tol=tol,
            max_iter=max_iter,
            x0=guess,
        )
        ok = (res <= tol) & jnp.all(jnp.isfinite(q)) & ~overflow
        return QEqResult(q, -lam, ok, its, res)

    def energy(self, positions, electronegativity, hardness, sigma, cell, charges):
        """QEq energy (eV) of ``charges``, with the solver's Coulomb operator."""
        phi, _, _ = self.operator.potential_fn(positions, sigma, cell)
        q = charges
        chi, hard = jnp.asarray(electronegativity), jnp.asarray(hardness)
        return jnp.sum(chi * q + 0.5 * hard * q * q) + 0.5 * COULOMB * jnp.sum(q * phi(q))


def prepare(
    positions,
    sigma,
    cell=None,
    *,
    pbc=None,
    fragments=None,
    accuracy=1e-8,
    kernel="ewald",
):
    """Host preparation of a QEq solver for structures like this one.

    Tunes the periodic Coulomb operator (``kernel`` "ewald" or "pme", to
    ``accuracy``) and sizes its pair capacities; ``pbc=(True, True, False)`` is a
    slab. Returns a :class:`QEqSolver` whose ``.solve`` is pure."""
    n = jnp.shape(positions)[0]
    if fragments is None:
        constraints = np.ones((1, n))
    else:
        frag = np.asarray(fragments)
        if frag.shape != (n,) or not np.issubdtype(frag.dtype, np.integer) or frag.min() < 0:
            raise ValueError(
                f"fragments must be (N,) = ({n},) non-negative integers, got "
                f"shape {frag.shape} dtype {frag.dtype}"
            )
        constraints = fragment_matrix(frag, int(frag.max()) + 1)
    example = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    return QEqSolver(_operator(positions, sigma, cell, pbc, accuracy, kernel, example), constraints)


def _totals(total_charge, fragment_charges, solver):
    if fragment_charges is not None:
        t = jnp.asarray(fragment_charges)
        if t.shape != (solver.constraints.shape[0],):
            raise ValueError(
                f"fragment_charges must have one entry per fragment "
                f"({solver.constraints.shape[0]}), got shape {t.shape}"
            )
        return t
    if solver.constraints.shape[0] != 1:
        raise ValueError("with fragments, pass fragment_charges (one total per fragment)")
    return jnp.asarray([total_charge])


def _raise_if_bad(result, method, what="QEq"):
    if bool(np.asarray(result.ok)):
        return
    if not bool(np.all(np.isfinite(np.asarray(result.charges)))) or method == "dense":
        raise ValueError(
            f"the {what} matrix is not positive definite (for QEq: hardness too small "
            "or negative, or atoms too close for their widths), or the neighbour "
            "capacity overflowed"
        )
    raise ValueError(
        f"the matrix-free {what} solve did not converge: relative residual "
        f"{float(result.residual):.3g} after {int(result.iterations)} iterations "
        "(raise max_iter or tol; a matrix that is not positive definite also fails here)"
    )


def _auto(method, n, periodic):
    if method not in ("auto", "dense", "matrix_free"):
        raise ValueError(f"method must be 'auto', 'dense' or 'matrix_free', got {method!r}")
    if method == "auto":
        limit = DENSE_MAX_PERIODIC if periodic else DENSE_MAX_ATOMS
        return "dense" if n <= limit else "matrix_free"
    return method


def _kernel(method, n_atoms):
    return "pme" if (method == "matrix_free" and n_atoms >= PME_MIN_ATOMS) else "ewald"


def solve(
    positions,
    electronegativity,
    hardness,
    sigma,
    cell=None,
    *,
    pbc=None,
    total_charge=0.0,
    fragments=None,
    fragment_charges=None,
    method="auto",
    accuracy=1e-8,
    tol=1e-8,
    max_iter=500,
):
    """Equilibrated charges (e) minimising the QEq energy under the charge constraints.

    Args:
      positions: (N, 3) Å. electronegativity: (N,) eV/e. hardness: (N,) eV/e^2.
      sigma: Gaussian widths (scalar or (N,)) Å. cell: (3, 3) rows, or None.
      pbc: periodic axes (default all with a cell); ``(True, True, False)`` a slab.
      total_charge: the constrained sum of charges (without fragments).
      fragments, fragment_charges: a fragment index per atom and one total each.
      method: "auto" (dense up to ``DENSE_MAX_ATOMS`` atoms in a molecule,
        ``DENSE_MAX_PERIODIC`` in a cell), "dense" or "matrix_free" (CG on the
        Ewald / PME potential).
      accuracy: Ewald / PME accuracy of the periodic Coulomb operator.
      tol, max_iter: relative residual and iteration limit of the matrix-free path.

    Raises:
      ValueError: a matrix that is not positive definite, a matrix-free solve that
        did not converge (both checked when the inputs are concrete; inside jit use
        :func:`prepare` and the ``ok`` flag of its result), or bad input (the
        message names the argument).

    Examples:
      >>> import numpy as np, jaxlr
      >>> pos = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.1]])  # a CO-like dimer
      >>> q = jaxlr.qeq.solve(pos, np.array([5.0, 7.0]), np.array([10.0, 12.0]), 0.8)
      >>> bool(q[0] > 0 > q[1]), round(float(q.sum()), 12)
      (True, 0.0)
    """
    _, result = _solve(
        positions,
        electronegativity,
        hardness,
        sigma,
        cell,
        pbc,
        total_charge,
        fragments,
        fragment_charges,
        method,
        accuracy,
        tol,
        max_iter,
    )
    return result.charges


def _check_inputs(positions, electronegativity, hardness, sigma):
    n = jnp.shape(positions)[0]
    if jnp.shape(positions) != (n, 3):
        raise ValueError(f"positions must have shape (N, 3), got {jnp.shape(positions)}")
    for name, value, scalar_ok in (
        ("electronegativity", electronegativity, False),
        ("hardness", hardness, True),
        ("sigma", sigma, True),
    ):
        shape = jnp.shape(value)
        if shape != (n,) and not (scalar_ok and shape == ()):
            allowed = "a scalar or " if scalar_ok else ""
            raise ValueError(f"{name} must be {allowed}shape ({n},), got {shape}")
    if not isinstance(sigma, jax.core.Tracer) and not np.all(np.asarray(sigma) > 0):
        raise ValueError("sigma must be positive (Gaussian widths in Å)")


def _solve(
    positions,
    electronegativity,
    hardness,
    sigma,
    cell,
    pbc,
    total_charge,
    fragments,
    fragment_charges,
    method,
    accuracy,
    tol,
    max_iter,
):
    _check_inputs(positions, electronegativity, hardness, sigma)
    n = jnp.shape(positions)[0]
    method = _auto(method, n, cell is not None)
    solver = prepare(
        positions,
        sigma,
        cell,
        pbc=pbc,
        fragments=fragments,
        accuracy=accuracy,
        kernel=_kernel(method, n),
    )
    pos = jnp.asarray(positions)
    run = jax.jit(solver.solve, static_argnames=("method", "tol", "max_iter"))
    result = run(
        pos,
        jnp.asarray(electronegativity, pos.dtype),
        jnp.asarray(hardness, pos.dtype),
        jnp.asarray(sigma, pos.dtype),
        None if cell is None else jnp.asarray(cell, pos.dtype),
        _totals(total_charge, fragment_charges, solver),
        method=method,
        tol=tol,
        max_iter=max_iter,
    )
    if not isinstance(result.ok, jax.core.Tracer):
        _raise_if_bad(result, method)
    return solver, result


def energy(
    positions,
    electronegativity,
    hardness,
    sigma,
    cell=None,
    *,
    pbc=None,
    total_charge=0.0,
    fragments=None,
    fragment_charges=None,
    method="auto",
    accuracy=1e-8,
    tol=1e-8,
    max_iter=500,
):
    """QEq energy (eV) at the equilibrated charges (arguments as :func:`solve`):
    ``sum (chi q + 1/2 J q^2) + COULOMB/2 q.A q``, with the same Coulomb operator
    as the solve (one more mat-vec, no second tuning). Its gradient with respect to
    positions is the partial derivative at fixed charges (the charges minimise it)."""
    solver, result = _solve(
        positions,
        electronegativity,
        hardness,
        sigma,
        cell,
        pbc,
        total_charge,
        fragments,
        fragment_charges,
        method,
        accuracy,
        tol,
        max_iter,
    )
    pos = jnp.asarray(positions)
    return solver.energy(
        pos,
        jnp.asarray(electronegativity, pos.dtype),
        jnp.asarray(hardness, pos.dtype),
        jnp.asarray(sigma, pos.dtype),
        None if cell is None else jnp.asarray(cell, pos.dtype),
        result.charges,
    )


# ------------------------------------------------------------------ electrodes


class ElectrodeSolver:
    """Pure constant-potential solver prepared on the host (see
    :func:`prepare_constant_potential`)."""

    def __init__(self, operator: CoulombOperator, electrode, n_groups, neutral, sigma):
        self.operator = operator
        self.n_atoms = operator.n_atoms
        self.electrode = np.asarray(electrode)
        self.index = np.flatnonzero(self.electrode >= 0)
        self.groups = self.electrode[self.index]
        self.n_groups = n_groups
        self.neutral = neutral
        self.sigma = sigma
        m = len(self.index)
        self.constraints = np.ones((1, m)) if neutral else np.zeros((0, m))

    @property
    def periodic(self):
        return self.operator.periodic

    @property
    def config(self):
        return self.operator.config

    def solve(
        self,
        positions,
        charges,
        potential,
        cell=None,
        *,
        sigma=None,
        method="dense",
        tol=1e-8,
        max_iter=500,
    ) -> ElectrodeResult:
        """Pure solve (jit, grad, vmap).

        Args:
          positions: (N, 3) Å. charges: (N,) e; the electrolyte's are kept, the
            electrodes' start the matrix-free iterations (a warm start: pass the
            previous step's charges).
          potential: (G,) electrode potentials in V (one per group).
          cell: (3, 3) for a periodic cell or slab.
          sigma: widths (scalar or (N,)) overriding the prepared ones (e.g. to
            differentiate with respect to them).
          method: "dense" or "matrix_free"; tol, max_iter: of the matrix-free path.
        """
        dtype = positions.dtype
        w = self.index
        sig = jnp.asarray(self.sigma if sigma is None else sigma, dtype)
        psi = jnp.broadcast_to(jnp.asarray(potential, dtype), (self.n_groups,))[self.groups]
        q_all = jnp.asarray(charges, dtype)
        fixed = q_all.at[w].set(0.0)
        phi, diag, overflow = self.operator.potential_fn(positions, sig, cell)
        # Omega = 1/2 q_w.H q_w + chi.q_w + const, H = COULOMB A_ww, chi = COULOMB
        # (A q_fixed)_w - Psi
        chi = COULOMB * phi(fixed)[w] - psi
        totals = jnp.zeros(self.constraints.shape[0], dtype)
        if method == "dense":
            a, overflow_a = self.operator.matrix(positions, sig, cell, rows=w)
            q_w, mu, ok = solve_dense(COULOMB * a, chi, self.constraints, totals)
            ok = ok & ~overflow_a
            its, res = jnp.asarray(0), jnp.asarray(0.0, dtype)
        elif method == "matrix_free":

            def matvec(v):
                return COULOMB * phi(jnp.zeros_like(q_all).at[w].set(v))[w]

            q_w, lam, its, res = solve_matrix_free(
                matvec,
                COULOMB * diag[w],
                chi,
                self.constraints,
                totals,
                tol=tol,
                max_iter=max_iter,
                x0=q_all[w],
            )
            mu = -lam
            ok = (res <= tol) & jnp.all(jnp.isfinite(q_w))
        else:
            raise ValueError(f"method must be 'dense' or 'matrix_free', got {method!r}")
        q = fixed.at[w].set(q_w)
        omega = 0.5 * COULOMB * jnp.sum(q * phi(q)) - jnp.sum(psi * q_w)
        # stationarity: COULOMB (A q)_w = Psi + mu, so mu is the common shift
        shift = mu[0] if self.neutral else jnp.asarray(0.0, dtype)
        return ElectrodeResult(q, omega, shift, ok & ~overflow, its, res)


def _check_electrodes(positions, charges, electrode, potential, sigma):
    n = jnp.shape(positions)[0]
    if jnp.shape(positions) != (n, 3):
        raise ValueError(f"positions must have shape (N, 3), got {jnp.shape(positions)}")
    if jnp.shape(charges) != (n,):
        raise ValueError(f"charges must have shape ({n},), got {jnp.shape(charges)}")
    group = np.asarray(electrode)
    if group.shape != (n,) or not np.issubdtype(group.dtype, np.integer):
        raise ValueError(
            f"electrode must be (N,) = ({n},) integers (a group per electrode atom, "
            f"-1 for the electrolyte), got shape {group.shape} dtype {group.dtype}"
        )
    if group.min() < -1 or group.max() < 0:
        raise ValueError("electrode: groups are 0, 1, ... (-1 for electrolyte); none found")
    n_groups = int(group.max()) + 1
    missing = sorted(set(range(n_groups)) - set(group[group >= 0].tolist()))
    if missing:
        raise ValueError(f"electrode: groups {missing} have no atoms (number groups 0..G-1)")
    if potential is not None and jnp.shape(potential) not in ((), (n_groups,)):
        raise ValueError(
            f"potential must be a scalar or one value per electrode group ({n_groups},), "
            f"got shape {jnp.shape(potential)}"
        )
    if jnp.shape(sigma) not in ((), (n,)):
        raise ValueError(f"sigma must be a scalar or shape ({n},), got {jnp.shape(sigma)}")
    if isinstance(sigma, jax.core.Tracer):
        raise ValueError(
            "sigma must be concrete here (pass traced widths to ElectrodeSolver.solve)"
        )
    sig = np.broadcast_to(np.asarray(sigma, np.float64), (n,))
    if jnp.shape(sigma) == ():
        sig = np.where(group >= 0, sig, 0.0)  # a scalar width: point-charge electrolyte
    if not np.all(sig[group >= 0] > 0) or not np.all(sig >= 0):
        raise ValueError(
            "sigma must be positive on electrode atoms (Gaussian widths, Å) and "
            "non-negative elsewhere (0: a point charge)"
        )
    return group, n_groups, sig


def prepare_constant_potential(
    positions,
    charges,
    electrode,
    sigma,
    cell=None,
    *,
    pbc=None,
    neutral=True,
    accuracy=1e-8,
    kernel="ewald",
):
    """Host preparation of a constant-potential solver (arguments as
    :func:`constant_potential`; ``kernel`` "ewald" or "pme" for a periodic cell).
    Returns an :class:`ElectrodeSolver` whose ``.solve`` is pure."""
    group, n_groups, sig = _check_electrodes(positions, charges, electrode, None, sigma)
    q = None
    if cell is not None:
        # tuning example: the electrolyte's charges, the electrodes' of the same size
        q = np.asarray(charges, np.float64).copy()
        scale = np.sqrt(np.mean(q[group < 0] ** 2)) if np.any(q[group < 0]) else 0.1
        m = int(np.sum(group >= 0))
        q[group >= 0] = scale * np.where(np.arange(m) % 2 == 0, 1.0, -1.0)
    operator = _operator(positions, sig, cell, pbc, accuracy, kernel, q)
    return ElectrodeSolver(operator, group, n_groups, neutral, sig)


def constant_potential(
    positions,
    charges,
    electrode,
    potential,
    sigma,
    cell=None,
    *,
    pbc=None,
    neutral=True,
    method="auto",
    accuracy=1e-8,
    tol=1e-8,
    max_iter=500,
) -> ElectrodeResult:
    """Electrode charges at fixed electrode potentials, and the energy at constant potential.

    Args:
      positions: (N, 3) Å.
      charges: (N,) e; the electrolyte's charges (the electrode entries start the
        matrix-free iterations).
      electrode: (N,) integers: the electrode group of each atom (0..G-1), -1 for
        the electrolyte.
      potential: (G,) (or scalar) potential of each group in V.
      sigma: Gaussian widths in Å: a scalar is the electrode atoms' width (the
        electrolyte then carries point charges); (N,) per atom, positive on
        electrode atoms, 0 marks a point charge.
      cell: (3, 3) lattice rows in Å, or None.
      pbc: periodic axes (default all with a cell); ``(True, True, False)`` is a
        slab (open along the normal to the first two cell rows; the slab
        correction of the PME issue).
      neutral: constrain the electrodes' total charge to 0 (the potentials are
        then set up to a common shift, returned).
      method: "auto" (dense up to ``DENSE_MAX_ATOMS`` electrode atoms in a
        molecule, ``DENSE_MAX_PERIODIC`` in a cell), "dense" or "matrix_free".
      accuracy, tol, max_iter: as :func:`solve`.

    Returns:
      :class:`ElectrodeResult`: all charges, the Legendre-transformed energy
      ``U - sum Psi q_w`` (eV), the potential shift, solver status.

    Raises:
      ValueError: bad input (naming the argument), a singular electrode block, or a
        matrix-free solve that did not converge.
    """
    group, _, _ = _check_electrodes(positions, charges, electrode, potential, sigma)
    m = int(np.sum(group >= 0))
    method = _auto(method, m, cell is not None)
    solver = prepare_constant_potential(
        positions,
        charges,
        electrode,
        sigma,
        cell,
        pbc=pbc,
        neutral=neutral,
        accuracy=accuracy,
        kernel=_kernel(method, len(group)),
    )
    pos = jnp.asarray(positions)
    run = jax.jit(solver.solve, static_argnames=("method", "tol", "max_iter"))
    result = run(
        pos,
        jnp.asarray(charges, pos.dtype),
        jnp.asarray(potential, pos.dtype),
        None if cell is None else jnp.asarray(cell, pos.dtype),
        method=method,
        tol=tol,
        max_iter=max_iter,
    )
    if not isinstance(result.ok, jax.core.Tracer):
        _raise_if_bad(result, method, "electrode")
    return result
