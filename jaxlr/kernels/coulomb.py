"""Direct pairwise Coulomb interaction for molecules: point or Gaussian charges.

Pair kernel ``1/r`` (point) or ``erf(r / sqrt(2 (sigma_i^2 + sigma_j^2))) / r``
(Gaussian charges of standard deviation ``sigma``), physical potential
``phi_i = sum_j q_j v(r_ij)`` plus the Gaussian self term ``q_i / (sqrt(pi) sigma_i)``,
so that ``E = 1/2 sum_i q_i phi_i`` exactly (self energy ``q^2 / (2 sqrt(pi) sigma)``).
Widths may mix: ``sigma_i = 0`` marks a point charge (no self term), as for the
electrolyte around Gaussian electrode atoms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlr.neighbors import Pairs, pair_vectors
from jaxlr.units import COULOMB

_SQRT_PI = 1.7724538509055159

__all__ = [
    "coulomb_potential",
    "coulomb_energy",
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
    positions, charges, pairs: Pairs | None = None, *, sigma=None, prefactor=COULOMB
):
    r"""Direct-sum potential of a molecule, phi_i = sum_j q_j v(r_ij) (+ Gaussian self).

    Args:
      positions: (N, 3) positions in Å.
      charges: (N,) charges in e.
      pairs: pairs to sum over; default every pair, summed densely in row blocks
        (no pair list in memory). A cutoff list gives a truncated sum.
      sigma: None for point charges, or Gaussian widths (scalar or (N,)) in Å.
      prefactor: Coulomb constant; ``COULOMB`` gives V, 1.0 gives e/Å.

    Returns:
      (N,) potential in V (``prefactor=COULOMB``), dtype of ``positions``.
    """
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


def coulomb_energy(
    positions, charges, pairs: Pairs | None = None, *, sigma=None, prefactor=COULOMB
):
    r"""Direct-sum energy E = 1/2 sum_i q_i phi_i of a molecule (eV; see
    :func:`coulomb_potential` for the arguments).

    Examples:
      >>> import jax.numpy as jnp
      >>> pos = jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
      >>> float(coulomb_energy(pos, jnp.array([1.0, -1.0]), prefactor=1.0))
      -0.5
    """
    phi = coulomb_potential(positions, charges, pairs, sigma=sigma, prefactor=prefactor)
    return 0.5 * jnp.sum(charges * phi)
