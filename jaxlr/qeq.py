"""Charge equilibration: ``solve`` and ``energy`` (see :mod:`jaxlr.kernels.qeq`).

Work in progress on the QEq issue: the dense and matrix-free paths (molecules and
periodic cells), fragments and implicit differentiation are here; constant-potential
electrodes, the benchmark and the documentation are not yet.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr.kernels.ewald import ewald_potential
from jaxlr.kernels.pme import PMEConfig, pme_potential
from jaxlr.kernels.qeq import (
    coulomb_matrix,
    fragment_matrix,
    solve_dense,
    solve_matrix_free,
)
from jaxlr.units import COULOMB

__all__ = ["solve", "energy", "coulomb_matrix", "prepare", "QEqResult", "QEqSolver"]

#: method="auto": the dense path up to this many atoms, the matrix-free one above.
DENSE_MAX_ATOMS = 2000


class QEqResult(NamedTuple):
    """Charges (e), multipliers mu (eV/e, one per fragment), and solver status."""

    charges: jax.Array
    mu: jax.Array
    ok: jax.Array
    iterations: jax.Array
    residual: jax.Array


class QEqSolver:
    """Pure QEq solver prepared on the host for one cell shape (see :func:`prepare`)."""

    def __init__(self, n_atoms, periodic, config, neighbors, constraints, block=64):
        self.n_atoms = n_atoms
        self.periodic = periodic
        self.config = config
        self.neighbors = neighbors
        self.constraints = constraints
        self.block = block

    def matrix(self, positions, sigma, cell=None):
        """(N, N) Coulomb matrix A (Gaussian units, 1/Å)."""
        if not self.periodic:
            return coulomb_matrix(positions, sigma)
        n = self.n_atoms
        column, _ = self._potential_fn(positions, sigma, cell)

        pad = -n % self.block
        basis = jnp.eye(n + pad, n, dtype=positions.dtype).reshape(-1, self.block, n)
        cols = jax.lax.map(jax.vmap(column), basis).reshape(-1, n)[:n]
        return 0.5 * (cols + cols.T)

    def _potential_fn(self, positions, sigma, cell):
        """v -> phi(v) (Gaussian units): dense A @ v, or the Ewald / PME potential."""
        if not self.periodic:
            a = coulomb_matrix(positions, sigma)
            return lambda v: a @ v, jnp.diag(a)
        pairs, _ = self.neighbors.build(positions, cell)
        sig = jnp.broadcast_to(jnp.asarray(sigma, positions.dtype), (self.n_atoms,))
        kernel = pme_potential if isinstance(self.config, PMEConfig) else ewald_potential

        def phi(v):
            return kernel(positions, v, cell, pairs, config=self.config, sigma=sig, prefactor=1.0)

        return phi, 1.0 / (1.7724538509055159 * sig)

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
        """Pure solve (jit, grad, vmap). ``method`` "dense" (factorised matrix) or
        "matrix_free" (preconditioned CG on the potential mat-vec; ``tol`` is the
        relative residual, ``guess`` warm-starts it)."""
        hard = jnp.broadcast_to(hardness, (self.n_atoms,))
        zero = jnp.asarray(0)
        if method == "dense":
            a = self.matrix(positions, sigma, cell)
            h = COULOMB * a + jnp.diag(hard)
            q, mu, ok = solve_dense(h, electronegativity, self.constraints, totals)
            return QEqResult(q, mu, ok, zero, jnp.asarray(0.0, q.dtype))
        if method != "matrix_free":
            raise ValueError(f"method must be 'dense' or 'matrix_free', got {method!r}")
        phi, diag = self._potential_fn(positions, sigma, cell)

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
        ok = (res <= tol) & jnp.all(jnp.isfinite(q))
        return QEqResult(q, -lam, ok, its, res)


def prepare(
    positions,
    sigma,
    cell=None,
    *,
    fragments=None,
    accuracy=1e-8,
    kernel="ewald",
):
    """Host preparation of a QEq solver (tuning and pair capacities for a cell);
    ``kernel`` "ewald" or "pme" for the periodic mat-vec of the matrix-free path."""
    from jaxlr._api import prepare_energy

    n = jnp.shape(positions)[0]
    if fragments is None:
        constraints = np.ones((1, n))
    else:
        frag = np.asarray(fragments)
        if frag.shape != (n,) or frag.min() < 0:
            raise ValueError(f"fragments must be (N,) non-negative integers, got {frag.shape}")
        constraints = fragment_matrix(frag, int(frag.max()) + 1)
    if cell is None:
        return QEqSolver(n, False, None, None, constraints)
    if any(isinstance(x, jax.core.Tracer) for x in (positions, cell, sigma)):
        raise ValueError(
            "a periodic QEq solve tunes Ewald on the host: call jaxlr.qeq.prepare(...) "
            "outside jit and use its pure .solve(...) inside"
        )
    pos = np.asarray(positions, np.float64)
    example = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    fn = prepare_energy(
        pos,
        example,
        np.asarray(cell),
        method=kernel,
        accuracy=accuracy,
        prefactor=1.0,
        sigma=np.asarray(sigma, np.float64),
    )
    return QEqSolver(n, True, fn.config, fn.neighbors, constraints)


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


def _raise_if_bad(result, method):
    if bool(np.asarray(result.ok)):
        return
    if method == "dense":
        raise ValueError(
            "the QEq matrix diag(hardness) + COULOMB * A is not positive definite "
            "(hardness too small or negative, or atoms too close for their widths)"
        )
    raise ValueError(
        f"the matrix-free QEq solve did not converge: relative residual "
        f"{float(result.residual):.3g} after {int(result.iterations)} iterations "
        "(raise max_iter or tol; a matrix that is not positive definite also fails here)"
    )


def solve(
    positions,
    electronegativity,
    hardness,
    sigma,
    cell=None,
    *,
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
      total_charge: the constrained sum of charges (without fragments).
      fragments, fragment_charges: a fragment index per atom and one total each.
      method: "auto" (dense up to ``DENSE_MAX_ATOMS`` atoms), "dense" or
        "matrix_free" (CG on the Ewald / PME potential).
      accuracy: Ewald / PME accuracy of the periodic Coulomb operator.
      tol, max_iter: relative residual and iteration limit of the matrix-free path.

    Raises:
      ValueError: a matrix that is not positive definite, a matrix-free solve that
        did not converge (both checked when the inputs are concrete; inside jit use
        :func:`prepare` and the ``ok`` flag of its result), or bad fragment input.
    """
    _, result = _solve(
        positions,
        electronegativity,
        hardness,
        sigma,
        cell,
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
    total_charge,
    fragments,
    fragment_charges,
    method,
    accuracy,
    tol,
    max_iter,
):
    if method not in ("auto", "dense", "matrix_free"):
        raise ValueError(f"method must be 'auto', 'dense' or 'matrix_free', got {method!r}")
    _check_inputs(positions, electronegativity, hardness, sigma)
    n = jnp.shape(positions)[0]
    if method == "auto":
        method = "dense" if n <= DENSE_MAX_ATOMS else "matrix_free"
    kernel = "pme" if (method == "matrix_free" and n >= 1000) else "ewald"
    solver = prepare(positions, sigma, cell, fragments=fragments, accuracy=accuracy, kernel=kernel)
    result = solver.solve(
        jnp.asarray(positions),
        jnp.asarray(electronegativity),
        jnp.asarray(hardness),
        sigma,
        None if cell is None else jnp.asarray(cell),
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
    total_charge=0.0,
    fragments=None,
    fragment_charges=None,
    method="auto",
    accuracy=1e-8,
    tol=1e-8,
    max_iter=500,
):
    """QEq energy (eV) at the equilibrated charges (arguments as :func:`solve`):
    ``sum (chi q + 1/2 J q^2) + COULOMB/2 q.phi(q)``, with the same Coulomb operator
    as the solve (one more mat-vec, no second tuning)."""
    solver, result = _solve(
        positions,
        electronegativity,
        hardness,
        sigma,
        cell,
        total_charge,
        fragments,
        fragment_charges,
        method,
        accuracy,
        tol,
        max_iter,
    )
    q = result.charges
    phi, _ = solver._potential_fn(
        jnp.asarray(positions), sigma, None if cell is None else jnp.asarray(cell)
    )
    chi, hard = jnp.asarray(electronegativity), jnp.asarray(hardness)
    return jnp.sum(chi * q + 0.5 * hard * q * q) + 0.5 * COULOMB * jnp.sum(q * phi(q))
