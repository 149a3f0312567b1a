"""Direct pairwise Coulomb interaction for molecules: point or Gaussian charges.

Pair kernel ``1/r`` (point) or ``erf(r / sqrt(2 (sigma_i^2 + sigma_j^2))) / r``
(Gaussian charges of standard deviation ``sigma``), physical potential
``phi_i = sum_j q_j v(r_ij)`` plus the Gaussian self term ``q_i / (sqrt(pi) sigma_i)``,
so that ``E = 1/2 sum_i q_i phi_i`` exactly (self energy ``q^2 / (2 sqrt(pi) sigma)``).
Widths may mix: ``sigma_i = 0`` marks a point charge (no self term), as for the
electrolyte around Gaussian electrode atoms.

Atomic dipoles ``mu`` (N, 3) in e·Å may sit on the same sites (point dipoles, or the
Gaussian-smeared dipole density ``-mu . grad g_sigma`` of the atom's width). The
pair energy of two sites is ``(q_i - mu_i . grad)(q_j + mu_j . grad) v(r)``,
``r = r_j - r_i``; with ``B = -v'/r`` and ``C = -B'/r`` it reads

    q_i q_j v + B (q_j mu_i . r - q_i mu_j . r) + B mu_i . mu_j - C (mu_i . r)(mu_j . r),

and a Gaussian dipole adds the self energy ``|mu|^2 / (12 sqrt(pi) sigma^3)``. The
field at atom i is ``-dE/dmu_i`` without that self term (``-grad phi`` of all the
other sources for point sites), in V/Å with ``prefactor=COULOMB``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxlr.neighbors import Pairs, pair_vectors
from jaxlr.units import COULOMB

_SQRT_PI = 1.7724538509055159

__all__ = [
    "coulomb_potential",
    "coulomb_energy",
    "coulomb_field",
    "erf_kernel",
    "multipole_pair_energy",
    "pair_kernel",
    "pair_potential_sum",
    "safe_distance",
]


def blocked_sum(x, block=512):
    """Sum of a 1D array in blocks. In float32 one flat XLA reduction over 10^4-10^6
    terms loses ~1e-6 relative; block sums kept apart by an optimisation barrier (so
    XLA does not fuse them back into one loop) lose ~1e-7. Differentiable."""
    n = x.shape[0]
    if n <= block:
        return jnp.sum(x)
    pad = -n % block
    x = jnp.concatenate([x, jnp.zeros((pad,), x.dtype)]).reshape(-1, block)
    return jnp.sum(jax.lax.optimization_barrier(jnp.sum(x, axis=1)))


def safe_distance(r_ij, mask):
    """(P,) distances with padded slots set to 1 (finite first and second derivatives)."""
    r2 = jnp.sum(r_ij * r_ij, axis=-1)
    return jnp.sqrt(jnp.where(mask, r2, 1.0))


def pair_kernel(r_vec, mask, s2=None):
    """v(r) = 1/r (point) or erf(r / sqrt(2 s2)) / r (Gaussian), 0 where masked.

    Coincident points (r = 0) give the Gaussian's finite limit 2 / sqrt(2 pi s2),
    and 0 for point charges (a padded atom placed on a real one); derivatives stay
    finite to second order."""
    r2 = jnp.sum(r_vec * r_vec, axis=-1)
    apart = mask & (r2 > 0)
    r = jnp.sqrt(jnp.where(apart, r2, 1.0))
    if s2 is None:
        return jnp.where(apart, 1.0 / r, 0.0)
    point = s2 <= 0.0  # a pair of two point charges (width 0)
    s2 = jnp.where(point, 1.0, s2)
    width = jnp.sqrt(2.0 * s2)
    v = jax.scipy.special.erf(r / width) / r
    limit = 2.0 / (_SQRT_PI * width) * (1.0 - r2 / (3.0 * width**2))
    v = jnp.where(r2 > 1e-6 * s2, v, limit)  # series below r ~ 1e-3 width
    v = jnp.where(point, jnp.where(apart, 1.0 / r, 0.0), v)
    return jnp.where(mask, v, 0.0)


#: series terms of erf(x r) / r in powers of u = (x r)^2, used below x r = 1/2
_ERF_SERIES = 13


def erf_kernel(r2, x):
    """(v, B, C) of v(r) = erf(x r) / r: ``B = -v'/r``, ``C = -B'/r``; x > 0.

    Below ``x r = 1/2`` a power series in ``(x r)^2`` (no sqrt, no cancellation), so the
    values, and their derivatives to any order, are finite and accurate down to
    r = 0, where ``(v, B, C) = 2x/sqrt(pi) (1, 2x^2/3, 4x^4/5)``."""
    u = x * x * r2
    small = u < 0.25
    # series: v = 2x/sqrt(pi) sum_n c_n u^n, c_n = (-1)^n / (n! (2n + 1))
    us = jnp.where(small, u, 0.0)
    v_s = b_s = c_s = 0.0
    for n in range(_ERF_SERIES, -1, -1):  # Horner, highest power first
        c_n = (-1.0) ** n / (math.factorial(n) * (2 * n + 1))
        v_s = v_s * us + c_n
        if n >= 1:
            b_s = b_s * us + n * c_n
        if n >= 2:
            c_s = c_s * us + n * (n - 1) * c_n
    pre = 2.0 * x / _SQRT_PI
    x2 = x * x
    v_s, b_s, c_s = pre * v_s, -2.0 * x2 * pre * b_s, 4.0 * x2 * x2 * pre * c_s
    # closed form away from 0
    r = jnp.sqrt(jnp.where(small, 0.25 / x2, r2))
    xr = x * r
    erf = jax.scipy.special.erf(xr)
    g = (2.0 / _SQRT_PI) * xr * jnp.exp(-xr * xr)
    v_d = erf / r
    b_d = (erf - g) / (r * r * r)
    c_d = (3.0 * erf - g * (3.0 + 2.0 * xr * xr)) / (r * r * r * r * r)
    return (jnp.where(small, v_s, v_d), jnp.where(small, b_s, b_d), jnp.where(small, c_s, c_d))


def point_kernel(r2, apart):
    """(v, B, C) = (1/r, 1/r^3, 3/r^5), 0 where not ``apart``."""
    inv = 1.0 / jnp.sqrt(jnp.where(apart, r2, 1.0))
    inv3 = inv * inv * inv
    z = jnp.zeros_like(inv)
    return (
        jnp.where(apart, inv, z),
        jnp.where(apart, inv3, z),
        jnp.where(apart, 3.0 * inv3 * inv * inv, z),
    )


def multipole_pair_energy(kernel, r_vec, qi, qj, mui, muj):
    """(P,) energies of site pairs with charges and dipoles (Gaussian units):
    ``q_i q_j v + B (q_j mu_i.r - q_i mu_j.r) + B mu_i.mu_j - C (mu_i.r)(mu_j.r)``,
    ``r = r_j - r_i``, for ``kernel = (v, B, C)`` per pair; ``mui = None`` for no
    dipoles."""
    v, b, c = kernel
    e = qi * qj * v
    if mui is None:
        return e
    ri = jnp.sum(mui * r_vec, axis=-1)
    rj = jnp.sum(muj * r_vec, axis=-1)
    return e + b * (qj * ri - qi * rj + jnp.sum(mui * muj, axis=-1)) - c * ri * rj


def gaussian_dipole_self_energy(dipoles, sig):
    """sum_i |mu_i|^2 / (12 sqrt(pi) sigma_i^3), the self energy of Gaussian dipoles
    (the r -> 0 limit of the pair energy, halved); 0 for point sites."""
    point = sig <= 0.0
    s = jnp.where(point, 1.0, sig)
    mu2 = jnp.sum(dipoles * dipoles, axis=-1)
    return jnp.sum(jnp.where(point, 0.0, mu2 / (12.0 * _SQRT_PI * s * s * s)))


def gaussian_self_potential(charges, sig):
    """q_i / (sqrt(pi) sigma_i), the potential of a Gaussian charge on itself; 0 for
    point charges (sigma_i = 0, whose infinite self energy is left out)."""
    point = sig <= 0.0
    return jnp.where(point, 0.0, charges / (_SQRT_PI * jnp.where(point, 1.0, sig)))


def pair_potential_sum(values, charges, pairs: Pairs, n_atoms: int):
    """phi_i = sum over pairs of q_j v_ij (and q_i v_ij onto j for a half list)."""
    phi = jax.ops.segment_sum(charges[pairs.j] * values, pairs.i, num_segments=n_atoms)
    if pairs.half:
        phi = phi + jax.ops.segment_sum(charges[pairs.i] * values, pairs.j, num_segments=n_atoms)
    return phi


def _sigma_per_atom(sigma, charges):
    if sigma is None:
        return None
    return jnp.broadcast_to(jnp.asarray(sigma, dtype=charges.dtype), charges.shape)


def coulomb_potential(
    positions,
    charges,
    pairs: Pairs | None = None,
    *,
    sigma=None,
    prefactor=COULOMB,
    dipoles=None,
):
    r"""Direct-sum potential of a molecule, phi_i = sum_j q_j v(r_ij) (+ Gaussian self).

    Args:
      positions: (N, 3) positions in Å.
      charges: (N,) charges in e.
      pairs: pairs to sum over; default every pair, summed densely in row blocks
        (no pair list in memory). A cutoff list gives a truncated sum.
      sigma: None for point charges, or Gaussian widths (scalar or (N,)) in Å.
      prefactor: Coulomb constant; ``COULOMB`` gives V, 1.0 gives e/Å.

      dipoles: optional (N, 3) atomic dipoles in e·Å (point, or Gaussian with the
        atom's sigma); their potential is included (``phi_i = dE/dq_i``).

    Returns:
      (N,) potential in V (``prefactor=COULOMB``), dtype of ``positions``.
    """
    if dipoles is not None:
        positions = jnp.asarray(positions)
        charges = _as_charges(charges, dipoles, positions).astype(positions.dtype)
        return jax.grad(coulomb_energy, argnums=1)(
            positions, charges, pairs, sigma=sigma, prefactor=prefactor, dipoles=dipoles
        )
    positions, charges = jnp.asarray(positions), jnp.asarray(charges)
    n = positions.shape[0]
    if pairs is None:
        return prefactor * _dense_potential(positions, charges, _sigma_per_atom(sigma, charges))
    sig = _sigma_per_atom(sigma, charges)
    s2 = None if sig is None else sig[pairs.i] ** 2 + sig[pairs.j] ** 2
    v = pair_kernel(pair_vectors(positions, pairs), pairs.mask, s2)
    phi = pair_potential_sum(v, charges, pairs, n)
    if sig is not None:
        phi = phi + gaussian_self_potential(charges, sig)
    return prefactor * phi


def _dense_potential(positions, charges, sig, block=512):
    """All-pairs potential in row blocks: O(N^2) time, O(block x N) memory."""
    n = positions.shape[0]
    block = max(1, min(block, n))
    n_blocks = -(-n // block)
    pad = n_blocks * block - n
    rows = jnp.concatenate([jnp.arange(n), jnp.zeros(pad, int)]).reshape(n_blocks, block)
    cols = jnp.arange(n)

    @jax.checkpoint
    def one(idx):
        d = positions[idx][:, None, :] - positions[None, :, :]
        off = idx[:, None] != cols[None, :]
        s2 = None if sig is None else sig[idx][:, None] ** 2 + sig[None, :] ** 2
        return pair_kernel(d, off, s2) @ charges

    phi = jax.lax.map(one, rows).reshape(-1)[:n]
    if sig is not None:
        phi = phi + gaussian_self_potential(charges, sig)
    return phi


def multipole_kernel(r2, mask, s2=None):
    """(v, B, C) per pair for point sites (``s2`` None, or 0 for a pair of point
    sites) or Gaussian ones (``erf(r / sqrt(2 s2)) / r``); 0 where masked and, for
    point sites, at r = 0. Finite to any derivative order everywhere."""
    apart = mask & (r2 > 0)
    pk = point_kernel(r2, apart)
    if s2 is None:
        return pk
    point = s2 <= 0.0
    gk = erf_kernel(r2, 1.0 / jnp.sqrt(2.0 * jnp.where(point, 1.0, s2)))
    return tuple(jnp.where(mask, jnp.where(point, p, g), 0.0) for p, g in zip(pk, gk))


def _as_charges(charges, dipoles, positions):
    """Charges as an array (zeros when None and dipoles are given)."""
    if charges is None:
        if dipoles is None:
            raise ValueError("charges is None and no dipoles given")
        return jnp.zeros(positions.shape[0], positions.dtype)
    return jnp.asarray(charges)


def _dipole_energy(positions, charges, dipoles, pairs, sig):
    """Direct energy with dipoles (Gaussian units), self terms included."""
    n = positions.shape[0]
    if pairs is None:
        e = _dense_multipole_energy(positions, charges, dipoles, sig)
    else:
        s2 = None if sig is None else sig[pairs.i] ** 2 + sig[pairs.j] ** 2
        r_vec = pair_vectors(positions, pairs)
        ker = multipole_kernel(jnp.sum(r_vec * r_vec, axis=-1), pairs.mask, s2)
        i, j = pairs.i, pairs.j
        e = blocked_sum(
            multipole_pair_energy(ker, r_vec, charges[i], charges[j], dipoles[i], dipoles[j])
        )
        e = e if pairs.half else 0.5 * e
    del n
    if sig is not None:
        e = e + 0.5 * jnp.sum(charges * gaussian_self_potential(charges, sig))
        e = e + gaussian_dipole_self_energy(dipoles, sig)
    return e


def _dense_multipole_energy(positions, charges, dipoles, sig, block=256):
    """All-pairs multipole energy in row blocks (O(block x N) memory), no self terms."""
    n = positions.shape[0]
    block = max(1, min(block, n))
    n_blocks = -(-n // block)
    pad = n_blocks * block - n
    valid = jnp.concatenate([jnp.ones(n, bool), jnp.zeros(pad, bool)]).reshape(n_blocks, block)
    rows = jnp.concatenate([jnp.arange(n), jnp.zeros(pad, int)]).reshape(n_blocks, block)
    cols = jnp.arange(n)

    @jax.checkpoint
    def one(x):
        idx, ok = x
        d = positions[None, :, :] - positions[idx][:, None, :]  # r_j - r_i
        off = (idx[:, None] != cols[None, :]) & ok[:, None]
        s2 = None if sig is None else sig[idx][:, None] ** 2 + sig[None, :] ** 2
        ker = multipole_kernel(jnp.sum(d * d, axis=-1), off, s2)
        e = multipole_pair_energy(
            ker,
            d,
            charges[idx][:, None],
            charges[None, :],
            dipoles[idx][:, None, :],
            dipoles[None, :, :],
        )
        return jnp.sum(e)

    return 0.5 * jnp.sum(jax.lax.map(one, (rows, valid)))


def coulomb_field(
    positions, charges, dipoles, pairs: Pairs | None = None, *, sigma=None, prefactor=COULOMB
):
    r"""(N, 3) field at each atom from all other charges and dipoles, ``-dE/dmu_i``
    without the Gaussian dipole self energy (V/Å with ``prefactor=COULOMB``); linear
    in (charges, dipoles). Arguments as :func:`coulomb_energy`."""
    positions = jnp.asarray(positions)
    charges = _as_charges(charges, dipoles, positions)
    dipoles = jnp.asarray(dipoles, positions.dtype)

    def energy(mu):
        e = coulomb_energy(positions, charges, pairs, sigma=sigma, prefactor=1.0, dipoles=mu)
        sig = _sigma_per_atom(sigma, charges)
        return e if sig is None else e - gaussian_dipole_self_energy(mu, sig)

    return -prefactor * jax.grad(energy)(dipoles)


def coulomb_energy(
    positions,
    charges,
    pairs: Pairs | None = None,
    *,
    sigma=None,
    prefactor=COULOMB,
    dipoles=None,
):
    r"""Direct-sum energy E = 1/2 sum_i q_i phi_i of a molecule (eV; see
    :func:`coulomb_potential` for the arguments).

    With ``dipoles`` ((N, 3) e·Å, point or Gaussian-smeared with the atom's sigma),
    the charge-dipole and dipole-dipole pair terms and the Gaussian dipole self
    energy are added (see the module docstring); ``charges`` may then be None.

    Examples:
      >>> import jax.numpy as jnp
      >>> pos = jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
      >>> float(coulomb_energy(pos, jnp.array([1.0, -1.0]), prefactor=1.0))
      -0.5
    """
    if dipoles is not None:
        positions = jnp.asarray(positions)
        charges = _as_charges(charges, dipoles, positions).astype(positions.dtype)
        dipoles = jnp.asarray(dipoles).astype(positions.dtype)
        sig = _sigma_per_atom(sigma, charges)
        return prefactor * _dipole_energy(positions, charges, dipoles, pairs, sig)
    phi = coulomb_potential(positions, charges, pairs, sigma=sigma, prefactor=prefactor)
    return 0.5 * jnp.sum(charges * phi)
