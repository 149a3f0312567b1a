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


def _empty_rows(b):
    """(F,) 1.0 for an all-zero constraint row (a padded fragment), else 0.0."""
    return (jnp.sum(jnp.abs(b), axis=1) == 0).astype(b.dtype)


def solve_dense(hessian, electronegativity, constraints, totals):
    """Minimise ``chi.q + 1/2 q^T H q`` subject to ``constraints @ q = totals``.

    Args:
      hessian: (N, N) symmetric positive-definite H (eV/e^2).
      electronegativity: (N,) chi (eV/e).
      constraints: (F, N) constraint rows B (static or traced); F may be 0. An
        all-zero row (a padded fragment) must have a zero total; it constrains
        nothing and its multiplier is 0.
      totals: (F,) constrained sums Q.

    Returns:
      ``(q, mu, ok)``: charges (N,), the Lagrange multipliers (F,) (the
      electronegativity each fragment equalises to, eV/e) and ``ok``, False when H
      is not positive definite on the constraint surface (then q is NaN).

    Only positive definiteness on the constraint surface is needed (a periodic
    Coulomb matrix with its neutralising background is indefinite along the total
    charge, a slab's correction along the total charge times the second moment):
    the factorised matrix is the augmented ``H + c B^T B``, which has the same
    constrained minimum (the multipliers are shifted back, ``lambda = lambda' + c
    Q``). Those indefinite terms enter every element of H, so ``c = 4 max |H_ij|``
    outweighs them along the constraint rows while raising the condition number by
    only ~ 4 x (atoms per fragment).
    """
    n = hessian.shape[0]
    dtype = hessian.dtype
    b = jnp.asarray(constraints, dtype)
    f = b.shape[0]
    b_c = jax.lax.stop_gradient(b)
    aug = jax.lax.stop_gradient(4.0 * jnp.max(jnp.abs(hessian)))
    chol = jnp.linalg.cholesky(hessian + aug * (b_c.T @ b_c) if f else hessian)
    ok = jnp.all(jnp.isfinite(chol))
    chol_c = jax.lax.stop_gradient(chol)
    if f == 0:  # no constraint: H q = -chi
        q = jax.lax.custom_linear_solve(
            lambda v: hessian @ v,
            -jnp.asarray(electronegativity, dtype),
            lambda _, r: jax.scipy.linalg.cho_solve((chol_c, True), r),
            symmetric=True,
        )
        return jnp.where(ok, q, jnp.nan), jnp.zeros((0,), dtype), ok

    def matvec(x):
        q, lam = x[:n], x[n:]
        return jnp.concatenate([hessian @ q + b.T @ lam, b @ q])

    def kkt_solve(_, rhs):
        r_q, r_c = rhs[:n], rhs[n:]
        hinv_bt = jax.scipy.linalg.cho_solve((chol_c, True), b_c.T)  # (N, F)
        hinv_r = jax.scipy.linalg.cho_solve((chol_c, True), r_q)
        schur = b_c @ hinv_bt + jnp.diag(_empty_rows(b_c))  # (F, F); empty rows: 0
        lam = jnp.linalg.solve(schur, b_c @ hinv_r - r_c)
        # [H' B^T; B 0] [q; lam] = r  <=>  [H B^T; B 0] [q; lam + c r_c] = r
        return jnp.concatenate([hinv_r - hinv_bt @ lam, lam + aug * r_c])

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


def conjugate_gradient(matvec, rhs, precond, *, tol=1e-8, max_iter=500, x0=None, curvature=False):
    """Preconditioned conjugate gradient for a symmetric positive-definite operator.

    Stops when ``|r| <= tol |rhs|``. Returns ``(x, iterations, relative_residual)``;
    runs under jit (a ``lax.while_loop``). Do not differentiate through it: wrap it
    in ``jax.lax.custom_linear_solve`` (see :func:`solve_matrix_free`).

    With ``curvature=True`` it also returns the smallest ``p.Ap / p.p`` over its
    search directions p: a non-positive value proves that the operator is not
    positive definite (the iterations then do not minimise anything)."""
    x = jnp.zeros_like(rhs) if x0 is None else x0
    r = rhs - matvec(x)
    z = precond(r)
    p = z
    rz = jnp.vdot(r, z)
    norm_b = jnp.maximum(jnp.linalg.norm(rhs), jnp.finfo(rhs.dtype).tiny)
    big = jnp.asarray(jnp.inf, rhs.dtype)

    def cond(state):
        _, r, _, _, k, _ = state
        return (jnp.linalg.norm(r) > tol * norm_b) & (k < max_iter)

    def body(state):
        x, r, p, rz, k, low = state
        ap = matvec(p)
        pap = jnp.vdot(p, ap)
        low = jnp.minimum(low, pap / jnp.maximum(jnp.vdot(p, p), jnp.finfo(rhs.dtype).tiny))
        step = rz / pap
        x = x + step * p
        r = r - step * ap
        z = precond(r)
        rz_new = jnp.vdot(r, z)
        p = z + (rz_new / rz) * p
        return x, r, p, rz_new, k + 1, low

    x, r, _, _, k, low = jax.lax.while_loop(cond, body, (x, r, p, rz, jnp.asarray(0), big))
    if curvature:
        return x, k, jnp.linalg.norm(r) / norm_b, low
    return x, k, jnp.linalg.norm(r) / norm_b


def solve_matrix_free(
    hessian_matvec, diagonal, electronegativity, constraints, totals, *, tol, max_iter, x0=None
):
    """Constrained minimum of ``chi.q + 1/2 q^T H q`` (``B q = Q``), H a mat-vec.

    Projected preconditioned conjugate gradient on the constraint surface (Gould,
    Hribar & Nocedal 2001) with a Jacobi preconditioner: one CG run, which a guess of
    the charges (``x0``, e.g. the previous MD step's) warm-starts directly. The KKT
    solve goes through ``jax.lax.custom_linear_solve``, so derivatives are more such
    solves (implicit differentiation), never derivatives of the iterations.

    Returns ``(q, lambda, iterations, relative_residual)``.
    """
    dtype = diagonal.dtype
    n = diagonal.shape[0]
    b = jnp.asarray(constraints, dtype)
    f = b.shape[0]
    m_inv = 1.0 / jax.lax.stop_gradient(diagonal)
    b_c = jax.lax.stop_gradient(b)
    # an empty row (a padded fragment, total 0) gets a unit diagonal: its multiplier
    # is then 0 and the other rows are untouched
    bmb = b_c @ (m_inv[:, None] * b_c.T) + jnp.diag(_empty_rows(b_c))  # (F, F)

    def bmb_solve(x):
        return x if f == 0 else jnp.linalg.solve(bmb, x)

    def project(r):
        """Remove from r its B^T component in the M^-1 metric, r - B^T (B M^-1 B^T)^-1
        B M^-1 r: then M^-1 r lies on the constraint surface (B M^-1 r = 0). Doing
        it to the residual itself (not only to the search direction) keeps the
        iteration stable (Gould, Hribar & Nocedal's residual update)."""
        return r if f == 0 else r - b_c.T @ bmb_solve(b_c @ (m_inv * r))

    def kkt_matvec(x):
        q, lam = x[:n], x[n:]
        return jnp.concatenate([hessian_matvec(q) + b.T @ lam, b @ q])

    def kkt_solve(matvec, rhs):
        h_mv = lambda v: matvec(jnp.concatenate([v, jnp.zeros(f, dtype)]))[:n]  # noqa: E731
        r_q, r_c = rhs[:n], rhs[n:]
        # a start on the constraint surface: the guess, corrected along M^-1 B^T
        start = jnp.zeros(n, dtype) if x0 is None else jax.lax.stop_gradient(x0).astype(dtype)
        if f:
            start = start + m_inv * (b_c.T @ bmb_solve(r_c - b_c @ start))
        r = project(r_q - h_mv(start))
        g = m_inv * r
        norm_b = jnp.maximum(jnp.linalg.norm(m_inv * project(r_q)), jnp.finfo(dtype).tiny)

        def cond(state):
            _, _, g, _, _, k = state
            return (jnp.linalg.norm(g) > tol * norm_b) & (k < max_iter)

        def body(state):
            q, r, g, p, rg, k = state
            hp = h_mv(p)
            step = rg / jnp.vdot(p, hp)
            q = q + step * p
            r = project(r - step * hp)
            g = m_inv * r
            rg_new = jnp.vdot(r, g)
            return q, r, g, g + (rg_new / rg) * p, rg_new, k + 1

        rg = jnp.vdot(r, g)
        q, r, g, _, _, k = jax.lax.while_loop(cond, body, (start, r, g, g, rg, jnp.asarray(0)))
        # multipliers: B^T lambda = r_q - H q (the part the projections removed)
        full = r_q - h_mv(q)
        lam = bmb_solve(b_c @ (m_inv * full))
        return jnp.concatenate([q, lam]), (k, jnp.linalg.norm(g) / norm_b)

    rhs = jnp.concatenate([-jnp.asarray(electronegativity, dtype), jnp.asarray(totals, dtype)])
    x, (its, res) = jax.lax.custom_linear_solve(
        kkt_matvec, rhs, kkt_solve, symmetric=True, has_aux=True
    )
    return x[:n], x[n:], its, res
