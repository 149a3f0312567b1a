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
import numpy as np
from jax.custom_derivatives import SymbolicZero

from jaxlr.kernels.coulomb import (
    _as_charges,
    _sigma_per_atom,
    blocked_sum,
    erf_kernel,
    gaussian_dipole_self_energy,
    gaussian_self_potential,
    multipole_pair_energy,
    pair_potential_sum,
    point_kernel,
)
from jaxlr.neighbors import Pairs, pair_vectors
from jaxlr.units import COULOMB

__all__ = [
    "EwaldConfig",
    "ewald_energy",
    "ewald_potential",
    "ewald_field",
    "dipole_reciprocal_energy",
    "dipole_self_energy",
    "surface_energy",
    "ewald_matrix",
    "ewald_fns",
    "EwaldFns",
    "real_space_energy",
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
      k_max: (3,) largest |m_a| per reciprocal axis. Without ``k_columns`` the k set
        is the whole box ``|m_a| <= k_max[a]``, ``m != 0``.
      k_columns: optional trimmed k set, grouped for the matrix products: one tuple
        per group of flat column indices ``(m1 + K1) * (2 K2 + 1) + (m2 + K2)``.
      k_heights: with ``k_columns``, the largest m3 of each group (m3 runs 0..height).
      chunk: atoms per chunk of the structure-factor accumulation.
      estimated_error: the tuner's estimate of the absolute energy error (Gaussian
        units), for information.
    """

    alpha: float
    r_cut: float
    k_max: tuple[int, int, int]
    k_columns: tuple[tuple[int, ...], ...] | None = dataclasses.field(default=None, repr=False)
    k_heights: tuple[int, ...] | None = None
    chunk: int = 256
    estimated_error: float | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        if not (self.r_cut > 0):
            raise ValueError(f"r_cut must be positive, got {self.r_cut}")
        if len(self.k_max) != 3 or any(int(k) < 0 for k in self.k_max):
            raise ValueError(f"k_max must be 3 non-negative integers, got {self.k_max}")
        object.__setattr__(self, "k_max", tuple(int(k) for k in self.k_max))
        if (self.k_columns is None) != (self.k_heights is None):
            raise ValueError("k_columns and k_heights go together")
        if self.k_columns is not None:
            if len(self.k_columns) != len(self.k_heights):
                raise ValueError("k_columns and k_heights must have one entry per group")
            n_cols = (2 * self.k_max[0] + 1) * (2 * self.k_max[1] + 1)
            for cols, h in zip(self.k_columns, self.k_heights):
                if not cols or min(cols) < 0 or max(cols) >= n_cols or not 0 <= h <= self.k_max[2]:
                    raise ValueError("k_columns / k_heights outside the k_max box")
            object.__setattr__(
                self, "k_columns", tuple(tuple(int(c) for c in g) for g in self.k_columns)
            )
            object.__setattr__(self, "k_heights", tuple(int(h) for h in self.k_heights))

    @property
    def k_groups(self):
        """Static k set: a list of ``(m1, m2, height)`` numpy groups (m3 = 0..height)."""
        k1, k2, k3 = self.k_max
        if self.k_columns is None:
            m1, m2 = np.meshgrid(np.arange(-k1, k1 + 1), np.arange(-k2, k2 + 1), indexing="ij")
            return [(m1.ravel(), m2.ravel(), k3)]
        groups = []
        for cols, h in zip(self.k_columns, self.k_heights):
            c = np.asarray(cols)
            groups.append((c // (2 * k2 + 1) - k1, c % (2 * k2 + 1) - k2, h))
        return groups

    @property
    def n_kpoints(self) -> int:
        """Number of k-points (half space) the kernel sums."""
        return int(sum(len(m1) * (h + 1) for m1, _, h in self.k_groups))


# ---------------------------------------------------------------- real space


def _real_space_values(positions, charges, cell, pairs: Pairs, alpha, r_cut, sigma):
    """(P,) pair values erfc(alpha r)/r [- erfc(r / sqrt(2 s2))/r], 0 beyond r_cut.

    Coincident Gaussian charges take the finite limit 2 (1/w - alpha) / sqrt(pi); a
    coincident point-charge pair (padding) gives 0. Derivatives stay finite."""
    r_vec = pair_vectors(positions, pairs, cell)
    r2 = jnp.sum(r_vec * r_vec, axis=-1)
    inside = pairs.mask & (r2 < r_cut * r_cut)
    apart = inside & (r2 > 0)
    r = jnp.sqrt(jnp.where(apart, r2, 1.0))
    v = jax.scipy.special.erfc(alpha * r) / r
    sig = _sigma_per_atom(sigma, charges)
    if sig is None:
        return jnp.where(apart, v, 0.0)
    s2 = sig[pairs.i] ** 2 + sig[pairs.j] ** 2
    point = s2 <= 0.0  # two point charges (width 0): the point kernel
    s2 = jnp.where(point, 1.0, s2)
    width = jnp.sqrt(2.0 * s2)
    g = v - jax.scipy.special.erfc(r / width) / r
    small = r2 < 1e-6 * jnp.minimum(s2, 1.0 / alpha**2)
    series = (2.0 / _SQRT_PI) * ((1.0 / width - alpha) - r2 / 3.0 * (1.0 / width**3 - alpha**3))
    g = jnp.where(small, series, g)
    return jnp.where(inside, jnp.where(point, jnp.where(apart, v, 0.0), g), 0.0)


def real_space_potential(positions, charges, cell, pairs: Pairs, *, alpha, r_cut, sigma=None):
    """(N,) real-space Ewald potential (Gaussian units) over ``pairs``."""
    v = _real_space_values(positions, charges, cell, pairs, alpha, r_cut, sigma)
    return pair_potential_sum(v, charges, pairs, positions.shape[0])


def real_space_energy(positions, charges, cell, pairs: Pairs, *, alpha, r_cut, sigma=None):
    """Real-space Ewald energy (Gaussian units): sum over pairs of q_i q_j v(r_ij)
    (half list; 1/2 of it for a full list)."""
    v = _real_space_values(positions, charges, cell, pairs, alpha, r_cut, sigma)
    e = blocked_sum(charges[pairs.i] * charges[pairs.j] * v)
    return e if pairs.half else 0.5 * e


# ---------------------------------------------------------------- reciprocal


def _phases(positions, cell, k_max, dtype):
    """Per-axis phase factors e_a[j, m] = exp(2 pi i m s_ja): m1, m2 from -K, m3 from 0."""
    del dtype  # the phases follow the dtype of positions
    return _phases_s(positions @ jnp.linalg.inv(cell), k_max)


def _group_weights(cell, alpha, m1, m2, height, dtype):
    """(C, height + 1) weights exp(-k^2/4a^2)/k^2 of a column group, with the
    half-space factor 2 for m3 > 0 (the plane m3 = 0 holds both m and -m)."""
    recip = 2.0 * jnp.pi * jnp.linalg.inv(cell).T
    m3 = np.arange(height + 1)
    m = np.stack(np.broadcast_arrays(m1[:, None], m2[:, None], m3[None, :]), axis=-1)
    k = jnp.asarray(m.astype(np.float64), dtype) @ recip  # (C, H, 3)
    k2 = jnp.sum(k * k, axis=-1)
    zero = np.all(m == 0, axis=-1)
    k2_safe = jnp.where(zero, 1.0, k2)
    w = jnp.where(zero, 0.0, jnp.exp(-k2_safe / (4.0 * alpha**2)) / k2_safe)
    return w * jnp.asarray(np.where(m3 > 0, 2.0, 1.0)[None, :], dtype)


def _pad_chunks(x, chunk):
    n = x.shape[0]
    n_chunks = max(1, -(-n // chunk))
    pad = n_chunks * chunk - n
    x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
    return x.reshape((n_chunks, chunk) + x.shape[1:])


def _structure_factors(e, charges, groups, k_max, chunk):
    """S_g[c, m3] = sum_j q_j e1[j, m1_c] e2[j, m2_c] e3[j, m3] for each column group,
    accumulated over chunks of atoms (memory O(chunk x k))."""
    e1, e2, e3 = e
    chunk = min(chunk, e1.shape[0])
    qe1 = e1 * charges[:, None].astype(e1.dtype)
    xs = (_pad_chunks(qe1, chunk), _pad_chunks(e2, chunk), _pad_chunks(e3, chunk))
    idx = [(m1 + k_max[0], m2 + k_max[1], h) for m1, m2, h in groups]

    def body(acc, x):
        a1, a2, a3 = x
        out = []
        for s_g, (i1, i2, h) in zip(acc, idx):
            a12 = a1[:, i1] * a2[:, i2]  # (chunk, C)
            out.append(s_g + a12.T @ a3[:, : h + 1])
        return tuple(out), None

    acc0 = tuple(jnp.zeros((len(i1), h + 1), e1.dtype) for i1, _, h in idx)
    acc, _ = jax.lax.scan(body, acc0, xs)
    return acc


def _kspec_groups(kspec):
    k_max, columns, heights, _ = kspec
    return EwaldConfig(1.0, 1.0, k_max, columns, heights).k_groups


def _phases_s(s, k_max):
    """Phase factors from fractional coordinates (see :func:`_phases`)."""
    dtype = s.dtype
    cdtype = jnp.complex64 if dtype == jnp.float32 else jnp.complex128
    ms = [
        np.arange(-k_max[0], k_max[0] + 1),
        np.arange(-k_max[1], k_max[1] + 1),
        np.arange(0, k_max[2] + 1),
    ]
    return [
        jax.lax.complex(jnp.cos(t), jnp.sin(t)).astype(cdtype)
        for t in (
            (2.0 * jnp.pi) * (s[:, a, None] * jnp.asarray(ms[a], dtype)[None, :]) for a in range(3)
        )
    ]


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _weighted_power(s, charges, weights, kspec):
    """sum_g sum w_g |S_g|^2 for fractional coordinates s; its JVP carries the exact
    gradient in s and q (one more pass of matrix products, no scatters)."""
    groups = _kspec_groups(kspec)
    S = _structure_factors(_phases_s(s, kspec[0]), charges, groups, kspec[0], kspec[3])
    return sum(jnp.sum(w * (jnp.real(x) ** 2 + jnp.imag(x) ** 2)) for w, x in zip(weights, S))


@_weighted_power.defjvp
def _weighted_power_jvp(kspec, primals, tangents):
    s, charges, weights = primals
    ds, dq, dw = tangents
    k_max, chunk = kspec[0], kspec[3]
    groups = _kspec_groups(kspec)
    e = _phases_s(s, k_max)
    S = _structure_factors(e, charges, groups, k_max, chunk)
    power = [jnp.real(x) ** 2 + jnp.imag(x) ** 2 for x in S]
    value = sum(jnp.sum(w * p) for w, p in zip(weights, power))
    grad_s, grad_q = _power_gradient(e, charges, weights, S, groups, k_max, chunk)
    tangent = jnp.sum(grad_s * ds) + jnp.sum(grad_q * dq)
    tangent = tangent + sum(jnp.sum(p * t) for p, t in zip(power, dw))
    return value, tangent


def _power_gradient(e, charges, weights, S, groups, k_max, chunk):
    """d/ds_j and d/dq_j of sum w |S|^2: 2 Re sum_m w conj(S) (q_j 2 pi i m, 1) e_j(m)."""
    n = e[0].shape[0]
    cdtype = e[0].dtype
    chunk = min(chunk, n)
    two_pi_i = 2j * np.pi
    parts = []
    for w, x, (m1, m2, h) in zip(weights, S, groups):
        t = w.astype(cdtype) * jnp.conj(x)  # (C, H)
        parts.append(
            (
                m1 + k_max[0],
                m2 + k_max[1],
                h,
                t,
                jnp.asarray(two_pi_i * m1, cdtype),
                jnp.asarray(two_pi_i * m2, cdtype),
                jnp.asarray(two_pi_i * np.arange(h + 1), cdtype),
            )
        )
    xs = tuple(_pad_chunks(a, chunk) for a in e) + (_pad_chunks(charges, chunk),)

    def body(_, xc):
        a1, a2, a3, qc = xc
        rows = a1.shape[0]
        g = 0.0
        for i1, i2, h, t, w1, w2, w3 in parts:
            p = a1[:, i1] * a2[:, i2]  # (chunk, C)
            # contract the long column axis first: [p, p 2 pi i m1, p 2 pi i m2] @ T
            v = (jnp.concatenate([p, p * w1[None, :], p * w2[None, :]]) @ t).reshape(3, rows, h + 1)
            e3 = a3[:, : h + 1]
            g = g + jnp.stack(
                [
                    jnp.real(jnp.sum(v[0] * e3, axis=1)),
                    jnp.real(jnp.sum(v[1] * e3, axis=1)),
                    jnp.real(jnp.sum(v[2] * e3, axis=1)),
                    jnp.real(jnp.sum(v[0] * e3 * w3[None, :], axis=1)),
                ],
                axis=1,
            )
        gq, gs = g[:, 0], g[:, 1:]
        return None, (2.0 * qc[:, None] * gs, 2.0 * gq)

    _, (gs, gq) = jax.lax.scan(body, None, xs)
    return gs.reshape(-1, 3)[:n], gq.reshape(-1)[:n]


def reciprocal_energy(positions, charges, cell, *, alpha, k_max, chunk=256, config=None):
    """Reciprocal-space Ewald energy (Gaussian units), (2 pi / V) sum w |S|^2.

    The k set is ``config``'s (:attr:`EwaldConfig.k_groups`), else the box ``k_max``.
    Forces, charge gradients and stress come from a custom JVP that evaluates the
    exact gradient with matrix products (no scatter), valid to any order."""
    dtype = positions.dtype
    if config is None:
        config = EwaldConfig(alpha, 1.0, k_max, chunk=chunk)
    kspec = (config.k_max, config.k_columns, config.k_heights, config.chunk)
    s = positions @ jnp.linalg.inv(cell)
    weights = tuple(_group_weights(cell, alpha, m1, m2, h, dtype) for m1, m2, h in config.k_groups)
    volume = jnp.abs(jnp.linalg.det(cell))
    return (2.0 * jnp.pi / volume) * _weighted_power(s, charges.astype(dtype), weights, kspec)


def reciprocal_potential(positions, charges, cell, *, alpha, k_max, chunk=256, config=None):
    """(N,) reciprocal-space potential (Gaussian units), (4 pi / V) Re sum w S e^{-ik r},
    over ``config``'s k set (else the box ``k_max``)."""
    dtype = positions.dtype
    n = positions.shape[0]
    groups = (EwaldConfig(alpha, 1.0, k_max) if config is None else config).k_groups
    e = _phases(positions, cell, k_max, dtype)
    S = _structure_factors(e, charges, groups, k_max, chunk)
    volume = jnp.abs(jnp.linalg.det(cell))
    T = [
        _group_weights(cell, alpha, m1, m2, h, dtype).astype(s_g.dtype) * s_g
        for s_g, (m1, m2, h) in zip(S, groups)
    ]
    idx = [(m1 + k_max[0], m2 + k_max[1], h) for m1, m2, h in groups]
    chunk = min(chunk, n)
    xs = tuple(_pad_chunks(jnp.conj(x), chunk) for x in e)

    def body(_, x):
        a1, a2, a3 = x
        phi = 0.0
        for t_g, (i1, i2, h) in zip(T, idx):
            u = a3[:, : h + 1] @ t_g.T  # (chunk, C)
            phi = phi + jnp.real(jnp.sum(u * a1[:, i1] * a2[:, i2], axis=1))
        return None, phi

    _, phi = jax.lax.scan(body, None, xs)
    return (4.0 * jnp.pi / volume) * phi.reshape(-1)[:n]


# ---------------------------------------------------------------- dipoles


def _real_space_multipole_energy(
    positions, charges, dipoles, cell, pairs: Pairs, alpha, r_cut, sig
):
    """Real-space Ewald energy of charges and dipoles (Gaussian units): the pair
    energy of :func:`jaxlr.kernels.coulomb.multipole_pair_energy` with the kernel
    ``erfc(alpha r)/r`` (point) or ``[erf(r / sqrt(2 s2)) - erf(alpha r)] / r``
    (Gaussian), 0 beyond r_cut."""
    r_vec = pair_vectors(positions, pairs, cell)
    r2 = jnp.sum(r_vec * r_vec, axis=-1)
    inside = pairs.mask & (r2 < r_cut * r_cut)
    apart = inside & (r2 > 0)
    screen = erf_kernel(r2, alpha)
    point = tuple(p - e for p, e in zip(point_kernel(r2, apart), screen))
    if sig is None:
        ker = tuple(jnp.where(apart, k, 0.0) for k in point)
    else:
        s2 = sig[pairs.i] ** 2 + sig[pairs.j] ** 2
        is_point = s2 <= 0.0
        gauss = erf_kernel(r2, 1.0 / jnp.sqrt(2.0 * jnp.where(is_point, 1.0, s2)))
        ker = tuple(
            jnp.where(inside, jnp.where(is_point, jnp.where(apart, p, 0.0), g - e), 0.0)
            for p, g, e in zip(point, gauss, screen)
        )
    i, j = pairs.i, pairs.j
    e = blocked_sum(
        multipole_pair_energy(ker, r_vec, charges[i], charges[j], dipoles[i], dipoles[j])
    )
    return e if pairs.half else 0.5 * e


def _dipole_structure_factors(e, charges, d, groups, k_max, chunk):
    """S_g[c, m3] = sum_j (q_j + 2 pi i m . d_j) e1 e2 e3, d = mu @ inv(cell) the
    fractional dipoles, accumulated over chunks of atoms (memory O(chunk x k))."""
    e1, e2, e3 = e
    cdtype = e1.dtype
    chunk = min(chunk, e1.shape[0])
    xs = (
        _pad_chunks(e1, chunk),
        _pad_chunks(e2, chunk),
        _pad_chunks(e3, chunk),
        _pad_chunks(charges, chunk),
        _pad_chunks(d, chunk),
    )
    idx = [
        (
            m1 + k_max[0],
            m2 + k_max[1],
            h,
            jnp.asarray(2j * np.pi * m1, cdtype),
            jnp.asarray(2j * np.pi * m2, cdtype),
            jnp.asarray(2j * np.pi * np.arange(h + 1), cdtype),
        )
        for m1, m2, h in groups
    ]

    def body(acc, x):
        a1, a2, a3, qc, dc = x
        out = []
        for s_g, (i1, i2, h, w1, w2, w3) in zip(acc, idx):
            a12 = a1[:, i1] * a2[:, i2]  # (chunk, C)
            f12 = qc[:, None] + dc[:, 0, None] * w1[None, :] + dc[:, 1, None] * w2[None, :]
            c = a12.shape[1]
            both = jnp.concatenate([a12 * f12, a12 * dc[:, 2, None]], axis=1).T @ a3[:, : h + 1]
            out.append(s_g + both[:c] + both[c:] * w3[None, :])
        return tuple(out), None

    acc0 = tuple(jnp.zeros((len(i1), h + 1), cdtype) for i1, _, h, *_ in idx)
    acc, _ = jax.lax.scan(body, acc0, xs)
    return acc


def _is_zero(t):
    return type(t) is SymbolicZero


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def _dipole_weighted_power(s, charges, d, weights, kspec):
    """sum_g sum w_g |S_g|^2 with the charge-and-dipole structure factor; its JVP
    carries the exact gradient in s, q and d (matrix products, no scatters), and
    skips the position part when positions are not differentiated (fields)."""
    groups = _kspec_groups(kspec)
    e = _phases_s(s, kspec[0])
    S = _dipole_structure_factors(e, charges, d, groups, kspec[0], kspec[3])
    return sum(jnp.sum(w * (jnp.real(x) ** 2 + jnp.imag(x) ** 2)) for w, x in zip(weights, S))


def _dipole_weighted_power_jvp(kspec, primals, tangents):
    s, charges, d, weights = primals
    ds, dq, dd, dw = tangents
    k_max, chunk = kspec[0], kspec[3]
    groups = _kspec_groups(kspec)
    e = _phases_s(s, k_max)
    S = _dipole_structure_factors(e, charges, d, groups, k_max, chunk)
    power = [jnp.real(x) ** 2 + jnp.imag(x) ** 2 for x in S]
    value = sum(jnp.sum(w * p) for w, p in zip(weights, power))
    tangent = jnp.zeros((), value.dtype)
    if not (_is_zero(ds) and _is_zero(dq) and _is_zero(dd)):
        with_s = not _is_zero(ds)
        g_s, g_q, g_d = _dipole_power_gradient(
            e, charges, d, weights, S, groups, k_max, chunk, with_s
        )
        if with_s:
            tangent = tangent + jnp.sum(g_s * ds)
        if not _is_zero(dq):
            tangent = tangent + jnp.sum(g_q * dq)
        if not _is_zero(dd):
            tangent = tangent + jnp.sum(g_d * dd)
    if not all(_is_zero(t) for t in dw):
        tangent = tangent + sum(jnp.sum(p * t) for p, t in zip(power, dw) if not _is_zero(t))
    return value, tangent


_dipole_weighted_power.defjvp(_dipole_weighted_power_jvp, symbolic_zeros=True)


def _dipole_power_gradient(e, charges, d, weights, S, groups, k_max, chunk, with_s):
    """Gradients of sum w |S|^2 in s, q and d (each (N, ...)), T = w conj(S):

    * ``g_q[j] = 2 Re sum_m T e_j``, ``g_d[j, a] = 2 Re sum_m T (2 pi i m_a) e_j``;
    * ``g_s[j, a] = 2 Re sum_m T f_j(m) (2 pi i m_a) e_j``, f_j = q_j + 2 pi i m.d_j.

    The long column axis is contracted first by matrix products; ``with_s=False``
    (fields) skips the three products of the position gradient."""
    n = e[0].shape[0]
    cdtype = e[0].dtype
    chunk = min(chunk, n)
    parts = []
    for w, x, (m1, m2, h) in zip(weights, S, groups):
        parts.append(
            (
                m1 + k_max[0],
                m2 + k_max[1],
                h,
                w.astype(cdtype) * jnp.conj(x),
                jnp.asarray(2j * np.pi * m1, cdtype),
                jnp.asarray(2j * np.pi * m2, cdtype),
                jnp.asarray(2j * np.pi * np.arange(h + 1), cdtype),
            )
        )
    xs = tuple(_pad_chunks(a, chunk) for a in e) + (
        _pad_chunks(charges, chunk),
        _pad_chunks(d, chunk),
    )

    def body(_, xc):
        a1, a2, a3, qc, dc = xc
        rows = a1.shape[0]
        g = 0.0
        for i1, i2, h, t, w1, w2, w3 in parts:
            p = a1[:, i1] * a2[:, i2]  # (chunk, C)
            ops = [p, p * w1[None, :], p * w2[None, :]]
            if with_s:
                f12 = qc[:, None] + dc[:, 0, None] * w1[None, :] + dc[:, 1, None] * w2[None, :]
                pf = p * f12
                ops += [pf, pf * w1[None, :], pf * w2[None, :]]
            v = (jnp.concatenate(ops) @ t).reshape(len(ops), rows, h + 1)
            e3 = a3[:, : h + 1]
            e3w = e3 * w3[None, :]

            def dot(a, b):
                return jnp.real(jnp.sum(a * b, axis=1))

            cols = [dot(v[0], e3), dot(v[1], e3), dot(v[2], e3), dot(v[0], e3w)]
            if with_s:
                d3 = dc[:, 2]
                cols += [
                    dot(v[4], e3) + d3 * dot(v[1], e3w),
                    dot(v[5], e3) + d3 * dot(v[2], e3w),
                    dot(v[3], e3w) + d3 * dot(v[0], e3w * w3[None, :]),
                ]
            g = g + 2.0 * jnp.stack(cols, axis=1)
        return None, g

    _, g = jax.lax.scan(body, None, xs)
    g = g.reshape(-1, g.shape[-1])[:n]
    g_s = g[:, 4:7] if with_s else None
    return g_s, g[:, 0], g[:, 1:4]


def dipole_reciprocal_energy(positions, charges, dipoles, cell, *, config: EwaldConfig):
    """Reciprocal-space Ewald energy of charges and point dipoles (Gaussian units),
    ``(2 pi / V) sum w |S|^2`` with ``S(k) = sum_j (q_j + i k . mu_j) e^{i k . r_j}``
    over ``config``'s k set (tin-foil boundary: the k = 0 term is left out)."""
    dtype = positions.dtype
    kspec = (config.k_max, config.k_columns, config.k_heights, config.chunk)
    inv = jnp.linalg.inv(cell)
    s = positions @ inv
    d = dipoles.astype(dtype) @ inv
    weights = tuple(
        _group_weights(cell, config.alpha, m1, m2, h, dtype) for m1, m2, h in config.k_groups
    )
    volume = jnp.abs(jnp.linalg.det(cell))
    return (2.0 * jnp.pi / volume) * _dipole_weighted_power(
        s, charges.astype(dtype), d, weights, kspec
    )


def dipole_self_energy(dipoles, alpha, sig):
    """Ewald self term of point dipoles, ``-(2 alpha^3 / (3 sqrt(pi))) sum |mu|^2``,
    plus the Gaussian dipole self energy where ``sig`` is given (Gaussian units)."""
    mu2 = blocked_sum(jnp.sum(dipoles * dipoles, axis=-1))
    e = -(2.0 * alpha**3 / (3.0 * _SQRT_PI)) * mu2
    if sig is not None:
        e = e + gaussian_dipole_self_energy(dipoles, sig)
    return e


def surface_energy(positions, charges, dipoles, cell):
    """Vacuum-sphere (epsilon' = 1) surface term ``2 pi |M|^2 / (3 V)`` (Gaussian
    units), ``M = sum q_i r_i + sum mu_i`` the cell dipole: added to the tin-foil
    energy it gives the sum over a growing sphere of images in vacuum (neutral
    cells). Not part of any kernel's energy."""
    m = jnp.sum(charges[:, None] * positions, axis=0)
    if dipoles is not None:
        m = m + jnp.sum(dipoles, axis=0)
    volume = jnp.abs(jnp.linalg.det(cell))
    return 2.0 * jnp.pi * jnp.sum(m * m) / (3.0 * volume)


def _multipole_ewald_energy(positions, charges, dipoles, cell, pairs, config, sigma, reciprocal):
    """Total Ewald-type energy with dipoles (Gaussian units); ``reciprocal`` is the
    function of (positions, charges, dipoles, cell) for the k-space part."""
    charges = charges.astype(positions.dtype)
    dipoles = dipoles.astype(positions.dtype)
    sig = _sigma_per_atom(sigma, charges)
    e = _real_space_multipole_energy(
        positions, charges, dipoles, cell, pairs, config.alpha, config.r_cut, sig
    )
    e = e + _self_and_background_energy(charges, cell, config.alpha, sigma)
    e = e + dipole_self_energy(dipoles, config.alpha, sig)
    return e + reciprocal(positions, charges, dipoles, cell)


def field_from_energy(energy, dipoles, sigma, charges, prefactor):
    """-d(energy - Gaussian dipole self energy)/d(dipoles) times prefactor."""
    sig = _sigma_per_atom(sigma, charges)

    def f(mu):
        e = energy(mu)
        return e if sig is None else e - gaussian_dipole_self_energy(mu, sig)

    return -prefactor * jax.grad(f)(dipoles)


# ---------------------------------------------------------------- totals


def _self_and_background(charges, cell, alpha, sigma):
    """Per-atom self and background potentials (Gaussian units)."""
    volume = jnp.abs(jnp.linalg.det(cell))
    total = jnp.sum(charges)
    phi = -2.0 * alpha / _SQRT_PI * charges - jnp.pi * total / (volume * alpha**2)
    sig = _sigma_per_atom(sigma, charges)
    if sig is not None:
        phi = phi + gaussian_self_potential(charges, sig)
        phi = phi + (2.0 * jnp.pi / volume) * (jnp.sum(charges * sig**2) + total * sig**2)
    return phi


def _self_and_background_energy(charges, cell, alpha, sigma):
    """1/2 sum_i q_i phi_self_i (Gaussian units), with the sums over atoms taken
    before the constants multiply them: in float32 the per-atom products carry the
    same rounding, which a sum over 10^5 atoms would add up coherently."""
    volume = jnp.abs(jnp.linalg.det(cell))
    total = jnp.sum(charges)
    q2 = blocked_sum(charges * charges)
    e = -alpha / _SQRT_PI * q2 - jnp.pi * total * total / (2.0 * volume * alpha**2)
    sig = _sigma_per_atom(sigma, charges)
    if sig is not None:
        e = e + 0.5 * blocked_sum(charges * gaussian_self_potential(charges, sig))
        e = e + (2.0 * jnp.pi / volume) * total * blocked_sum(charges * sig**2)
    return e


def ewald_matrix(positions, cell, pairs: Pairs, *, config: EwaldConfig, sigma=None, rows=None):
    """Dense Ewald matrix A (Gaussian units), ``E = 1/2 q^T A q`` (the Hessian of
    :func:`ewald_energy` in the charges), assembled directly: real-space pairs
    scattered, the reciprocal part ``(4 pi / V) Re(P W P^H)`` as one matrix product
    over the config's k set (P the (N, K) phase factors), the self and background
    terms in closed form. O(N^2 K) time, far less than N potential evaluations.

    Args:
      positions, cell, pairs, config, sigma: as :func:`ewald_energy`.
      rows: optional static (host) atom indices: the block ``A[rows][:, rows]``.
    """
    positions, cell = jnp.asarray(positions), jnp.asarray(cell)
    dtype = positions.dtype
    n = positions.shape[0]
    idx = np.arange(n) if rows is None else np.asarray(rows)
    m = len(idx)
    where = np.full(n, m, np.int64)  # atom -> row of the block (m: not in it)
    where[idx] = np.arange(m)
    where = jnp.asarray(where)
    ones = jnp.ones(n, dtype)
    sig = _sigma_per_atom(sigma, ones)
    # real space: every pair adds v to (i, j) and, in a half list, to (j, i)
    v = _real_space_values(positions, ones, cell, pairs, config.alpha, config.r_cut, sigma)
    a = jnp.zeros((m + 1, m + 1), dtype).at[where[pairs.i], where[pairs.j]].add(v)[:m, :m]
    a = a + a.T if pairs.half else a
    # reciprocal space over the half k set (weights carry the factor 2 for m3 > 0)
    e1, e2, e3 = _phases(positions[idx], cell, config.k_max, dtype)
    k1, k2, _ = config.k_max
    rec = jnp.zeros((m, m), dtype)
    for m1, m2, h in config.k_groups:
        w = _group_weights(cell, config.alpha, m1, m2, h, dtype).reshape(-1)  # (C (h+1),)
        p = (e1[:, m1 + k1] * e2[:, m2 + k2])[:, :, None] * e3[:, None, : h + 1]
        p = p.reshape(m, -1)
        pr, pi = jnp.real(p), jnp.imag(p)
        rec = rec + (pr * w[None, :]) @ pr.T + (pi * w[None, :]) @ pi.T
    volume = jnp.abs(jnp.linalg.det(cell))
    a = a + (4.0 * jnp.pi / volume) * rec
    # self and background: the Hessian of _self_and_background_energy
    diag = jnp.full((m,), -2.0 * config.alpha / _SQRT_PI, dtype)
    a = a - jnp.pi / (volume * config.alpha**2)
    if sig is not None:
        s_b = sig[idx]
        diag = diag + gaussian_self_potential(jnp.ones(m, dtype), s_b)
        a = a + (2.0 * jnp.pi / volume) * (s_b[:, None] ** 2 + s_b[None, :] ** 2)
    return a + jnp.diag(diag)


def ewald_potential(
    positions,
    charges,
    cell,
    pairs: Pairs,
    *,
    config: EwaldConfig,
    sigma=None,
    prefactor=COULOMB,
    dipoles=None,
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
      dipoles: optional (N, 3) atomic dipoles in e·Å (point, or Gaussian with the
        atom's sigma); then ``phi_i = dE/dq_i`` includes their potential.
    """
    if dipoles is not None:
        positions = jnp.asarray(positions)
        charges = _as_charges(charges, dipoles, positions).astype(positions.dtype)
        return jax.grad(ewald_energy, argnums=1)(
            positions,
            charges,
            cell,
            pairs,
            config=config,
            sigma=sigma,
            prefactor=prefactor,
            dipoles=dipoles,
        )
    positions, charges, cell = jnp.asarray(positions), jnp.asarray(charges), jnp.asarray(cell)
    phi = real_space_potential(
        positions, charges, cell, pairs, alpha=config.alpha, r_cut=config.r_cut, sigma=sigma
    )
    phi = phi + reciprocal_potential(
        positions,
        charges,
        cell,
        alpha=config.alpha,
        k_max=config.k_max,
        chunk=config.chunk,
        config=config,
    )
    phi = phi + _self_and_background(charges, cell, config.alpha, sigma)
    return prefactor * phi


def ewald_energy(
    positions,
    charges,
    cell,
    pairs: Pairs,
    *,
    config: EwaldConfig,
    sigma=None,
    prefactor=COULOMB,
    dipoles=None,
):
    r"""Ewald energy of one periodic structure (eV with ``prefactor=COULOMB``).

    Arguments as :func:`ewald_potential`. The reciprocal part is evaluated as
    (2 pi / V) sum w |S|^2 and the real part as sum over pairs of q_i q_j v(r_ij).

    With ``dipoles`` ((N, 3) e·Å; ``charges`` may then be None), the structure
    factor is ``S(k) = sum_j (q_j + i k . mu_j) e^{i k . r_j}``, the real space
    carries the charge-dipole and dipole-dipole terms, and the self energy adds
    ``-(2 alpha^3 / (3 sqrt(pi))) |mu|^2`` (+ ``|mu|^2 / (12 sqrt(pi) sigma^3)``
    for Gaussian dipoles). The boundary is tin-foil (conducting): no surface term
    ``2 pi |M|^2 / (3 V)`` (see :func:`surface_energy` for the vacuum one).
    """
    if dipoles is not None:
        positions, cell = jnp.asarray(positions), jnp.asarray(cell)
        charges = _as_charges(charges, dipoles, positions)

        def reciprocal(p, q, mu, c):
            return dipole_reciprocal_energy(p, q, mu, c, config=config)

        e = _multipole_ewald_energy(
            positions, charges, jnp.asarray(dipoles), cell, pairs, config, sigma, reciprocal
        )
        return prefactor * e
    positions, charges, cell = jnp.asarray(positions), jnp.asarray(charges), jnp.asarray(cell)
    e = real_space_energy(
        positions, charges, cell, pairs, alpha=config.alpha, r_cut=config.r_cut, sigma=sigma
    )
    e = e + _self_and_background_energy(charges, cell, config.alpha, sigma)
    e = e + reciprocal_energy(
        positions, charges, cell, alpha=config.alpha, k_max=config.k_max, config=config
    )
    return prefactor * e


def ewald_field(
    positions,
    charges,
    dipoles,
    cell,
    pairs: Pairs,
    *,
    config: EwaldConfig,
    sigma=None,
    prefactor=COULOMB,
):
    r"""(N, 3) field at each atom from all other charges, dipoles and images,
    ``-dE/dmu_i`` without the Gaussian dipole self energy (V/Å with
    ``prefactor=COULOMB``; tin-foil boundary). Linear in (charges, dipoles);
    ``charges`` may be None. Arguments as :func:`ewald_energy`."""
    positions, cell = jnp.asarray(positions), jnp.asarray(cell)
    charges = _as_charges(charges, dipoles, positions).astype(positions.dtype)
    dipoles = jnp.asarray(dipoles).astype(positions.dtype)

    def energy(mu):
        return ewald_energy(
            positions, charges, cell, pairs, config=config, sigma=sigma, prefactor=1.0, dipoles=mu
        )

    return field_from_energy(energy, dipoles, sigma, charges, prefactor)


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
