r"""Charge equilibration (QEq) as a differentiable linear solve: the dense path.

Energy (eV), the convention of the QEq issue:

    E(q) = sum_i (chi_i q_i + 1/2 J_i q_i^2) + COULOMB * 1/2 q^T A q,

``A`` the Coulomb matrix of Gaussian charges of widths sigma (Gaussian units, 1/Å):
``A_ij = erf(r_ij / sqrt(2 (s_i^2 + s_j^2))) / r_ij``, ``A_ii = 1 / (sqrt(pi) s_i)``
for a molecule, the Ewald matrix of the same charges (with the background) for a
periodic cell. Charges minimise E subject to ``B q = Q`` (one row per fragment):

    [H  B^T] [q     ]   [-chi]
    [B  0  ] [lambda] = [ Q  ],   H = diag(J) + COULOMB * A.

H must be positive definite; it is factorised once (Cholesky) and the constraints
are solved through the Schur complement ``B H^-1 B^T``. The solve is wrapped in
``jax.lax.custom_linear_solve``, so derivatives (with respect to positions, cell,
chi, J, sigma) are one more solve with the same factor (implicit differentiation),
never a derivative of the factorisation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr.units import COULOMB

__all__ = [
    "coulomb_matrix",
    "fragment_matrix",
    "solve_dense",
    "qeq_energy",
]

_SQRT_PI = 1.7724538509055159


def coulomb_matrix(positions, sigma):
    """(N, N) Coulomb matrix of Gaussian charges in free space (Gaussian units).

    ``A_ij = erf(r_ij / sqrt(2 (s_i^2 + s_j^2))) / r_ij`` and ``A_ii = 1/(sqrt(pi) s_i)``
    (so ``1/2 q^T A q`` includes the self energies). Coincident distinct atoms take
    the finite limit ``2 / sqrt(2 pi (s_i^2 + s_j^2))``; derivatives stay finite."""
    n = positions.shape[0]
    sig = jnp.broadcast_to(jnp.asarray(sigma, positions.dtype), (n,))
    d = positions[:, None, :] - positions[None, :, :]
    r2 = jnp.sum(d * d, axis=-1)
    s2 = sig[:, None] ** 2 + sig[None, :] ** 2
    width = jnp.sqrt(2.0 * s2)
    apart = r2 > 1e-12 * s2
    r = jnp.sqrt(jnp.where(apart, r2, 1.0))
    off = jnp.where(apart, jax.scipy.special.erf(r / width) / r, 2.0 / (_SQRT_PI * width))
    eye = jnp.eye(n, dtype=bool)
    return jnp.where(eye, 1.0 / (_SQRT_PI * sig)[:, None], off)


def fragment_matrix(fragments, n_fragments):
    """(F, N) one-hot constraint matrix from a fragment index per atom (host ints)."""
    frag = np.asarray(fragments)
    b = np.zeros((n_fragments, len(frag)))
    b[frag, np.arange(len(frag))] = 1.0
    return b


def solve_dense(hessian, electronegativity, constraints, totals):
    """Minimise ``chi.q + 1/2 q^T H q`` subject to ``constraints @ q = totals``.

    Args:
      hessian: (N, N) symmetric positive-definite H (eV/e^2).
      electronegativity: (N,) chi (eV/e).
      constraints: (F, N) constraint rows B (static or traced).
      totals: (F,) constrained sums Q.

    Returns:
      ``(q, mu, ok)``: charges (N,), the Lagrange multipliers (F,) (the
      electronegativity each fragment equalises to, eV/e) and ``ok``, False when H
      is not positive definite (then q is NaN).
    """
    n = hessian.shape[0]
    dtype = hessian.dtype
    b = jnp.asarray(constraints, dtype)
    f = b.shape[0]
    chol = jnp.linalg.cholesky(hessian)
    ok = jnp.all(jnp.isfinite(chol))
    chol_c = jax.lax.stop_gradient(chol)
    b_c = jax.lax.stop_gradient(b)

    def matvec(x):
        q, lam = x[:n], x[n:]
        return jnp.concatenate([hessian @ q + b.T @ lam, b @ q])

    def kkt_solve(_, rhs):
        r_q, r_c = rhs[:n], rhs[n:]
        hinv_bt = jax.scipy.linalg.cho_solve((chol_c, True), b_c.T)  # (N, F)
        hinv_r = jax.scipy.linalg.cho_solve((chol_c, True), r_q)
        schur = b_c @ hinv_bt  # (F, F)
        lam = jnp.linalg.solve(schur, b_c @ hinv_r - r_c)
        return jnp.concatenate([hinv_r - hinv_bt @ lam, lam])

    rhs = jnp.concatenate([-jnp.asarray(electronegativity, dtype), jnp.asarray(totals, dtype)])
    x = jax.lax.custom_linear_solve(matvec, rhs, kkt_solve, symmetric=True)
    q = jnp.where(ok, x[:n], jnp.nan)
    # chi + H q + B^T lambda = 0: each fragment equalises chi + dE_coul/dq to -lambda
    return q, -x[n : n + f], ok


def qeq_energy(charges, electronegativity, hardness, coulomb, prefactor=COULOMB):
    """``sum (chi q + 1/2 J q^2) + prefactor * 1/2 q^T A q`` (eV)."""
    q = charges
    return jnp.sum(electronegativity * q + 0.5 * hardness * q * q) + 0.5 * prefactor * (
        q @ (coulomb @ q)
    )
