r"""Ewald summation for periodic cells, point or Gaussian charges.

E = E_real + E_recip + E_self + E_background, with (Gaussian units, times prefactor)

* real space over pairs: ``q_i q_j [erfc(alpha r) - erfc(r / sqrt(2 s_ij^2))] / r``,
  ``s_ij^2 = sigma_i^2 + sigma_j^2`` (the second term only for Gaussian charges);
* reciprocal space: ``(2 pi / V) sum_{k != 0} exp(-k^2 / 4 alpha^2) / k^2 |S(k)|^2``
  over a fixed box of integer triples m, ``k = m @ (2 pi inv(cell).T)``, half of
  it by ``S(-k) = conj S(k)``;
* self: ``-alpha / sqrt(pi) sum q_i^2`` (+ ``q_i^2 / (2 sqrt(pi) sigma_i)``);
* uniform neutralising background of a charged cell:
  ``-pi Q^2 / (2 V alpha^2) + (2 pi Q / V) sum_i q_i sigma_i^2``.

The structure factor factorises over the three fractional axes,
``S(m) = sum_j q_j e1[j, m1] e2[j, m2] e3[j, m3]`` with ``e_a = exp(2 pi i m_a s_ja)``,
so it is accumulated as a matrix product over chunks of atoms: memory is
O(chunk x k) and never a dense (k, atom) array. The k set is a fixed box of integer
triples, so the energy is a smooth function of the cell (exact stress) and a
config never recompiles when the cell changes.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from jaxlr.kernels.coulomb import _sigma_per_atom, pair_potential_sum, safe_distance
from jaxlr.neighbors import Pairs, pair_vectors
from jaxlr.units import COULOMB

__all__ = [
    "EwaldConfig",
    "ewald_energy",
    "ewald_potential",
    "ewald_fns",
    "EwaldFns",
    "real_space_potential",
    "reciprocal_energy",
    "reciprocal_potential",
]

_SQRT_PI = 1.7724538509055159


@dataclasses.dataclass(frozen=True)
class EwaldConfig:
    """Static (hashable) Ewald parameters.

    Attributes:
      alpha: splitting parameter in 1/Å.
      r_cut: real-space cutoff in Å.
      k_max: (3,) largest |m_a| per reciprocal axis: the k set is the box
        ``|m_a| <= k_max[a]``, ``m != 0``.
      chunk: atoms per chunk of the structure-factor accumulation.
      estimated_error: the tuner's estimate of the absolute energy error (Gaussian
        units x sum q^2 scale), for information.
    """

    alpha: float
    r_cut: float
    k_max: tuple[int, int, int]
    chunk: int = 2048
    estimated_error: float | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        if not (self.r_cut > 0):
            raise ValueError(f"r_cut must be positive, got {self.r_cut}")
        if len(self.k_max) != 3 or any(int(k) < 0 for k in self.k_max):
            raise ValueError(f"k_max must be 3 non-negative integers, got {self.k_max}")
        object.__setattr__(self, "k_max", tuple(int(k) for k in self.k_max))


# ---------------------------------------------------------------- real space


def real_space_potential(positions, charges, cell, pairs: Pairs, *, alpha, r_cut, sigma=None):
    """(N,) real-space Ewald potential (Gaussian units) over ``pairs``."""
    n = positions.shape[0]
    r_vec = pair_vectors(positions, pairs, cell)
    mask = pairs.mask
    r = safe_distance(r_vec, mask)
    inside = mask & (r < r_cut)
    v = jax.scipy.special.erfc(alpha * r) / r
    sig = _sigma_per_atom(sigma, charges)
    if sig is not None:
        s2 = sig[pairs.i] ** 2 + sig[pairs.j] ** 2
        v = v - jax.scipy.special.erfc(r / jnp.sqrt(2.0 * s2)) / r
    v = jnp.where(inside, v, 0.0)
    return pair_potential_sum(v, charges, pairs, n)


# ---------------------------------------------------------------- reciprocal


def _phases(positions, cell, k_max, dtype):
    """Per-axis phase factors e_a[j, m] = exp(2 pi i m s_ja) and the m ranges."""
    s = positions @ jnp.linalg.inv(cell)
    cdtype = jnp.complex64 if dtype == jnp.float32 else jnp.complex128
    ms = [
        jnp.arange(-k_max[0], k_max[0] + 1, dtype=dtype),
        jnp.arange(-k_max[1], k_max[1] + 1, dtype=dtype),
        jnp.arange(0, k_max[2] + 1, dtype=dtype),
    ]
    e = [
        jax.lax.complex(jnp.cos(t), jnp.sin(t)).astype(cdtype)
        for t in ((2.0 * jnp.pi) * (s[:, a, None] * ms[a][None, :]) for a in range(3))
    ]
    return e, ms


def _k_weights(cell, alpha, k_max, dtype):
    """(n1, n2, n3) weights w(m) exp(-k^2/4a^2)/k^2 with the half-space factor 2."""
    recip = 2.0 * jnp.pi * jnp.linalg.inv(cell).T
    m1 = jnp.arange(-k_max[0], k_max[0] + 1, dtype=dtype)
    m2 = jnp.arange(-k_max[1], k_max[1] + 1, dtype=dtype)
    m3 = jnp.arange(0, k_max[2] + 1, dtype=dtype)
    k = (
        m1[:, None, None, None] * recip[0][None, None, None, :]
        + m2[None, :, None, None] * recip[1][None, None, None, :]
        + m3[None, None, :, None] * recip[2][None, None, None, :]
    )
    k2 = jnp.sum(k * k, axis=-1)
    # half space: m3 > 0 counts twice; in the plane m3 == 0 every m != 0 counts once
    zero = (m1[:, None, None] == 0) & (m2[None, :, None] == 0) & (m3[None, None, :] == 0)
    k2_safe = jnp.where(zero, 1.0, k2)
    w = jnp.where(zero, 0.0, jnp.exp(-k2_safe / (4.0 * alpha**2)) / k2_safe)
    w = w * jnp.where(m3 > 0, 2.0, 1.0)[None, None, :]
    return w


def _pad_chunks(x, chunk):
    n = x.shape[0]
    n_chunks = max(1, -(-n // chunk))
    pad = n_chunks * chunk - n
    x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
    return x.reshape((n_chunks, chunk) + x.shape[1:])


def _structure_factor(e, charges, chunk):
    """S[m1, m2, m3] = sum_j q_j e1 e2 e3, accumulated over chunks of atoms."""
    e1, e2, e3 = e
    n1, n2, n3 = e1.shape[1], e2.shape[1], e3.shape[1]
    chunk = min(chunk, e1.shape[0])
    qe1 = e1 * charges[:, None].astype(e1.dtype)
    xs = (_pad_chunks(qe1, chunk), _pad_chunks(e2, chunk), _pad_chunks(e3, chunk))

    @jax.checkpoint
    def body(acc, x):
        a1, a2, a3 = x
        a12 = (a1[:, :, None] * a2[:, None, :]).reshape(a1.shape[0], n1 * n2)
        return acc + a12.T @ a3, None

    acc0 = jnp.zeros((n1 * n2, n3), e1.dtype)
    acc, _ = jax.lax.scan(body, acc0, xs)
    return acc.reshape(n1, n2, n3)


def reciprocal_energy(positions, charges, cell, *, alpha, k_max, chunk=2048):
    """Reciprocal-space Ewald energy (Gaussian units), (2 pi / V) sum w |S|^2."""
    dtype = positions.dtype
    e, _ = _phases(positions, cell, k_max, dtype)
    S = _structure_factor(e, charges, chunk)
    w = _k_weights(cell, alpha, k_max, dtype)
    volume = jnp.abs(jnp.linalg.det(cell))
    s2 = jnp.real(S) ** 2 + jnp.imag(S) ** 2
    return (2.0 * jnp.pi / volume) * jnp.sum(w * s2)


def reciprocal_potential(positions, charges, cell, *, alpha, k_max, chunk=2048):
    """(N,) reciprocal-space potential (Gaussian units), (4 pi / V) Re sum w S e^{-ik r}."""
    dtype = positions.dtype
    n = positions.shape[0]
    e, _ = _phases(positions, cell, k_max, dtype)
    S = _structure_factor(e, charges, chunk)
    w = _k_weights(cell, alpha, k_max, dtype)
    volume = jnp.abs(jnp.linalg.det(cell))
    T = (w.astype(S.dtype) * S).reshape(-1, S.shape[2])  # (n1 n2, n3)
    e1, e2, e3 = (jnp.conj(x) for x in e)
    n1, n2 = e1.shape[1], e2.shape[1]
    chunk = min(chunk, n)
    xs = (_pad_chunks(e1, chunk), _pad_chunks(e2, chunk), _pad_chunks(e3, chunk))

    def body(_, x):
        a1, a2, a3 = x
        u = (a3 @ T.T).reshape(a1.shape[0], n1, n2)
        phi = jnp.real(jnp.einsum("cab,ca,cb->c", u, a1, a2))
        return None, phi

    _, phi = jax.lax.scan(body, None, xs)
    return (4.0 * jnp.pi / volume) * phi.reshape(-1)[:n]


# ---------------------------------------------------------------- totals


def _self_and_background(charges, cell, alpha, sigma):
    """Per-atom self and background potentials (Gaussian units)."""
    volume = jnp.abs(jnp.linalg.det(cell))
    total = jnp.sum(charges)
    phi = -2.0 * alpha / _SQRT_PI * charges - jnp.pi * total / (volume * alpha**2)
    sig = _sigma_per_atom(sigma, charges)
    if sig is not None:
        phi = phi + charges / (_SQRT_PI * sig)
        phi = phi + (2.0 * jnp.pi / volume) * (jnp.sum(charges * sig**2) + total * sig**2)
    return phi


def ewald_potential(
    positions, charges, cell, pairs: Pairs, *, config: EwaldConfig, sigma=None, prefactor=COULOMB
):
    r"""(N,) Ewald potential phi_i (V with ``prefactor=COULOMB``), E = 1/2 sum q_i phi_i.

    Args:
      positions: (N, 3) positions in Å (need not be wrapped).
      charges: (N,) charges in e; a net charge gets the uniform background.
      cell: (3, 3) lattice vectors as rows in Å.
      pairs: pairs within at least ``config.r_cut`` (half or full list).
      config: :class:`EwaldConfig` (static).
      sigma: None, or Gaussian widths (scalar or (N,)) in Å.
      prefactor: Coulomb constant (1.0 for Gaussian units).
    """
    positions, charges, cell = jnp.asarray(positions), jnp.asarray(charges), jnp.asarray(cell)
    phi = real_space_potential(
        positions, charges, cell, pairs, alpha=config.alpha, r_cut=config.r_cut, sigma=sigma
    )
    phi = phi + reciprocal_potential(
        positions, charges, cell, alpha=config.alpha, k_max=config.k_max, chunk=config.chunk
    )
    phi = phi + _self_and_background(charges, cell, config.alpha, sigma)
    return prefactor * phi


def ewald_energy(
    positions, charges, cell, pairs: Pairs, *, config: EwaldConfig, sigma=None, prefactor=COULOMB
):
    r"""Ewald energy of one periodic structure (eV with ``prefactor=COULOMB``).

    Arguments as :func:`ewald_potential`. The reciprocal part is evaluated as
    (2 pi / V) sum w |S|^2 (one pass over the atoms), the rest as 1/2 q . phi.
    """
    positions, charges, cell = jnp.asarray(positions), jnp.asarray(charges), jnp.asarray(cell)
    phi = real_space_potential(
        positions, charges, cell, pairs, alpha=config.alpha, r_cut=config.r_cut, sigma=sigma
    )
    phi = phi + _self_and_background(charges, cell, config.alpha, sigma)
    e = 0.5 * jnp.sum(charges * phi)
    e = e + reciprocal_energy(
        positions, charges, cell, alpha=config.alpha, k_max=config.k_max, chunk=config.chunk
    )
    return prefactor * e


class EwaldFns(tuple):
    """``(energy, potential)`` closed over a config: pure functions of
    ``(positions, charges, cell, pairs)``."""

    __slots__ = ()

    def __new__(cls, energy, potential):
        return super().__new__(cls, (energy, potential))

    energy = property(lambda self: self[0])
    potential = property(lambda self: self[1])


def ewald_fns(config: EwaldConfig, *, sigma=None, prefactor=COULOMB) -> EwaldFns:
    """Energy and potential functions closed over ``config`` (ready for jit / jax-md)."""
    energy = functools.partial(ewald_energy, config=config, sigma=sigma, prefactor=prefactor)
    potential = functools.partial(ewald_potential, config=config, sigma=sigma, prefactor=prefactor)
    return EwaldFns(energy, potential)
