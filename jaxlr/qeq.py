"""Charge equilibration: ``solve`` and ``energy`` (see :mod:`jaxlr.kernels.qeq`).

Work in progress on the QEq issue: the dense path (molecules and periodic cells),
fragments and implicit differentiation are here; the matrix-free path and
constant-potential electrodes are not yet.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr.kernels.ewald import ewald_potential
from jaxlr.kernels.qeq import coulomb_matrix, fragment_matrix, qeq_energy, solve_dense
from jaxlr.units import COULOMB

__all__ = ["solve", "energy", "coulomb_matrix", "prepare"]


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
        pairs, _ = self.neighbors.build(positions, cell)
        n = self.n_atoms
        sig = jnp.broadcast_to(jnp.asarray(sigma, positions.dtype), (n,))

        def column(e):
            return ewald_potential(
                positions, e, cell, pairs, config=self.config, sigma=sig, prefactor=1.0
            )

        pad = -n % self.block
        basis = jnp.eye(n + pad, n, dtype=positions.dtype).reshape(-1, self.block, n)
        cols = jax.lax.map(jax.vmap(column), basis).reshape(-1, n)[:n]
        return 0.5 * (cols + cols.T)

    def solve(self, positions, electronegativity, hardness, sigma, cell=None, totals=None):
        """``(charges, mu, ok)``; see :func:`jaxlr.kernels.qeq.solve_dense`."""
        a = self.matrix(positions, sigma, cell)
        h = COULOMB * a + jnp.diag(jnp.broadcast_to(hardness, (self.n_atoms,)))
        return solve_dense(h, electronegativity, self.constraints, totals)


def prepare(
    positions,
    sigma,
    cell=None,
    *,
    fragments=None,
    accuracy=1e-8,
):
    """Host preparation of a QEq solver (tuning and pair capacities for a cell)."""
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
        method="ewald",
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


def _raise_if_bad(ok):
    if not bool(np.asarray(ok)):
        raise ValueError(
            "the QEq matrix diag(hardness) + COULOMB * A is not positive definite "
            "(hardness too small or negative, or atoms too close for their widths)"
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
):
    """Equilibrated charges (e) minimising the QEq energy under the charge constraints.

    Args:
      positions: (N, 3) Å. electronegativity: (N,) eV/e. hardness: (N,) eV/e^2.
      sigma: Gaussian widths (scalar or (N,)) Å. cell: (3, 3) rows, or None.
      total_charge: the constrained sum of charges (without fragments).
      fragments, fragment_charges: a fragment index per atom and one total each.
      method: "auto" or "dense" (the matrix-free path is not implemented yet).
      accuracy: Ewald accuracy of the periodic Coulomb matrix.

    Raises:
      ValueError: a matrix that is not positive definite (checked when the inputs
        are concrete), or bad fragment input.
    """
    if method not in ("auto", "dense"):
        raise ValueError(f"method must be 'auto' or 'dense', got {method!r}")
    solver = prepare(positions, sigma, cell, fragments=fragments, accuracy=accuracy)
    q, _, ok = solver.solve(
        jnp.asarray(positions),
        jnp.asarray(electronegativity),
        jnp.asarray(hardness),
        sigma,
        None if cell is None else jnp.asarray(cell),
        _totals(total_charge, fragment_charges, solver),
    )
    if not isinstance(ok, jax.core.Tracer):
        _raise_if_bad(ok)
    return q


def energy(positions, electronegativity, hardness, sigma, cell=None, **kwargs):
    """QEq energy (eV) at the equilibrated charges; arguments as :func:`solve`."""
    q = solve(positions, electronegativity, hardness, sigma, cell, **kwargs)
    solver = prepare(positions, sigma, cell, fragments=kwargs.get("fragments"))
    a = solver.matrix(jnp.asarray(positions), sigma, None if cell is None else jnp.asarray(cell))
    return qeq_energy(q, jnp.asarray(electronegativity), jnp.asarray(hardness), a)
