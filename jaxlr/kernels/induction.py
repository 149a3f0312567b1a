r"""Induced point dipoles with Thole damping as a differentiable linear solve.

Model (Applequist; Thole 1981; the exponential damping of AMOEBA, Ren & Ponder
2003). Every atom i carries an isotropic polarizability ``alpha_i`` (Å^3, the
Gaussian-unit volume). Its induced dipole ``mu_i`` (e·Å) answers the total field at
its site: the permanent field ``E0_i`` (of the charges and an external field) plus
the field of the other induced dipoles,

    mu_i = alpha_i (E0_i / k + sum_{j != i} T_ij mu_j),       k = COULOMB (eV·Å/e^2),

so that in matrix form ``A mu = E0 / k`` with ``A = diag(1/alpha) (x) I_3 - T``
(1/Å^3). Fields are in V/Å = eV/(e·Å); ``E / k`` is the field in Gaussian units
(e/Å^2) and a lone atom gets ``mu = alpha E / k``. ``T_ij`` is the dipole field
tensor (Gaussian units, 1/Å^3), Thole-damped:

    T_ij = lambda5 3 r r^T / r^5 - lambda3 I / r^3,
    u^3 = r^3 / sqrt(alpha_i alpha_j),  lambda3 = 1 - exp(-a u^3),
    lambda5 = 1 - (1 + a u^3) exp(-a u^3),

with the Thole parameter ``a`` (0.39 in AMOEBA). ``lambda3`` is the fraction of
Thole's smeared charge density ``3a/(4 pi) exp(-a u^3)`` inside radius r and
``lambda5 = lambda3 - (r/3) dlambda3/dr``. The field of a charge ``q_j`` on atom i
is ``k q_j lambda3 (R_i - R_j) / r^3`` (optionally undamped, and for Gaussian
charges of width sigma_j the field of that Gaussian at the point R_i).

The induction energy (eV) is

    U(mu) = k/2 mu.A mu - mu.E0,    minimal at the solution, U = -1/2 mu.E0,

so A must be positive definite: where it is not (atoms too close for their
polarizabilities without enough damping), the dipoles run away, the
*polarization catastrophe*; the solvers flag it. Derivatives of the solution go
through ``jax.lax.custom_linear_solve`` (one more solve, never a derivative of the
iterations), and at the solution dU/dR at fixed mu equals the total derivative
(Hellmann-Feynman).

Atoms with ``alpha_i = 0`` carry no dipole (their row of A is the identity and
they neither feel nor make a dipole field); derivatives with respect to a zero
polarizability are returned as 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr.kernels.qeq import conjugate_gradient, solve_dense
from jaxlr.units import COULOMB

__all__ = [
    "thole_factors",
    "dipole_tensor",
    "dipole_matrix",
    "induction_matrix",
    "dipole_field",
    "charge_field",
    "solve_induced_dense",
    "solve_induced_matrix_free",
    "induction_energy",
    "thole_correction",
    "pair_tensor_field",
    "pair_charge_field",
]

_SQRT_PI = 1.7724538509055159


def _damping_width(alpha_i, alpha_j):
    """``sqrt(alpha_i alpha_j)`` (Å^3) and whether the pair is damped at all (both
    polarizabilities positive); 1 where it is not, so nothing divides by zero."""
    prod = alpha_i * alpha_j
    damped = prod > 0
    return jnp.sqrt(jnp.where(damped, prod, 1.0)), damped


def thole_factors(r, alpha_i, alpha_j, thole):
    """Thole's exponential damping factors ``(lambda3, lambda5)`` at distance r.

    ``x = a r^3 / sqrt(alpha_i alpha_j)``, ``lambda3 = 1 - exp(-x)``, ``lambda5 =
    1 - (1 + x) exp(-x)``. ``thole`` None (or 0) means no damping (both 1), as
    does a pair where one polarizability is 0."""
    if thole is None or (not isinstance(thole, jax.core.Tracer) and thole == 0):
        one = jnp.ones_like(r)
        return one, one
    width, damped = _damping_width(alpha_i, alpha_j)
    x = thole * r**3 / width
    e = jnp.exp(-x)
    lam3 = -jnp.expm1(-x)
    lam5 = lam3 - x * e
    return jnp.where(damped, lam3, 1.0), jnp.where(damped, lam5, 1.0)


def _radial(r2, apart, alpha_i, alpha_j, thole):
    """``(lambda3 / r^3, lambda5 / r^5)`` for pairs at squared distance r2, with the
    r -> 0 limits ``(a / sqrt(alpha_i alpha_j), 0)`` of a damped pair (0 for an
    undamped or masked one); finite derivatives to second order."""
    at_zero = r2 == 0
    r2 = jnp.where(apart, r2, 1.0)  # never 1/0, even in a branch where() drops
    r = jnp.sqrt(r2)
    lam3, lam5 = thole_factors(r, alpha_i, alpha_j, thole)
    inv3 = jnp.where(apart, lam3 / (r * r2), 0.0)
    inv5 = jnp.where(apart, lam5 / (r * r2 * r2), 0.0)
    if thole is None or (not isinstance(thole, jax.core.Tracer) and thole == 0):
        return inv3, inv5
    width, damped = _damping_width(alpha_i, alpha_j)
    # coincident atoms: lambda3 / r^3 -> a / width, lambda5 / r^5 -> a^2 r / (2 width^2)
    small = apart & (thole * r * r2 < 1e-6 * width)
    lim3 = thole / width * (1.0 - 0.5 * thole * r * r2 / width)
    inv3 = jnp.where(small, lim3, inv3)
    inv5 = jnp.where(small, 0.5 * thole**2 * r / width**2, inv5)
    coincident = ~apart & damped & at_zero
    return jnp.where(coincident, thole / width, inv3), inv5


def dipole_tensor(r_vec, alpha_i, alpha_j, thole, mask=None):
    """(P, 3, 3) Thole-damped dipole field tensors ``T = lambda5 3 r r^T / r^5 -
    lambda3 I / r^3`` (1/Å^3) of pair vectors ``r_vec`` (P, 3); 0 where ``mask`` is
    False. The field at i of a dipole m at j is ``T m`` (Gaussian units)."""
    r2 = jnp.sum(r_vec * r_vec, axis=-1)
    apart = r2 > 0 if mask is None else mask & (r2 > 0)
    inv3, inv5 = _radial(r2, apart, alpha_i, alpha_j, thole)
    if mask is not None:
        inv3 = jnp.where(mask, inv3, 0.0)
    eye = jnp.eye(3, dtype=r_vec.dtype)
    outer = r_vec[..., :, None] * r_vec[..., None, :]
    return 3.0 * inv5[..., None, None] * outer - inv3[..., None, None] * eye


def _alpha(polarizability, n, dtype):
    return jnp.broadcast_to(jnp.asarray(polarizability, dtype), (n,))


def dipole_matrix(positions, polarizability, thole=0.39):
    """(3N, 3N) dipole field matrix T of a molecule (Gaussian units, 1/Å^3): block
    (i, j) is ``T_ij`` (Thole-damped), diagonal blocks and the rows and columns of
    atoms with zero polarizability are 0. Index ``3 i + a`` is atom i, axis a."""
    n = positions.shape[0]
    alpha = _alpha(polarizability, n, positions.dtype)
    d = positions[None, :, :] - positions[:, None, :]  # r_ij = R_j - R_i
    live = alpha > 0
    mask = ~jnp.eye(n, dtype=bool) & live[:, None] & live[None, :]
    t = dipole_tensor(d, alpha[:, None], alpha[None, :], thole, mask)  # (N, N, 3, 3)
    return t.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)


def _inverse_alpha(alpha):
    """``1/alpha``, and 1 for non-polarizable atoms (whose dipole is pinned at 0)."""
    live = alpha > 0
    return jnp.where(live, 1.0 / jnp.where(live, alpha, 1.0), 1.0)


def induction_matrix(positions, polarizability, thole=0.39):
    """(3N, 3N) ``A = diag(1/alpha) (x) I_3 - T`` (1/Å^3) of a molecule; see
    :func:`dipole_matrix`. Rows of atoms with zero polarizability are the identity."""
    n = positions.shape[0]
    alpha = _alpha(polarizability, n, positions.dtype)
    diag = jnp.repeat(_inverse_alpha(alpha), 3)
    return jnp.diag(diag) - dipole_matrix(positions, alpha, thole)


def _row_blocks(n, block):
    block = max(1, min(block, n))
    n_blocks = -(-n // block)
    pad = n_blocks * block - n
    rows = jnp.concatenate([jnp.arange(n), jnp.zeros(pad, int)]).reshape(n_blocks, block)
    return rows


def dipole_field(positions, dipoles, polarizability, thole=0.39, block=256):
    """(N, 3) field ``sum_{j != i} T_ij mu_j`` of point dipoles (Gaussian units,
    e/Å^2; times COULOMB for V/Å) at the atoms of a molecule, summed in row blocks
    (O(block N) memory): the mat-vec of the matrix-free solve. Atoms with zero
    polarizability neither make nor feel it."""
    n = positions.shape[0]
    alpha = _alpha(polarizability, n, positions.dtype)
    live = alpha > 0
    cols = jnp.arange(n)

    @jax.checkpoint
    def one(idx):
        d = positions[None, :, :] - positions[idx][:, None, :]
        mask = (idx[:, None] != cols[None, :]) & live[idx][:, None] & live[None, :]
        r2 = jnp.sum(d * d, axis=-1)
        inv3, inv5 = _radial(r2, mask & (r2 > 0), alpha[idx][:, None], alpha[None, :], thole)
        inv3 = jnp.where(mask, inv3, 0.0)
        proj = jnp.sum(d * dipoles[None, :, :], axis=-1)  # r_ij . mu_j
        return jnp.einsum("bj,bjc->bc", 3.0 * inv5 * proj, d) - inv3 @ dipoles

    rows = _row_blocks(n, block)
    return jax.lax.map(one, rows).reshape(-1, 3)[:n]


def charge_field(positions, charges, polarizability=None, thole=None, sigma=None, block=256):
    """(N, 3) field of the charges at the atoms of a molecule (Gaussian units,
    e/Å^2; times COULOMB for V/Å), each atom's own charge excluded.

    ``E_i = sum_{j != i} q_j g(r_ij) (R_i - R_j) / r_ij`` with ``g = lambda3 / r^2``
    for point charges (``lambda3`` the Thole factor with ``polarizability`` and
    ``thole``; 1 when ``thole`` is None) and, for Gaussian charges of width
    ``sigma_j`` (Å, scalar or (N,); 0 a point charge), the field of that Gaussian
    at the point R_i, ``[erf(x) - 2 x exp(-x^2) / sqrt(pi)] / r^2`` with ``x = r /
    (sqrt(2) sigma_j)`` (times ``lambda3`` when damped)."""
    positions = jnp.asarray(positions)
    n = positions.shape[0]
    dtype = positions.dtype
    q = jnp.asarray(charges, dtype)
    alpha = None if polarizability is None else _alpha(polarizability, n, dtype)
    sig = None if sigma is None else jnp.broadcast_to(jnp.asarray(sigma, dtype), (n,))
    cols = jnp.arange(n)

    @jax.checkpoint
    def one(idx):
        d = positions[None, :, :] - positions[idx][:, None, :]  # R_j - R_i
        off = idx[:, None] != cols[None, :]
        r2 = jnp.sum(d * d, axis=-1)
        apart = off & (r2 > 0)
        if alpha is None or thole is None:
            r2s = jnp.where(apart, r2, 1.0)
            h = jnp.where(apart, 1.0 / (jnp.sqrt(r2s) * r2s), 0.0)
            damped = False
        else:
            h, _ = _radial(r2, apart, alpha[idx][:, None], alpha[None, :], thole)
            h = jnp.where(off, h, 0.0)
            damped = True
        if sig is not None:
            h = h * _gaussian_fraction(r2, apart, sig[None, :], damped)
        # E_i = -sum_j q_j h_ij (R_j - R_i)
        return -jnp.einsum("bj,bjc->bc", h * q[None, :], d)

    rows = _row_blocks(n, block)
    return jax.lax.map(one, rows).reshape(-1, 3)[:n]


def _gaussian_fraction(r2, apart, sig, damped):
    """Fraction of a Gaussian charge (width sig, 0: point) enclosed within r,
    ``erf(x) - 2 x exp(-x^2)/sqrt(pi)``, x = r / (sqrt 2 sig), as a factor on
    ``1/r^3``. Near r = 0 (where ``1/r^3`` has been replaced by a finite limit
    only for damped pairs) the undamped product uses its series
    ``4 / (3 sqrt(pi) w^3) (1 - 3 r^2 / (5 w^2)) r^3``."""
    point = sig <= 0
    w = jnp.sqrt(2.0) * jnp.where(point, 1.0, sig)
    r = jnp.sqrt(jnp.where(apart, r2, 1.0))
    x = r / w
    frac = jax.scipy.special.erf(x) - 2.0 / _SQRT_PI * x * jnp.exp(-x * x)
    small = r2 < 1e-6 * w * w
    series = 4.0 / (3.0 * _SQRT_PI) * x**3 * (1.0 - 0.6 * x * x)
    frac = jnp.where(small, series, frac)
    return jnp.where(point, 1.0, frac)


def solve_induced_dense(matrix, field):
    """Induced dipoles from the dense matrix: ``A mu = field``.

    Args:
      matrix: (3N, 3N) symmetric A (1/Å^3), e.g. :func:`induction_matrix`.
      field: (N, 3) permanent field in Gaussian units (e/Å^2), i.e. ``E0 / k``.

    Returns:
      ``(mu, ok)``: (N, 3) dipoles (e·Å) and ``ok``, False when A is not positive
      definite (polarization catastrophe; mu is then NaN). A is factorised once
      (Cholesky, the QEq dense path); derivatives are one more solve with it.
    """
    n = field.shape[0]
    dtype = matrix.dtype
    flat = jnp.asarray(field, dtype).reshape(-1)
    mu, _, ok = solve_dense(matrix, -flat, np.zeros((0, 3 * n)), jnp.zeros((0,), dtype))
    return mu.reshape(n, 3), ok


def solve_induced_matrix_free(matvec, diagonal, field, *, tol=1e-8, max_iter=500, x0=None):
    """Induced dipoles from a mat-vec: ``A mu = field`` by Jacobi-preconditioned CG.

    Args:
      matvec: ``v (N, 3) -> A v (N, 3)``, A symmetric (1/Å^3).
      diagonal: (N,) the diagonal of A per atom (``1/alpha``).
      field: (N, 3) permanent field, Gaussian units (e/Å^2).
      tol, max_iter: relative residual target and iteration limit.
      x0: (N, 3) starting guess (e.g. the previous MD step's dipoles).

    Returns:
      ``(mu, ok, iterations, relative_residual, curvature)``: ``ok`` is False when
      CG did not converge or met a direction of non-positive curvature
      ``p.Ap <= 0`` (A not positive definite: a polarization catastrophe);
      ``curvature`` the smallest ``p.Ap / p.p`` seen (1/Å^3). Derivatives go
      through ``jax.lax.custom_linear_solve``.
    """
    n = field.shape[0]
    dtype = field.dtype
    inv = jnp.repeat(1.0 / jax.lax.stop_gradient(jnp.asarray(diagonal, dtype)), 3)

    def mv(v):
        return matvec(v.reshape(n, 3)).reshape(-1)

    def solve(op, b):
        start = None if x0 is None else jax.lax.stop_gradient(x0).astype(dtype).reshape(-1)
        x, k, res, low = conjugate_gradient(
            op, b, lambda r: inv * r, tol=tol, max_iter=max_iter, x0=start, curvature=True
        )
        return x, (k, res, low)

    rhs = jnp.asarray(field, dtype).reshape(-1)
    x, (k, res, low) = jax.lax.custom_linear_solve(mv, rhs, solve, symmetric=True, has_aux=True)
    ok = (res <= tol) & (low > 0) & jnp.all(jnp.isfinite(x))
    return x.reshape(n, 3), ok, k, res, low


def induction_energy(dipoles, field, applied_field, prefactor=COULOMB):
    """``U = k/2 mu.A mu - mu.E0`` (eV) from ``A mu`` (``applied_field``, Gaussian
    units, (N, 3)), the dipoles (e·Å) and the permanent field ``E0`` (V/Å, (N, 3)).
    At the solution (``A mu = E0 / k``) it equals ``-1/2 mu.E0``; its first
    derivatives do not feel the solver's error to first order."""
    return 0.5 * prefactor * jnp.sum(dipoles * applied_field) - jnp.sum(dipoles * field)


# ------------------------------------------------------- periodic: pair corrections


def thole_correction(r_vec, alpha_i, alpha_j, thole, mask):
    """Short-range difference between damped and bare interactions over pairs.

    Returns ``(dT, dh)``: (P, 3, 3) ``T_thole - T_bare`` (1/Å^3) and (P,)
    ``(lambda3 - 1) / r^3`` (the charge-field factor), 0 where ``mask`` is False.
    Both decay as ``exp(-a r^3 / sqrt(alpha_i alpha_j))``: summed over the pairs
    within the Thole range they turn a bare periodic (Ewald / PME) field into the
    damped one."""
    r2 = jnp.sum(r_vec * r_vec, axis=-1)
    apart = mask & (r2 > 0)
    inv3, inv5 = _radial(r2, apart, alpha_i, alpha_j, thole)
    bare3, bare5 = _radial(r2, apart, alpha_i, alpha_j, None)
    d3 = jnp.where(apart, inv3 - bare3, 0.0)
    d5 = jnp.where(apart, inv5 - bare5, 0.0)
    eye = jnp.eye(3, dtype=r_vec.dtype)
    outer = r_vec[..., :, None] * r_vec[..., None, :]
    return 3.0 * d5[..., None, None] * outer - d3[..., None, None] * eye, d3


def pair_tensor_field(tensors, dipoles, pairs, n_atoms):
    """(N, 3) ``sum_pairs t_ij mu_j`` (and ``t_ij mu_i`` onto j for a half list;
    the tensors are even in r_ij)."""
    out = jax.ops.segment_sum(
        jnp.einsum("pab,pb->pa", tensors, dipoles[pairs.j]), pairs.i, num_segments=n_atoms
    )
    if pairs.half:
        out = out + jax.ops.segment_sum(
            jnp.einsum("pab,pb->pa", tensors, dipoles[pairs.i]), pairs.j, num_segments=n_atoms
        )
    return out


def pair_charge_field(factors, r_vec, charges, pairs, n_atoms):
    """(N, 3) ``sum_pairs q_j h_ij (R_i - R_j)`` over pairs (r_ij = R_j - R_i),
    both directions for a half list."""
    out = jax.ops.segment_sum(
        -(factors * charges[pairs.j])[:, None] * r_vec, pairs.i, num_segments=n_atoms
    )
    if pairs.half:
        out = out + jax.ops.segment_sum(
            (factors * charges[pairs.i])[:, None] * r_vec, pairs.j, num_segments=n_atoms
        )
    return out
