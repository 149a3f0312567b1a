r"""Host-side choice of Ewald parameters for a requested relative energy accuracy.

The error model (Gaussian units, Q2 = sum q_i^2):

* real space, Kolafa & Perram (1992), RMS over random charges:
  ``dE_real = Q2 sqrt(r_c / (2 V)) exp(-alpha^2 r_c^2) / (alpha r_c)^2``;
  Gaussian charges add the same term with alpha -> 1 / (2 sigma_max) (the
  ``erfc(r / sqrt(2 s_ij^2)) / r`` correction in real space);
* reciprocal space: the expected value of the omitted terms,
  ``(2 pi / V) Q2 sum_{m outside the box} exp(-k^2 / 4 alpha^2) / k^2``, summed over
  the actual integer box of the kernel (an integral bound
  ``Q2 alpha erfc(k_c / 2 alpha) / sqrt(pi)`` sizes it first).

``accuracy`` is relative to |E|, which a cheap host pass (numpy, accuracy 1e-3)
estimates first; the target is never tighter than ``1e-2 * Q2 / (2 a)``, a the
Wigner-Seitz radius, so a system whose energy nearly cancels gets an absolute error
of ``accuracy * 1e-2 * Q2 / (2 a)``. Among splittings alpha, the tuner takes the one
that minimises a cost model (pairs against k-points, not timings), so the choice is
deterministic.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.special import erfc, erfcinv

from jaxlr.cell import host_heights
from jaxlr.kernels.ewald import EwaldConfig

__all__ = [
    "tune_ewald",
    "tune_pme",
    "pme_error_estimate",
    "pme_mesh_error",
    "pme_structure_error",
    "REFERENCE_ORDER",
    "pme_cost",
    "ewald_cost",
    "fft_size",
    "ewald_error_estimate",
    "real_space_error",
    "reciprocal_box_error",
    "k_set",
    "energy_scale",
    "COST_PAIR",
    "COST_CANDIDATE",
    "COST_KPOINT",
]

#: Cost model, seconds on one CPU core pair (measured, N = 8000): a real-space pair
#: (energy + forces), a candidate pair examined by the jit cell-list builder, and one
#: atom x k-point product (structure factor and its gradient).
COST_PAIR = 8.5e-8
COST_CANDIDATE = 5e-9
COST_KPOINT = 1.4e-9


def energy_scale(charges, volume) -> float:
    """Natural energy scale Q2 / (2 a) (Gaussian units), a = (3 V / 4 pi N)^(1/3)."""
    q = np.asarray(charges, dtype=np.float64)
    n = max(len(q), 1)
    a = (3.0 * volume / (4.0 * math.pi * n)) ** (1.0 / 3.0)
    return float(np.sum(q * q)) / (2.0 * a)


def real_space_error(q2, volume, alpha, r_cut, sigma_max=None, m2=0.0) -> float:
    """Kolafa-Perram RMS real-space energy error (Gaussian units).

    With dipoles (``m2 = sum |mu|^2``), the same count over random, uncorrelated
    sites and orientations (as Wang & Holm, J. Chem. Phys. 115, 6351 (2001)) adds
    in quadrature ``dE^2 = (2 pi / V) int_{r_c} r^2 [m2^2 (2 B^2 + (B - C r^2)^2) / 9
    + 2 Q2 m2 r^2 B^2 / 3] dr`` with the exact screened kernels B, C of
    ``erfc(a r) / r`` (integrated numerically, so small cutoffs are not
    underestimated)."""

    def kp(a):
        x = math.exp(-((a * r_cut) ** 2))
        qq = q2 * math.sqrt(r_cut / (2.0 * volume)) * x / (a * r_cut) ** 2
        if not m2:
            return qq
        r = r_cut * np.geomspace(1.0, 1.0 + 8.0 / (a * r_cut), 400)
        b, c = _host_bc(r, a)
        f = (
            (2.0 * math.pi / volume)
            * r
            * r
            * (
                m2 * m2 * (2.0 * b * b + (b - c * r * r) ** 2) / 9.0
                + 2.0 * q2 * m2 * r * r * b * b / 3.0
            )
        )
        ms = float(np.sum(0.5 * (f[1:] + f[:-1]) * np.diff(r)))
        return math.sqrt(qq * qq + ms)

    err = kp(alpha)
    if sigma_max:
        err += kp(1.0 / (2.0 * sigma_max))
    return err


def _bisect_decreasing(err, lo, hi, target):
    """Smallest x in [lo, hi] (geometric bisection to 1e-6) with err(x) <= target,
    for err decreasing in x."""
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if err(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.0 + 1e-6:
            break
    return hi


def _rcut_for(q2, volume, alpha, target, sigma_max, m2=0.0):
    hi = 50.0 / alpha
    if sigma_max:
        hi = max(hi, 100.0 * sigma_max)
    return _bisect_decreasing(
        lambda r: real_space_error(q2, volume, alpha, r, sigma_max, m2), 1e-3 / alpha, hi, target
    )


def _k_box(cell, k_c):
    lengths = np.linalg.norm(cell, axis=1)
    return tuple(int(math.ceil(k_c * lengths[a] / (2.0 * math.pi) - 1e-9)) for a in range(3))


def k_set(cell, k_c, n_groups=6):
    """Trimmed half-space k set holding every k with |k| <= k_c at this cell.

    Column (m1, m2) keeps m3 = 0..h with h the largest m3 >= 0 inside the sphere; the
    plane m3 = 0 is kept symmetric under m -> -m. Columns are grouped by height so
    each group is one matrix product. Returns ``(k_max, k_columns, k_heights)``.
    """
    cell = np.asarray(cell, dtype=np.float64)
    recip = 2.0 * math.pi * np.linalg.inv(cell).T
    k1, k2, k3 = _k_box(cell, k_c)
    m1, m2 = np.meshgrid(np.arange(-k1, k1 + 1), np.arange(-k2, k2 + 1), indexing="ij")
    u = m1[..., None] * recip[0] + m2[..., None] * recip[1]
    b3 = recip[2]
    # |u + t b3|^2 <= k_c^2: t in [t-, t+]
    aa = b3 @ b3
    bb = 2.0 * np.einsum("ijk,k->ij", u, b3)
    cc = np.einsum("ijk,ijk->ij", u, u) - k_c**2
    disc = bb * bb - 4 * aa * cc
    t_hi = np.where(disc >= 0, (-bb + np.sqrt(np.maximum(disc, 0))) / (2 * aa), -1.0)
    hi = np.where(t_hi >= 0, np.floor(t_hi + 1e-12), -1).astype(int)
    hi = np.minimum(hi, k3)
    keep = (hi >= 0) | (hi[::-1, ::-1] >= 0)  # symmetric plane m3 = 0
    height = np.maximum(hi, 0)
    flat = np.flatnonzero(keep.ravel())
    heights = height.ravel()[flat]
    order = np.argsort(heights, kind="stable")
    flat, heights = flat[order], heights[order]
    # split into groups of similar height (equal numbers of columns)
    n_groups = max(1, min(n_groups, len(flat)))
    bounds = np.linspace(0, len(flat), n_groups + 1).astype(int)
    columns, group_h = [], []
    for lo, up in zip(bounds[:-1], bounds[1:]):
        if up > lo:
            columns.append(tuple(int(c) for c in np.sort(flat[lo:up])))
            group_h.append(int(heights[lo:up].max()))
    k_max = (k1, k2, int(max(group_h)))
    return k_max, tuple(columns), tuple(group_h)


def _set_mask(config, m1, m2, m3):
    """Is the full-space point m in the kernel's k set (or its mirror)?"""
    k1, k2, _ = config.k_max
    height = np.full((2 * k1 + 1, 2 * k2 + 1), -1)
    for c1, c2, h in config.k_groups:
        height[c1 + k1, c2 + k2] = h

    def lookup(a, b, c):
        inside = (np.abs(a) <= k1) & (np.abs(b) <= k2) & (c >= 0)
        h = height[np.clip(a + k1, 0, 2 * k1), np.clip(b + k2, 0, 2 * k2)]
        return inside & (c <= h)

    return lookup(m1, m2, m3) | lookup(-m1, -m2, -m3)


def _dipole_k_tail(m2, alpha, k_c):
    """(2 pi / V) (m2 / 3) sum_{|k| > k_c} exp(-k^2 / 4 alpha^2) as an integral."""
    x = k_c / (2.0 * alpha)
    return (
        (m2 / 3.0)
        * (8.0 * alpha**3 / math.pi)
        * (0.5 * x * math.exp(-x * x) + 0.25 * math.sqrt(math.pi) * erfc(x))
    )


def reciprocal_box_error(q2, cell, alpha, k_max, config=None, m2=0.0) -> float:
    """Expected reciprocal energy error of the kernel's k set (Gaussian units):
    ``(2 pi / V) sum_{m outside} exp(-k^2/4 alpha^2)/k^2 (q2 + k^2 m2 / 3)`` (the mean
    of |S(k)|^2 over random charges and randomly oriented dipoles); the box
    ``k_max``, or ``config``'s trimmed set."""
    cell = np.asarray(cell, dtype=np.float64)
    volume = abs(np.linalg.det(cell))
    recip = 2.0 * math.pi * np.linalg.inv(cell).T
    lengths = np.linalg.norm(cell, axis=1)
    if config is None:
        config = EwaldConfig(alpha, 1.0, k_max)
    kb = config.k_max
    # beyond the set, terms fall as exp(-k^2/4 alpha^2); sum a margin of 8 alpha
    reach = [
        int(kb[a] + math.ceil(8.0 * alpha * lengths[a] / (2.0 * math.pi)) + 1) for a in range(3)
    ]
    if np.prod([2 * r + 1 for r in reach]) > 8e6:
        # too many terms to sum: integral bound outside the inscribed sphere
        heights = host_heights(cell)
        k_in = min(2.0 * math.pi * (kb[a] + 1) / heights[a] for a in range(3))
        bound = q2 * alpha * erfc(k_in / (2.0 * alpha)) / math.sqrt(math.pi)
        return bound + (_dipole_k_tail(m2, alpha, k_in) if m2 else 0.0)
    total = 0.0
    m2 = np.arange(-reach[1], reach[1] + 1)[:, None]
    m3 = np.arange(-reach[2], reach[2] + 1)[None, :]
    for a in range(-reach[0], reach[0] + 1):
        k = a * recip[0] + m2[..., None] * recip[1] + m3[..., None] * recip[2]
        k2 = np.sum(k * k, axis=-1)
        outside = ~_set_mask(config, np.full_like(m2 + m3, a), m2 + 0 * m3, m3 + 0 * m2)
        outside &= k2 > 0
        k2 = np.where(outside, k2, 1.0)
        total += float(
            np.sum(
                np.where(outside, np.exp(-k2 / (4.0 * alpha**2)) / k2 * (q2 + k2 * m2 / 3.0), 0.0)
            )
        )
    return (2.0 * math.pi / volume) * total


def _dipole_m2(dipoles) -> float:
    if dipoles is None:
        return 0.0
    mu = np.asarray(dipoles, dtype=np.float64)
    return float(np.sum(mu * mu))


def _q2_m2(charges, dipoles):
    """(sum q^2, sum |mu|^2), with q2 = N when both vanish (a scale for the tuner)."""
    q = np.asarray(charges, dtype=np.float64)
    m2 = _dipole_m2(dipoles)
    q2 = float(np.sum(q * q))
    return (q2 or (0.0 if m2 else float(len(q)))), m2


def ewald_error_estimate(charges, cell, config: EwaldConfig, sigma=None, dipoles=None) -> float:
    """Estimated absolute energy error of ``config`` (Gaussian units; times prefactor)."""
    q = np.asarray(charges, dtype=np.float64)
    q2, m2 = float(np.sum(q * q)), _dipole_m2(dipoles)
    cell = np.asarray(cell, dtype=np.float64)
    volume = abs(np.linalg.det(cell))
    smax = None if sigma is None else float(np.max(sigma))
    return real_space_error(
        q2, volume, config.alpha, config.r_cut, smax, m2
    ) + reciprocal_box_error(q2, cell, config.alpha, config.k_max, config, m2)


def _cost(n_atoms, volume, heights, r_cut, n_kpoints):
    rho = n_atoms / volume
    pairs = n_atoms * (2.0 / 3.0) * math.pi * rho * r_cut**3
    # the jit builder: bins of at least r_cut, padded to about 1.6x their mean filling
    n_bins = [max(1, int(h // r_cut)) for h in heights]
    reach = [math.ceil(r_cut * n / h) for n, h in zip(n_bins, heights)]
    offsets = (np.prod([2 * d + 1 for d in reach]) + 1) / 2
    per_bin = 1.6 * n_atoms / np.prod(n_bins) + 4.0
    candidates = n_atoms * offsets * per_bin
    return COST_PAIR * pairs + COST_CANDIDATE * candidates + COST_KPOINT * n_atoms * n_kpoints


def _tune_absolute(charges, cell, target, sigma, chunk, alpha=None, dipoles=None):
    q = np.asarray(charges, dtype=np.float64)
    n = len(q)
    q2, m2 = _q2_m2(q, dipoles)
    volume = abs(np.linalg.det(cell))
    smax = None if sigma is None else float(np.max(sigma))
    heights = host_heights(cell)
    a0 = math.sqrt(math.pi) * (n / volume**2) ** (1.0 / 6.0)  # classic balance point
    a0 = max(a0, 2.0 / heights.min() / 10.0)
    best = None
    alphas = a0 * np.geomspace(0.25, 8.0, 41) if alpha is None else [alpha]
    for alpha in alphas:
        r_cut = _rcut_for(q2, volume, alpha, 0.5 * target, smax, m2)
        k_c = _k_cut_for(q2, m2, alpha, 0.5 * target)
        cfg = EwaldConfig(float(alpha), float(r_cut), *k_set(cell, k_c), chunk=chunk)
        cost = _cost(n, volume, heights, r_cut, cfg.n_kpoints)
        if best is None or cost < best[0]:
            best = (cost, cfg, k_c)
    _, cfg, k_c = best
    # the integral bound sized the set; verify on the actual k set and grow if needed
    for _ in range(40):
        err_k = reciprocal_box_error(q2, cell, cfg.alpha, cfg.k_max, cfg, m2)
        if err_k <= 0.5 * target:
            break
        k_c *= 1.05
        cfg = EwaldConfig(cfg.alpha, cfg.r_cut, *k_set(cell, k_c), chunk=chunk)
    err = real_space_error(q2, volume, cfg.alpha, cfg.r_cut, smax, m2) + err_k
    return dataclasses.replace(cfg, estimated_error=err)


def _k_cut_for(q2, m2, alpha, target):
    """k cutoff whose integral bound (charges, and dipoles) meets target."""
    x = erfcinv(min(target * math.sqrt(math.pi) / (max(q2, 1e-300) * alpha), 1.0)) if q2 else 0.0
    k_c = 2.0 * alpha * max(float(x), 1e-3)
    if m2:
        k_c = max(
            k_c,
            _bisect_decreasing(
                lambda k: _dipole_k_tail(m2, alpha, k), 1e-3 * alpha, 40 * alpha, target
            ),
        )
    return k_c


def _gaussian_screen(r, s2):
    """erfc(r / sqrt(2 s2)) / r, 0 for pairs of point charges (s2 = 0)."""
    gauss = s2 > 0
    return np.where(gauss, erfc(r / np.sqrt(2.0 * np.where(gauss, s2, 1.0))) / r, 0.0)


def real_space_tail(
    positions, charges, cell, alpha, r_cut, sigma=None, r_far=None, max_centers=1000
):
    """Real-space truncation error measured on the structure (Gaussian units).

    ``1/2 sum_i q_i sum_j q_j v(r_ij)`` over pairs with ``r_cut <= r < r_far``, over at
    most ``max_centers`` atoms i (a fixed sample, rescaled): unlike the random-charge
    estimate it sees the coherent tails of crystals."""
    from jaxlr.neighbors import _host_chunks

    q = np.asarray(charges, dtype=np.float64)
    n = len(q)
    if r_far is None:
        r_far = r_cut + 3.0 / alpha
        if sigma is not None:
            r_far = max(r_far, r_cut + 6.0 * float(np.max(sigma)))
    centers = np.arange(n)
    if n > max_centers:
        centers = np.sort(np.random.default_rng(0).choice(n, max_centers, replace=False))
    sig = None if sigma is None else np.broadcast_to(np.asarray(sigma, np.float64), q.shape)
    total = 0.0
    for i, j, S in _host_chunks(positions, r_far, cell, (True,) * 3, False, centers=centers):
        r = np.linalg.norm(positions[j] - positions[i] + S @ cell, axis=1)
        far = r >= r_cut
        i, j, r = i[far], j[far], r[far]
        v = erfc(alpha * r) / r
        if sig is not None:
            v -= _gaussian_screen(r, sig[i] ** 2 + sig[j] ** 2)
        total += 0.5 * float(np.sum(q[i] * q[j] * v))
    return abs(total) * n / len(centers)


def _host_bc(r, x):
    """(B, C) of erfc(x r) / r (numpy, r > 0)."""
    g = 2.0 * x * r / math.sqrt(math.pi) * np.exp(-((x * r) ** 2))
    e = erfc(x * r)
    return (e + g) / r**3, (3.0 * e + g * (3.0 + 2.0 * (x * r) ** 2)) / r**5


def _host_ewald_energy(positions, charges, cell, config, sigma, dipoles=None):
    """Plain numpy Ewald energy (Gaussian units) used for the crude pre-pass."""
    from jaxlr.neighbors import _host_pairs

    q = np.asarray(charges, dtype=np.float64)
    n = len(q)
    volume = abs(np.linalg.det(cell))
    i, j, S = _host_pairs(positions, config.r_cut, cell, (True,) * 3, True)
    r = np.linalg.norm(positions[j] - positions[i] + S @ cell, axis=1)
    apart = r > 0.0  # coincident (padding) atoms carry nothing
    i, j, S, r = i[apart], j[apart], S[apart], r[apart]
    v = erfc(config.alpha * r) / r
    sig = None if sigma is None else np.broadcast_to(np.asarray(sigma, np.float64), q.shape)
    if sig is not None:
        v -= _gaussian_screen(r, sig[i] ** 2 + sig[j] ** 2)
    e = float(np.sum(q[i] * q[j] * v))
    mu = None if dipoles is None else np.asarray(dipoles, np.float64)
    if mu is not None:
        rv = positions[j] - positions[i] + S @ cell
        b, c = _host_bc(r, config.alpha)
        if sig is not None:
            gauss = sig[i] ** 2 + sig[j] ** 2 > 0
            w = np.sqrt(2.0 * np.where(gauss, sig[i] ** 2 + sig[j] ** 2, 1.0))
            bg, cg = _host_bc(r, 1.0 / w)
            b, c = b - np.where(gauss, bg, 0.0), c - np.where(gauss, cg, 0.0)
        ri, rj = np.sum(mu[i] * rv, 1), np.sum(mu[j] * rv, 1)
        e += float(np.sum(b * (q[j] * ri - q[i] * rj + np.sum(mu[i] * mu[j], 1)) - c * ri * rj))
        e -= 2.0 * config.alpha**3 / (3.0 * math.sqrt(math.pi)) * float(np.sum(mu * mu))
        if sig is not None:
            gs = sig > 0
            e += float(np.sum(np.sum(mu[gs] ** 2, 1) / (12 * math.sqrt(math.pi) * sig[gs] ** 3)))
    s = positions @ np.linalg.inv(cell)
    km = config.k_max
    recip = 2.0 * math.pi * np.linalg.inv(cell).T
    m1, m2, m3 = np.arange(-km[0], km[0] + 1), np.arange(-km[1], km[1] + 1), np.arange(0, km[2] + 1)
    d = None if mu is None else mu @ np.linalg.inv(cell)
    acc = np.zeros((len(m1) * len(m2), len(m3)), complex)
    mm1 = np.repeat(m1, len(m2))[:, None]
    mm2 = np.tile(m2, len(m1))[:, None]
    for c in range(0, n, 1024):
        sl = slice(c, c + 1024)
        e1 = np.exp(2j * np.pi * s[sl, 0, None] * m1)
        e2 = np.exp(2j * np.pi * s[sl, 1, None] * m2)
        e3 = np.exp(2j * np.pi * s[sl, 2, None] * m3)
        e12 = (e1[:, :, None] * e2[:, None, :]).reshape(len(e1), -1)
        acc += (e12 * q[sl, None]).T @ e3
        if d is not None:
            acc += (
                2j
                * np.pi
                * (
                    mm1 * ((e12 * d[sl, 0, None]).T @ e3)
                    + mm2 * ((e12 * d[sl, 1, None]).T @ e3)
                    + m3[None, :] * ((e12 * d[sl, 2, None]).T @ e3)
                )
            )
    k = (
        m1[:, None, None, None] * recip[0]
        + m2[None, :, None, None] * recip[1]
        + m3[None, None, :, None] * recip[2]
    )
    k2 = np.sum(k * k, -1)
    zero = k2 == 0
    w = np.where(zero, 0.0, np.exp(-k2 / (4 * config.alpha**2)) / np.where(zero, 1.0, k2))
    w *= np.where(m3 > 0, 2.0, 1.0)
    e += 2.0 * math.pi / volume * float(np.sum(w.reshape(acc.shape) * np.abs(acc) ** 2))
    total = q.sum()
    e += -config.alpha / math.sqrt(math.pi) * float(np.sum(q * q)) - math.pi * total**2 / (
        2 * volume * config.alpha**2
    )
    if sig is not None:
        gauss = sig > 0
        e += float(np.sum(q[gauss] ** 2 / (2 * math.sqrt(math.pi) * sig[gauss])))
        e += 2 * math.pi * total / volume * float(np.sum(q * sig**2))
    return e


def tune_ewald(
    positions,
    charges,
    cell,
    *,
    accuracy=1e-6,
    sigma=None,
    chunk=256,
    alpha=None,
    r_cut=None,
    k_max=None,
    dipoles=None,
) -> EwaldConfig:
    """Choose Ewald parameters for a requested relative energy accuracy (host, numpy).

    Args:
      positions: (N, 3) example positions in Å.
      charges: (N,) example charges in e (they set the error scale).
      cell: (3, 3) lattice vectors as rows in Å.
      accuracy: requested relative energy error (see the module docstring).
      sigma: Gaussian widths in Å (scalar or (N,)), or None.
      dipoles: optional (N, 3) example dipoles in e·Å: the error model then covers
        the charge-dipole and dipole-dipole terms (Wang & Holm style), and the
        relative accuracy refers to the dipolar energy.
      alpha, r_cut, k_max: explicit parameters; given all three, no tuning is done,
        and the returned config carries the error estimate. Given alpha alone, the
        cutoffs are tuned for it.

    Returns:
      A frozen, hashable :class:`EwaldConfig` with ``estimated_error`` in Gaussian
      units.

    Raises:
      ValueError: accuracy outside (0, 1).
    """
    cell = np.asarray(cell, dtype=np.float64)
    q = np.asarray(charges, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64)
    if alpha is not None and r_cut is not None and k_max is not None:
        cfg = EwaldConfig(float(alpha), float(r_cut), tuple(k_max), chunk=chunk)
        err = ewald_error_estimate(q, cell, cfg, sigma, dipoles)
        return EwaldConfig(cfg.alpha, cfg.r_cut, cfg.k_max, chunk=chunk, estimated_error=err)
    if not (0.0 < accuracy < 1.0):
        raise ValueError(f"accuracy must be in (0, 1), got {accuracy}")
    volume = abs(np.linalg.det(cell))
    scale = _scale(q, volume, dipoles)
    crude = _tune_absolute(q, cell, 1e-3 * scale, sigma, chunk, dipoles=dipoles)
    e_crude = _host_ewald_energy(positions, q, cell, crude, sigma, dipoles)
    magnitude = max(abs(e_crude) - 3.0 * crude.estimated_error, 1e-2 * scale)
    target = 0.5 * accuracy * magnitude
    cfg = _tune_absolute(q, cell, target, sigma, chunk, alpha, dipoles)
    if r_cut is None:
        # crystals: the tail beyond r_cut is coherent, not random; measure it and grow
        # r_cut until it fits the real-space half of the budget
        r = cfg.r_cut
        for _ in range(50):
            tail = real_space_tail(positions, q, cell, cfg.alpha, r, sigma)
            if tail <= 0.5 * target:
                break
            r *= 1.05
        if r != cfg.r_cut:
            q2, m2 = _q2_m2(q, dipoles)
            smax = None if sigma is None else float(np.max(sigma))
            err = (
                cfg.estimated_error
                - real_space_error(q2, volume, cfg.alpha, cfg.r_cut, smax, m2)
                + real_space_error(0.0, volume, cfg.alpha, r, smax, m2)
                + tail
            )
            cfg = dataclasses.replace(cfg, r_cut=r, estimated_error=err)
    if k_max is not None:
        cfg = EwaldConfig(cfg.alpha, cfg.r_cut, tuple(k_max), chunk=chunk)
    if r_cut is not None:
        cfg = dataclasses.replace(cfg, r_cut=float(r_cut))
    if r_cut is not None or k_max is not None:
        cfg = dataclasses.replace(
            cfg, estimated_error=ewald_error_estimate(q, cell, cfg, sigma, dipoles)
        )
    return cfg


def _scale(q, volume, dipoles):
    """Energy scale: Q2 / (2 a) plus M2 / a^3 for dipoles (Gaussian units)."""
    scale = energy_scale(q, volume)
    m2 = _dipole_m2(dipoles)
    if m2:
        a = (3.0 * volume / (4.0 * math.pi * max(len(q), 1))) ** (1.0 / 3.0)
        scale += m2 / a**3
    return scale or energy_scale(np.ones_like(q), volume)


# ---------------------------------------------------------------- particle-mesh Ewald

#: PME cost model, seconds (measured, N = 8000 and 32000, energy + forces): one B-spline
#: weight spread and gathered back (per atom, order^3 of them) and one FFT mesh
#: point times log2 of the mesh size (forward and backward transforms).
COST_SPREAD = 7e-9
COST_FFT = 1e-9

PME_ORDERS = (4, 5, 6, 7, 8)


def fft_size(n: int, minimum: int = 1) -> int:
    """Smallest integer >= max(n, minimum) whose prime factors are 2, 3, 5 and 7."""
    k = max(int(n), int(minimum), 1)
    while True:
        m = k
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        if m == 1:
            return k
        k += 1


def pme_mesh_error(q2, cell, alpha, mesh, order, influence="spme", self_correction=True, m2=0.0):
    """Estimated RMS error (Gaussian units) of the PME reciprocal energy on ``mesh``.

    For charges placed independently and uniformly, the mesh pair interaction differs
    from Ewald's by ``dpsi(r, r')``; Parseval over the aliases gives

        <dpsi^2> = V^-2 sum_k R(k)^2 [c^2 a^2 - 2 c u0^2 + 1],

    ``R = 4 pi e^{-k^2/4a^2}/k^2`` over the mesh's Brillouin zone, with the per-axis
    alias sums of :func:`jaxlr.kernels.pme._axis_factors`. The energy error is
    ``Q2 sqrt(<dpsi^2> / 2)`` from pairs plus, without the self correction, the mean
    self-interaction bias ``(Q2 / 2V) sum_k R (c a - 1)``. The mesh's k truncation
    (terms beyond the zone) adds the integral bound of Ewald's truncation.

    Dipoles (``m2 = sum |mu|^2``, random orientations): each alias n of a pair term
    carries ``(mu . k_n)``; averaging gives ``A2 = sum_n W_n^2 k_n^2`` in place of
    ``a``, so that ``<dpsi_dd^2> = V^-2 sum R^2 [c^2 A2^2 - 2 c u0^2 k^4 + k^4] / 9``
    and ``<dpsi_qd^2> = V^-2 sum R^2 [c^2 a A2 - 2 c u0^2 k^2 + k^2] / 3``; the
    errors ``m2 sqrt(<dd> / 2)`` and ``sqrt(Q2 m2 <qd>)`` add in quadrature (the
    dipoles' mean self-interaction is always removed by the kernel)."""
    from jaxlr.kernels.pme import _alias_moments, _axis_factors, _influence_factor

    cell = np.asarray(cell, dtype=np.float64)
    volume = abs(np.linalg.det(cell))
    recip = 2.0 * math.pi * np.linalg.inv(cell).T
    lengths = np.linalg.norm(cell, axis=1)
    # R^2 is negligible beyond |k| = 9 alpha: only that part of the zone is summed;
    # the summand is smooth on the scale alpha, so a large box is sampled with a
    # stride (at most ~41 points per axis, each standing for stride^3 terms)
    reach = [
        min(mesh[a] // 2, int(math.ceil(9.0 * alpha * lengths[a] / (2.0 * math.pi))))
        for a in range(3)
    ]
    stride = [max(1, r // 20) for r in reach]
    tabs = []
    for a in range(3):
        u0, aa, b2 = _axis_factors(mesh[a], order)
        n = np.fft.fftfreq(mesh[a], 1.0 / mesh[a]).astype(int)
        sel = (np.abs(n) <= reach[a]) & (n % stride[a] == 0)
        c = _influence_factor(u0, aa, b2, influence)
        mom = _alias_moments(mesh[a], order, 30) if m2 else [aa, aa, aa]
        tabs.append((n[sel], u0[sel], aa[sel], c[sel], mom[1][sel], mom[2][sel]))

    def outer(i):
        return tabs[0][i][:, None, None] * tabs[1][i][None, :, None] * tabs[2][i][None, None, :]

    n1, n2, n3 = (t[0].astype(np.float64) for t in tabs)
    k = (
        n1[:, None, None, None] * recip[0]
        + n2[None, :, None, None] * recip[1]
        + n3[None, None, :, None] * recip[2]
    )
    k2 = np.sum(k * k, axis=-1)
    zero = k2 == 0
    k2 = np.where(zero, 1.0, k2)
    r = np.where(zero, 0.0, 4.0 * math.pi * np.exp(-k2 / (4.0 * alpha**2)) / k2)
    u0, aa, c = outer(1), outer(2), outer(3)
    weight = float(np.prod(stride))
    total_ms = weight * float(np.sum(r * r * (c * c * aa * aa - 2.0 * c * u0 * u0 + 1.0)))
    total_bias = weight * float(np.sum(r * (c * aa - 1.0)))
    err = q2 * math.sqrt(max(total_ms, 0.0) / 2.0) / volume
    if m2:
        g = recip @ recip.T

        def view(v, axis):
            return v.reshape([-1 if i == axis else 1 for i in range(3)])

        a2 = 0.0
        for p in range(3):
            for q in range(3):
                prod = 1.0
                for axis in range(3):
                    power = (axis == p) + (axis == q)
                    prod = prod * view(tabs[axis][(2, 4, 5)[power]], axis)
                a2 = a2 + g[p, q] * prod
        ms_dd = weight * float(
            np.sum(r * r * (c * c * a2 * a2 - 2.0 * c * u0 * u0 * k2 * k2 + k2 * k2)) / 9.0
        )
        ms_qd = weight * float(
            np.sum(r * r * (c * c * aa * a2 - 2.0 * c * u0 * u0 * k2 + k2)) / 3.0
        )
        dd = m2 * math.sqrt(max(ms_dd, 0.0) / 2.0) / volume
        qd = math.sqrt(q2 * m2 * max(ms_qd, 0.0)) / volume
        err = math.sqrt(err * err + dd * dd + qd * qd)
    if not self_correction:
        err += abs(q2 * total_bias / (2.0 * volume))
    # outside the zone: the integral bound beyond its inscribed sphere
    k_in = min(2.0 * math.pi * (mesh[a] // 2) / host_heights(cell)[a] for a in range(3))
    err += q2 * alpha * erfc(k_in / (2.0 * alpha)) / math.sqrt(math.pi)
    return err + (_dipole_k_tail(m2, alpha, k_in) if m2 else 0.0)


def _bspline_weights_host(frac, order):
    """(n, order) weights M_p(frac + j), numpy float64 (as
    :func:`jaxlr.kernels.pme.bspline_weights`)."""
    w = [frac, 1.0 - frac]
    for n in range(3, order + 1):
        new = []
        for j in range(n):
            x = frac + j
            left = w[j] if j < n - 1 else 0.0
            right = w[j - 1] if j >= 1 else 0.0
            new.append((x * left + (n - x) * right) / (n - 1))
        w = new
    return np.stack(w, axis=-1)


def _spread_host(s, charges, mesh, order, chunk=2048):
    """The kernel's charge mesh (:func:`jaxlr.kernels.pme.spread_charges`) in numpy."""
    p = order
    mesh = np.asarray(mesh, dtype=np.int64)
    grid = np.zeros(int(np.prod(mesh)))
    t = np.arange(p)
    for c in range(0, len(charges), chunk):
        u = s[c : c + chunk] * mesh
        base = np.floor(u).astype(np.int64)
        w = _bspline_weights_host(u - base, p)[:, :, ::-1]
        idx = (base[:, :, None] - (p - 1) + t) % mesh[None, :, None]
        flat = (idx[:, 0, :, None, None] * mesh[1] + idx[:, 1, None, :, None]) * mesh[2] + idx[
            :, 2, None, None, :
        ]
        weight = (
            charges[c : c + chunk, None, None, None]
            * w[:, 0, :, None, None]
            * w[:, 1, None, :, None]
            * w[:, 2, None, None, :]
        )
        grid += np.bincount(flat.ravel(), weight.ravel(), minlength=grid.size)
    return grid.reshape(tuple(mesh))


def _host_mesh_power(positions, charges, cell, mesh, order):
    """|FFT(Q)|^2 of the kernel's charge mesh on the rfft half mesh (numpy)."""
    s = np.asarray(positions, dtype=np.float64) @ np.linalg.inv(cell)
    q_hat = np.fft.rfftn(_spread_host(s - np.floor(s), charges, mesh, order))
    return q_hat.real**2 + q_hat.imag**2


def _host_pme_reciprocal(power, q2, cell, alpha, mesh, order, influence):
    """:func:`jaxlr.kernels.pme.pme_reciprocal_energy` (self-corrected) from the mesh
    power, numpy float64."""
    from jaxlr.kernels.pme import _mesh_tables

    c, bias = _mesh_tables(mesh, order, influence)
    half = mesh[2] // 2 + 1
    recip = 2.0 * math.pi * np.linalg.inv(cell).T
    g = recip @ recip.T
    m1 = np.fft.fftfreq(mesh[0], 1.0 / mesh[0])[:, None, None]
    m2 = np.fft.fftfreq(mesh[1], 1.0 / mesh[1])[None, :, None]
    m3 = np.arange(half, dtype=np.float64)[None, None, :]
    k2 = (
        g[0, 0] * m1 * m1
        + g[1, 1] * m2 * m2
        + g[2, 2] * m3 * m3
        + 2.0 * (g[0, 1] * m1 * m2 + g[0, 2] * m1 * m3 + g[1, 2] * m2 * m3)
    )
    k2[0, 0, 0] = 1.0
    r = np.exp(-k2 / (4.0 * alpha**2)) / k2
    r[0, 0, 0] = 0.0
    e = float(np.sum(r * (c * power - q2 * bias)))
    return 2.0 * math.pi / abs(np.linalg.det(cell)) * e


#: Spline order of the reference that :func:`pme_structure_error` measures against.
REFERENCE_ORDER = 12


class _StructureCheck:
    """Measures :func:`pme_structure_error` for many configs of one structure,
    keeping the reference mesh power (it does not depend on alpha) between calls."""

    def __init__(self, positions, charges, cell):
        self.positions = np.asarray(positions, dtype=np.float64)
        self.q = np.asarray(charges, dtype=np.float64)
        self.q2 = float(np.sum(self.q * self.q))
        self.cell = np.asarray(cell, dtype=np.float64)
        self.ref_mesh, self.ref_power = None, None

    def __call__(self, alpha, mesh, order, influence):
        mesh = tuple(int(k) for k in mesh)
        # the reference: order 12 on this mesh (1.5x finer for orders above 8)
        need = mesh if order <= 8 else tuple(fft_size(math.ceil(1.5 * k)) for k in mesh)
        if self.ref_mesh is None or any(n > r for n, r in zip(need, self.ref_mesh)):
            self.ref_mesh = need if self.ref_mesh is None else tuple(map(max, need, self.ref_mesh))
            self.ref_power = _host_mesh_power(
                self.positions, self.q, self.cell, self.ref_mesh, REFERENCE_ORDER
            )
        ref = _host_pme_reciprocal(
            self.ref_power, self.q2, self.cell, alpha, self.ref_mesh, REFERENCE_ORDER, "spme"
        )
        power = _host_mesh_power(self.positions, self.q, self.cell, mesh, order)
        e = _host_pme_reciprocal(power, self.q2, self.cell, alpha, mesh, order, influence)
        return e - ref


def pme_structure_error(positions, charges, cell, alpha, mesh, order, influence="spme"):
    r"""Signed reciprocal energy error of PME on this structure (Gaussian units),
    measured: the kernel's reciprocal energy (numpy, float64) minus that of an
    order-12 reference on the same mesh (1.5x finer for orders above 8).

    The random-charge estimate :func:`pme_mesh_error` averages over positions; a
    crystal does not. Its Bragg peaks carry ``|S(k)|^2 ~ N^2``, and the influence
    function's bias at them (``c u0^2 - 1`` of the principal alias, plus the aliases
    themselves when the mesh is commensurate with the lattice) adds up coherently: a
    relative error that does not shrink with N and that the random-charge estimate
    misses by 30-80x (rattled rock salt, 4k-32k atoms, order 4-6). The reference's
    own error is smaller by about ``(k h / (2 pi - k h))^(12 - order)`` at each k."""
    check = _StructureCheck(positions, charges, cell)
    return check(alpha, mesh, order, influence)


def pme_error_estimate(charges, cell, config, sigma=None, dipoles=None, positions=None) -> float:
    """Estimated absolute energy error of a :class:`~jaxlr.kernels.PMEConfig`
    (Gaussian units): Kolafa-Perram real space plus the mesh error, the random-charge
    :func:`pme_mesh_error` (charges and dipoles) or, given ``positions``, the larger
    of it and this structure's :func:`pme_structure_error` (the coherent charge error
    of crystals)."""
    q = np.asarray(charges, dtype=np.float64)
    q2, m2 = _q2_m2(charges, dipoles)
    cell = np.asarray(cell, dtype=np.float64)
    volume = abs(np.linalg.det(cell))
    smax = None if sigma is None else float(np.max(sigma))
    err = pme_mesh_error(
        q2,
        cell,
        config.alpha,
        config.mesh,
        config.order,
        config.influence,
        config.self_correction,
        m2,
    )
    if positions is not None and np.any(q):
        coherent = pme_structure_error(
            positions, q, cell, config.alpha, config.mesh, config.order, config.influence
        )
        err = max(err, abs(coherent))
    if config.r_cut is not None:
        err += real_space_error(q2, volume, config.alpha, config.r_cut, smax, m2)
    return err


def _mesh_for_spacing(lengths, h, order):
    return tuple(fft_size(math.ceil(length / h), max(order, 8)) for length in lengths)


def _pme_cost(n_atoms, volume, heights, r_cut, mesh, order):
    m = float(np.prod(mesh))
    mesh_cost = COST_SPREAD * n_atoms * order**3 + COST_FFT * m * math.log2(max(m, 2.0))
    return _cost(n_atoms, volume, heights, r_cut, 0) + mesh_cost


#: At most this many candidates are measured on the structure
#: (:func:`pme_structure_error`) before the tuner settles on the cheapest one left.
PME_MAX_MEASURED = 24


def _tune_pme_absolute(
    charges, cell, target, sigma, orders, alpha=None, influences=None, dipoles=None, positions=None
):
    """Cheapest PME config (cost model) whose mesh error fits half of ``target``.

    Every (alpha, order) candidate is first sized by the random-charge estimate
    :func:`pme_mesh_error`; given ``positions``, candidates are then checked in order
    of cost against :func:`pme_structure_error` on the structure (the coherent error
    of crystals), and one that fails gets a finer mesh and goes back in line."""
    import heapq

    from jaxlr.kernels.pme import PMEConfig

    q = np.asarray(charges, dtype=np.float64)
    n = len(q)
    q2, m2 = _q2_m2(q, dipoles)
    volume = abs(np.linalg.det(cell))
    smax = None if sigma is None else float(np.max(sigma))
    heights = host_heights(cell)
    lengths = np.linalg.norm(cell, axis=1)
    rho = n / volume
    # real-space cutoffs from ~2.5 to ~12 neighbour shells; alpha follows
    alphas = (
        [alpha]
        if alpha is not None
        else [
            _alpha_for_rcut(q2, volume, rc, 0.5 * target, smax, m2)
            for rc in rho ** (-1.0 / 3.0) * np.geomspace(1.6, 12.0, 12)
        ]
    )

    def fit(a, order, influence, h):
        """Walk the spacing down from h until the random-charge estimate fits (with
        dipoles not below 1 / (8 alpha): spacings that fine resolve k far past
        exp(-k^2/4a^2) ~ 1e-16, so an estimate still above target there is its
        rounding floor)."""
        h_min = 1.0 / (8.0 * a) if m2 else 0.0  # the floor binds dipoles only
        mesh = _mesh_for_spacing(lengths, h, order)
        err = pme_mesh_error(q2, cell, a, mesh, order, influence, m2=m2)
        for _ in range(30):
            if err <= 0.5 * target:
                return h, mesh, err
            if h < h_min:
                return None
            h *= 0.95
            mesh = _mesh_for_spacing(lengths, h, order)
            err = pme_mesh_error(q2, cell, a, mesh, order, influence, m2=m2)
        return None

    line = []  # (cost, tie, h, mesh, estimate, (alpha, r_cut, order, influence))
    for a in alphas:
        if a is None:
            continue
        r_cut = _rcut_for(q2, volume, a, 0.5 * target, smax, m2)
        for order in orders:
            for influence in influences or (("spme",) if order % 2 == 0 else ("p3m",)):
                # error ~ h^order: two secant steps on log h, then walk up the sizes
                h = 1.0 / a
                # with dipoles, spacings below 1 / (8 alpha) resolve k far past
                # exp(-k^2/4a^2) ~ 1e-16: an estimate still above target there is the
                # rounding floor of its k^4-weighted alias sums (charges: no floor)
                h_min = 1.0 / (8.0 * a) if m2 else 0.0
                for _ in range(3):
                    mesh = _mesh_for_spacing(lengths, h, order)
                    err = pme_mesh_error(q2, cell, a, mesh, order, influence, m2=m2)
                    h_used = max(lengths[i] / mesh[i] for i in range(3))
                    h = h_used * (0.45 * target / max(err, 1e-300)) ** (1.0 / order)
                    h = max(h, h_min)
                found = fit(a, order, influence, h)
                if found is None:
                    continue
                h, mesh, err = found
                cost = _pme_cost(n, volume, heights, r_cut, mesh, order)
                line.append(
                    (cost, len(line), h, mesh, err, (float(a), float(r_cut), order, influence))
                )
    if not line:
        raise ValueError("no PME mesh reaches the requested accuracy; use method='ewald'")
    heapq.heapify(line)
    if positions is not None and not np.any(q):
        positions = None  # dipoles only: no coherent charge error to measure
    check = None if positions is None else _StructureCheck(positions, q, cell)
    measured = 0
    while True:
        cost, tie, h, mesh, err, (a, r_cut, order, influence) = heapq.heappop(line)
        if positions is None:
            break
        structure = abs(check(a, mesh, order, influence))
        measured += 1
        if structure <= 0.5 * target:
            err = max(err, structure)
            break
        # error ~ h^order: aim a little below the target, at least 5% finer
        h_used = max(lengths[i] / mesh[i] for i in range(3))
        found = fit(
            a, order, influence, min(0.95 * h, h_used * (0.4 * target / structure) ** (1.0 / order))
        )
        if found is None:
            if not line:
                raise ValueError("no PME mesh reaches the requested accuracy; use method='ewald'")
            continue
        h, mesh, err = found
        cost = _pme_cost(n, volume, heights, r_cut, mesh, order)
        if measured >= PME_MAX_MEASURED:
            line = []  # settle on this candidate: refine it until it passes
        heapq.heappush(line, (cost, tie, h, mesh, err, (a, r_cut, order, influence)))
    total = err + real_space_error(q2, volume, a, r_cut, smax, m2)
    cfg = PMEConfig(a, mesh, order, r_cut, influence, estimated_error=total)
    return cfg, cost


def _alpha_for_rcut(q2, volume, r_cut, target, sigma_max, m2=0.0):
    """alpha at which the Kolafa-Perram real-space error at r_cut meets target."""

    def err(alpha):
        return real_space_error(q2, volume, alpha, r_cut, sigma_max, m2)

    if err(50.0 / r_cut) > target:
        return None
    return _bisect_decreasing(err, 0.5 / r_cut, 50.0 / r_cut, target)


def _relative_target(positions, q, cell, accuracy, sigma, dipoles=None):
    """Absolute target (Gaussian units) for a relative ``accuracy``: a cheap host
    Ewald pass estimates |E|, floored at 1e-2 of the natural energy scale."""
    volume = abs(np.linalg.det(cell))
    scale = _scale(q, volume, dipoles)
    crude = _tune_absolute(q, cell, 1e-2 * scale, sigma, 256, dipoles=dipoles)
    e_crude = _host_ewald_energy(positions, q, cell, crude, sigma, dipoles)
    magnitude = max(abs(e_crude) - 3.0 * crude.estimated_error, 1e-2 * scale)
    return 0.5 * accuracy * magnitude


def _grow_rcut_for_tail(positions, q, cell, alpha, r_cut, target, sigma):
    """Crystals: the tail beyond r_cut is coherent, not random; measure it and grow
    r_cut until it fits ``target``. Returns (r_cut, tail or None)."""
    r, tail = r_cut, None
    for _ in range(50):
        tail = real_space_tail(positions, q, cell, alpha, r, sigma)
        if tail <= target:
            break
        r *= 1.05
    return r, (None if r == r_cut else tail)


def tune_pme(
    positions,
    charges,
    cell,
    *,
    accuracy=1e-6,
    sigma=None,
    orders=PME_ORDERS,
    alpha=None,
    r_cut=None,
    mesh=None,
    order=None,
    influence=None,
    dipoles=None,
):
    """Choose PME parameters for a requested relative energy accuracy (host, numpy).

    Over a grid of real-space cutoffs (alpha from the Kolafa-Perram bound), spline
    orders and per-axis mesh sizes (products of 2, 3, 5, 7, each axis sized to its
    lattice-vector length), takes the cheapest by a cost model (pairs, spline
    weights, FFT points; not timings, so the choice is deterministic) whose estimated
    error (:func:`pme_error_estimate`) meets the target. Even orders use SPME's
    influence function, odd orders the optimal (P3M) one, which avoids SPME's zero
    at the Nyquist frequency. Both subtract the mean self-interaction. Candidates
    are then checked, cheapest first, on the example structure
    (:func:`pme_structure_error`: crystals make the mesh error coherent); one over
    the target gets a finer mesh and goes back in line.

    Args:
      positions, charges, cell, accuracy, sigma, dipoles: as :func:`tune_ewald`.
      orders: spline orders to consider.
      alpha, r_cut, mesh, order, influence: explicit parameters. Given alpha, r_cut,
        mesh and order, no tuning is done; the config carries the error estimate.

    Returns:
      A frozen, hashable :class:`~jaxlr.kernels.PMEConfig` with ``estimated_error``
      in Gaussian units.
    """
    from jaxlr.kernels.pme import PMEConfig

    cell = np.asarray(cell, dtype=np.float64)
    q = np.asarray(charges, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64)
    if not (0.0 < accuracy < 1.0):
        raise ValueError(f"accuracy must be in (0, 1), got {accuracy}")
    for o in orders if order is None else (order,):
        if not 3 <= int(o) <= 12:
            raise ValueError(f"order must be in 3..12, got {o}")
    if alpha is not None and r_cut is not None and mesh is not None and order is not None:
        cfg = PMEConfig(float(alpha), tuple(mesh), int(order), float(r_cut), influence or "spme")
        estimate = pme_error_estimate(q, cell, cfg, sigma, dipoles, positions)
        return dataclasses.replace(cfg, estimated_error=estimate)
    target = _relative_target(positions, q, cell, accuracy, sigma, dipoles)
    orders = tuple(orders) if order is None else (int(order),)
    cfg, _ = _tune_pme_absolute(
        q,
        cell,
        target,
        sigma,
        orders,
        alpha,
        None if influence is None else (influence,),
        dipoles,
        positions if mesh is None else None,
    )
    if r_cut is None:
        r, tail = _grow_rcut_for_tail(positions, q, cell, cfg.alpha, cfg.r_cut, 0.5 * target, sigma)
        if tail is not None:
            cfg = dataclasses.replace(cfg, r_cut=r)
    else:
        cfg = dataclasses.replace(cfg, r_cut=float(r_cut))
    if mesh is not None:
        cfg = dataclasses.replace(cfg, mesh=tuple(int(k) for k in mesh))
    return dataclasses.replace(
        cfg, estimated_error=pme_error_estimate(q, cell, cfg, sigma, dipoles, positions)
    )


def pme_cost(n_atoms, cell, config) -> float:
    """Cost-model estimate (seconds, energy + forces) of a PME config."""
    cell = np.asarray(cell, dtype=np.float64)
    volume = abs(np.linalg.det(cell))
    return _pme_cost(n_atoms, volume, host_heights(cell), config.r_cut, config.mesh, config.order)


def ewald_cost(n_atoms, cell, config) -> float:
    """Cost-model estimate (seconds, energy + forces) of an Ewald config."""
    cell = np.asarray(cell, dtype=np.float64)
    volume = abs(np.linalg.det(cell))
    return _cost(n_atoms, volume, host_heights(cell), config.r_cut, config.n_kpoints)
