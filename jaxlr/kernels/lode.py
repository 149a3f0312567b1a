r"""LODE spherical expansion: the potential of smeared atom densities projected on a
local radial x spherical-harmonic basis (Grisafi & Ceriotti 2019; Huguenin-Dumittan
et al. 2023).

Each atom j of species a carries the smeared power-law density of exponent p and
width sigma, ``f_p(r) = P(p/2, r^2 / (2 sigma^2)) / r^p`` (P the regularised lower
incomplete gamma; p = 1 the potential of a unit Gaussian charge; p = 0 the Gaussian
``exp(-r^2 / (2 sigma^2)) / (pi sigma^2)^(3/4)``). Around atom i

    c[i, a, lm, n] = int R_n(r) Y_lm(r_hat) sum_{j in a, T} f_p(|r_i + r - r_j - T|) d^3r

minus ``(1 - center_atom_weight)`` times the atom's own free-space projection (l = 0,
its own species). With the plane-wave expansion of ``exp(i k.r)``, for a periodic
cell (volume V, k over the reciprocal lattice, 0 < |k| < k_cutoff):

    c[i, a, lm, n] = (4 pi / V) sum_k fhat_p(k) I_nl(|k|) Y_lm(k_hat)
                     Re[i^l exp(i k.r_i) conj(S_a(k))],   S_a(k) = sum_{j in a} exp(i k.r_j),

``I_nl(k) = int r^2 R_n(r) j_l(k r) dr`` and ``fhat_p`` the Fourier transform of
``f_p``; the k = 0 term is dropped for p = 1, 2, 3 (a neutralising background per
species) and kept for p = 0 and p > 3. For a molecule (free space) the same
coefficients are a sum over atoms of ``P_nl(d) Y_lm(d_hat)`` with
``P_nl(d) = (2 / pi) int k^2 fhat_p(k) I_nl(k) j_l(k d) dk``.

Conventions (featomic's): GTO radial basis ``r^n exp(-r^2 / (2 s_n^2))``, ``s_n =
radius max(sqrt(n), 1) / (max_radial + 1)``, each normalised, then Löwdin
orthonormalised; real spherical harmonics without the Condon-Shortley phase
(``Y_1,-1 ~ y, Y_1,0 ~ z, Y_1,1 ~ x``), index ``l^2 + l + m``.

For large cells the same k sum runs on a mesh (:func:`lode_mesh`): each species'
atoms spread by B-splines and Fourier transformed once, one inverse FFT per
(species, lm, n) channel, interpolated back at the atoms (smooth-PME style), at
O(channels x (M log M + N p^3)) instead of O(N N_k).

Everything is a smooth function of positions and cell: forces and stress come from
reverse-mode autodiff at the cost of the values' route.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import gammainc as _np_gammainc

__all__ = [
    "LodeConfig",
    "radial_basis",
    "real_spherical_harmonics",
    "spherical_bessel",
    "density_fourier",
    "lode_periodic",
    "lode_free",
    "lode_mesh",
    "lode_mesh_size",
    "mesh_kindices",
    "mesh_error_estimate",
    "power_spectrum",
    "kvector_indices",
    "k_cutoff_for_accuracy",
]


# ------------------------------------------------------------------ radial basis


def _gto_widths(max_radial, radius):
    n = np.arange(max_radial + 1)
    return radius * np.maximum(np.sqrt(n), 1.0) / (max_radial + 1)


def radial_basis(max_radial, radius):
    """Host: ``(widths, L)`` of the orthonormal GTO basis ``R_n = sum_m L[n, m] g_m``,
    ``g_m = N_m r^m exp(-r^2 / (2 s_m^2))`` normalised (``int r^2 g^2 dr = 1``), L the
    Löwdin matrix ``S^-1/2`` of their overlaps."""
    s = _gto_widths(max_radial, radius)
    n = np.arange(max_radial + 1)
    # int_0^inf r^a exp(-r^2 / (2 c^2)) dr = 1/2 (2 c^2)^((a + 1) / 2) Gamma((a + 1) / 2)
    lg = np.vectorize(math.lgamma)

    def log_moment(a, c2):
        return math.log(0.5) + 0.5 * (a + 1) * np.log(2.0 * c2) + lg(0.5 * (a + 1))

    log_norm = -0.5 * log_moment(2 * n + 2, 0.5 * s**2)  # exp(-r^2/s^2): c^2 = s^2 / 2
    a = n[:, None] + n[None, :] + 2
    c2 = 1.0 / (1.0 / s[:, None] ** 2 + 1.0 / s[None, :] ** 2)
    overlap = np.exp(log_norm[:, None] + log_norm[None, :] + log_moment(a, c2))
    w, v = np.linalg.eigh(overlap)
    lowdin = (v / np.sqrt(w)) @ v.T
    return s, lowdin, log_norm


def _radial_values(r, max_radial, radius):
    """Host: (max_radial + 1, len(r)) orthonormal radial functions at r."""
    s, lowdin, log_norm = radial_basis(max_radial, radius)
    n = np.arange(max_radial + 1)
    with np.errstate(divide="ignore"):
        logr = np.log(r)
    g = np.exp(
        log_norm[:, None] + n[:, None] * logr[None, :] - r[None, :] ** 2 / (2 * s[:, None] ** 2)
    )
    g[0, r == 0] = np.exp(log_norm[0])
    return lowdin @ g


def _radial_grid(max_radial, radius, n_points=256):
    """Host: Gauss-Legendre nodes and weights on [0, r_max], r_max where the widest
    Gaussian has fallen below 1e-20, and the basis values there."""
    s_max = _gto_widths(max_radial, radius).max()
    r_max = s_max * math.sqrt(2.0 * 46.0) + 2.0 * s_max * math.sqrt(max_radial + 1)
    x, w = np.polynomial.legendre.leggauss(n_points)
    r = 0.5 * r_max * (x + 1.0)
    return r, 0.5 * r_max * w, _radial_values(r, max_radial, radius)


# ------------------------------------------------------------------ special functions


def real_spherical_harmonics(vectors, max_angular):
    """(..., (L+1)^2) real spherical harmonics of the directions of ``vectors``
    (no Condon-Shortley phase: Y_1,-1 ~ y, Y_1,0 ~ z, Y_1,1 ~ x), index l^2 + l + m.

    Built from solid-harmonic recurrences (polynomials in x, y, z; no angles), so
    smooth everywhere except at the zero vector."""
    x, y, z = vectors[..., 0], vectors[..., 1], vectors[..., 2]
    r2 = x * x + y * y + z * z
    r = jnp.sqrt(r2)
    inv_r = 1.0 / r
    x, y, z = x * inv_r, y * inv_r, z * inv_r  # unit vectors: r = 1 below
    L = max_angular
    # c_m + i s_m = (x + i y)^m
    c = [jnp.ones_like(x)]
    s = [jnp.zeros_like(x)]
    for m in range(1, L + 1):
        c.append(c[-1] * x - s[-1] * y)
        s.append(c[-2] * y + s[-1] * x)
    # Q[l][m]: associated Legendre polynomials of z times sin^m (no CS phase)
    q = [[None] * (L + 1) for _ in range(L + 1)]
    q[0][0] = jnp.ones_like(z)
    for l in range(1, L + 1):
        q[l][l] = (2 * l - 1) * q[l - 1][l - 1]
        q[l][l - 1] = (2 * l - 1) * z * q[l - 1][l - 1]
        for m in range(l - 2, -1, -1):
            q[l][m] = ((2 * l - 1) * z * q[l - 1][m] - (l + m - 1) * q[l - 2][m]) / (l - m)
    out = []
    for l in range(L + 1):
        row = [None] * (2 * l + 1)
        for m in range(0, l + 1):
            if m == 0:
                norm = math.sqrt((2 * l + 1) / (4 * math.pi))
                row[l] = norm * q[l][0]
            else:
                norm = math.sqrt(
                    (2 * l + 1) / (2 * math.pi) * math.factorial(l - m) / math.factorial(l + m)
                )
                row[l + m] = norm * q[l][m] * c[m]
                row[l - m] = norm * q[l][m] * s[m]
        out.extend(row)
    return jnp.stack(out, axis=-1)


def spherical_bessel(x, max_angular):
    """(..., L+1) spherical Bessel functions j_l(x), l = 0..L, x >= 0: power series
    below x = l + 1 (where upward recurrence loses digits), upward recurrence above."""
    L = max_angular
    small = x < L + 1.0
    xs = jnp.where(small, x, 1.0)  # finite everywhere in both branches
    xl = jnp.where(small, L + 2.0, x)
    # upward recurrence from j0 = sin x / x, j1 = sin x / x^2 - cos x / x
    sin, cos = jnp.sin(xl), jnp.cos(xl)
    up = [sin / xl]
    if L >= 1:
        up.append(sin / xl**2 - cos / xl)
    for l in range(1, L):
        up.append((2 * l + 1) / xl * up[l] - up[l - 1])
    # series: j_l(x) = x^l / (2l+1)!! sum_k (-x^2/2)^k / (k! (2l+3)(2l+5)...(2l+2k+1))
    h = -0.5 * xs * xs
    series = []
    for l in range(L + 1):
        term = jnp.ones_like(xs)
        total = term
        for k in range(1, 40):
            term = term * h / (k * (2 * l + 2 * k + 1))
            total = total + term
        dfact = math.prod(range(1, 2 * l + 2, 2))
        series.append(xs**l / dfact * total)
    return jnp.where(small[..., None], jnp.stack(series, -1), jnp.stack(up, -1))


def _upper_gamma_half_integer(s2, x):
    """Unregularised upper incomplete gamma Gamma(s, x) for s = s2 / 2 (s2 an integer
    <= 3), x > 0, by recurrence from Gamma(1/2, x) or Gamma(1, x) / E1 (jax)."""
    if s2 % 2:  # half-integer: from Gamma(1/2, x) = sqrt(pi) erfc(sqrt(x))
        s, g = 0.5, jnp.sqrt(jnp.pi) * jax.scipy.special.erfc(jnp.sqrt(x))
    elif s2 >= 2:
        s, g = 1.0, jnp.exp(-x)
    else:
        s, g = 0.0, jax.scipy.special.exp1(x)
    target = s2 / 2
    while s < target:  # Gamma(s + 1, x) = s Gamma(s, x) + x^s e^-x
        g = s * g + x**s * jnp.exp(-x)
        s += 1.0
    while s > target:  # Gamma(s - 1, x) = (Gamma(s, x) - x^(s-1) e^-x) / (s - 1)
        g = (g - x ** (s - 1) * jnp.exp(-x)) / (s - 1)
        s -= 1.0
    return g


def density_fourier(k, exponent, smearing):
    """Fourier transform of the smeared density f_p at |k| = k > 0:
    ``pi^(3/2) 2^(3-p) / Gamma(p/2) k^(p-3) Gamma((3-p)/2, k^2 sigma^2 / 2)``;
    p = 0 is the Gaussian ``exp(-r^2 / (2 sigma^2)) / (pi sigma^2)^(3/4)`` (featomic's
    normalisation, unit L2 norm), transform ``(4 pi sigma^2)^(3/4) exp(-k^2 sigma^2 / 2)``."""
    p = exponent
    x = 0.5 * (k * smearing) ** 2
    if p == 0:
        return (4.0 * math.pi * smearing**2) ** 0.75 * jnp.exp(-x)
    pref = math.pi**1.5 * 2.0 ** (3 - p) / math.gamma(p / 2)
    return pref * k ** (p - 3) * _upper_gamma_half_integer(3 - p, x)


def _density_fourier_zero(exponent, smearing):
    """fhat_p(0) for p = 0 (1) and p > 3; None where the k = 0 term is dropped."""
    p = exponent
    if p == 0:
        return (4.0 * math.pi * smearing**2) ** 0.75
    if p <= 3:
        return None
    return (
        math.pi**1.5
        * 2.0 ** (3 - p)
        / math.gamma(p / 2)
        * (0.5 * smearing**2) ** ((3 - p) / 2)
        * 2.0
        / (p - 3)
    )


def _density_real(r, exponent, smearing):
    """Host: f_p(r) (p = 0: the Gaussian of unit L2 norm)."""
    p = exponent
    if p == 0:
        return np.exp(-(r**2) / (2 * smearing**2)) / (np.pi * smearing**2) ** 0.75
    x = r**2 / (2 * smearing**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = _np_gammainc(p / 2, x) / r**p
    # r -> 0: P(a, x) ~ x^a / Gamma(a + 1)
    return np.where(r > 0, v, (2 * smearing**2) ** (-p / 2) / math.gamma(p / 2 + 1))


# ------------------------------------------------------------------ configuration


@dataclasses.dataclass(frozen=True)
class LodeConfig:
    """Static LODE hyper-parameters (hashable; the quadrature tables are derived)."""

    max_radial: int
    max_angular: int
    radius: float
    smearing: float
    exponent: int = 1
    center_atom_weight: float = 1.0
    k_cutoff: float | None = None

    def __post_init__(self):
        if self.max_radial < 0 or self.max_angular < 0:
            raise ValueError("max_radial and max_angular must be >= 0")
        if not self.radius > 0:
            raise ValueError(f"radius must be positive, got {self.radius}")
        if not self.smearing > 0:
            raise ValueError(f"smearing must be positive, got {self.smearing}")
        if self.exponent not in range(0, 7):
            raise ValueError(f"potential_exponent must be an integer 0..6, got {self.exponent}")
        if self.k_cutoff is None:
            object.__setattr__(self, "k_cutoff", 1.2 * math.pi / self.smearing)
        if not self.k_cutoff > 0:
            raise ValueError(f"k_cutoff must be positive, got {self.k_cutoff}")

    @functools.cached_property
    def chebyshev(self):
        """Host: ``(k_max, coefficients (M, (L+1) n))`` of I_nl(k) on [0, k_max]."""
        return _radial_chebyshev(self, 1.1 * self.k_cutoff)

    @functools.cached_property
    def tables(self):
        r, w, radial = _radial_grid(self.max_radial, self.radius)
        weights = w * r * r * radial  # (n, G): I_nl(k) = weights @ j_l(k r)
        f = _density_real(r, self.exponent, self.smearing)
        self_proj = math.sqrt(4 * math.pi) * (weights @ f)  # (n,) own l = 0 projection
        return r, weights, self_proj


def _host_radial_integrals(config, k):
    """Host: (len(k), L+1, n) I_nl(k) = int r^2 R_n(r) j_l(k r) dr by Gauss-Legendre
    in r (numpy; the reference the jit paths are built from)."""
    from scipy.special import spherical_jn

    r, weights, _ = config.tables
    k = np.asarray(k, np.float64)
    j = np.stack([spherical_jn(l, np.outer(k, r)) for l in range(config.max_angular + 1)], 1)
    return np.einsum("klg,ng->kln", j, weights)


#: Chebyshev terms for the radial integrals on [0, 1.1 k_cutoff]; the error of
#: the interpolant is checked on the host against the quadrature (< 1e-13 relative).
CHEBYSHEV_TERMS = 96


def _radial_chebyshev(config, k_max, terms=None):
    """Host: Chebyshev coefficients of I_nl(k) on [0, k_max], from the exact
    quadrature at Chebyshev points; raises if the interpolant misses 1e-12."""
    terms = CHEBYSHEV_TERMS if terms is None else terms

    def exact(k):
        return _host_radial_integrals(config, k).reshape(len(k), -1)

    for m in (terms, 2 * terms, 4 * terms):
        theta = np.pi * (np.arange(m) + 0.5) / m
        values = exact(0.5 * k_max * (np.cos(theta) + 1.0))
        coef = (2.0 / m) * np.cos(np.outer(np.arange(m), theta)) @ values
        coef[0] *= 0.5
        check = np.linspace(0.0, k_max, 257)
        t = 2.0 * check / k_max - 1.0
        approx = np.cos(np.outer(np.arccos(np.clip(t, -1, 1)), np.arange(m))) @ coef
        ref = exact(check)
        if np.abs(approx - ref).max() <= 1e-12 * max(np.abs(ref).max(), 1e-300):
            return k_max, coef
    raise RuntimeError("radial integrals: Chebyshev interpolation did not reach 1e-12")


def _radial_integrals_fast(config, k):
    """(..., L+1, n) I_nl(k) from the Chebyshev interpolant (k <= 1.1 k_cutoff):
    T_j by the three-term recurrence (smooth in k, so the stress sees dI/dk)."""
    k_max, coef = config.chebyshev
    t = 2.0 * k / k_max - 1.0
    cols = [jnp.ones_like(t), t]
    for _ in range(2, coef.shape[0]):
        cols.append(2.0 * t * cols[-1] - cols[-2])
    tj = jnp.stack(cols[: coef.shape[0]], axis=-1)  # (..., M)
    out = tj @ jnp.asarray(coef, k.dtype)
    return out.reshape(k.shape + (config.max_angular + 1, config.max_radial + 1))


def _lm_degree(max_angular):
    return np.concatenate([np.full(2 * l + 1, l) for l in range(max_angular + 1)])


def k_cutoff_for_accuracy(max_radial, max_angular, radius, smearing, exponent, accuracy):
    """Host: the reciprocal cutoff whose truncated tail is ``accuracy`` relative.

    The k sum of a coefficient is ``(1 / (2 pi^2)) int k^2 fhat_p(k) I_nl(k) ... dk``
    in the continuum limit; the tail beyond k_c is bounded by
    ``T(k_c) = int_{k_c}^inf k^2 |fhat_p(k)| max_{l,n} |I_nl(k)| dk``. Returns the
    smallest k_c (bisection) with ``T(k_c) <= accuracy T(0+)``, where for p = 1..3
    the k -> 0 end is taken from 0.1 / radius (the k^(p-3) singularity is summed
    exactly by the lattice)."""
    if not (0.0 < accuracy < 1.0):
        raise ValueError(f"accuracy must be in (0, 1), got {accuracy}")
    probe = LodeConfig(max_radial, max_angular, radius, smearing, exponent, 1.0, 1.0)
    k = np.linspace(0.1 / radius, 60.0 / min(smearing, radius / (max_radial + 1)), 6000)
    i_max = np.abs(_host_radial_integrals(probe, k)).reshape(len(k), -1).max(axis=1)
    fhat = np.abs(np.asarray(density_fourier(jnp.asarray(k), exponent, smearing)))
    integrand = k * k * fhat * i_max
    tail = np.cumsum((integrand * np.gradient(k))[::-1])[::-1]
    ok = tail <= accuracy * tail[0]
    if not ok.any():
        raise ValueError(f"accuracy {accuracy} is below what the k grid can resolve")
    return float(k[np.argmax(ok)])


# ------------------------------------------------------------------ periodic route


def kvector_indices(cell, k_cutoff, margin=1.05):
    """Host: (K, 3) integer half-space reciprocal indices m with |m @ 2 pi inv(cell).T|
    < k_cutoff * margin (one of each +-m pair, m = 0 excluded)."""
    cell = np.asarray(cell, np.float64)
    recip = 2 * np.pi * np.linalg.inv(cell).T
    # m_a = k . a_a / (2 pi): over the sphere |m_a| <= k_c |a_a| / (2 pi) (the lattice
    # vector's length, not the plane spacing, which is shorter in a skewed cell)
    lengths = np.linalg.norm(cell, axis=1)
    kmax = np.ceil(k_cutoff * margin * lengths / (2 * np.pi)).astype(int)
    grids = np.meshgrid(*[np.arange(-k, k + 1) for k in kmax], indexing="ij")
    m = np.stack([g.ravel() for g in grids], -1)
    half = (m[:, 2] > 0) | ((m[:, 2] == 0) & ((m[:, 1] > 0) | ((m[:, 1] == 0) & (m[:, 0] > 0))))
    m = m[half]
    k = np.linalg.norm(m @ recip, axis=1)
    return m[k < k_cutoff * margin]


def lode_periodic(positions, species_onehot, cell, config: LodeConfig, kindices, k_chunk=512):
    """(N, A, (L+1)^2, n) periodic LODE coefficients (see the module docstring).

    Args:
      positions: (N, 3) Å. species_onehot: (N, A) one-hot species (padding rows 0).
      cell: (3, 3) rows. config: :class:`LodeConfig`.
      kindices: (K, 3) static half-space indices from :func:`kvector_indices`;
        masked by ``|k| < k_cutoff`` here, so a cell of the same shape class reuses them.
      k_chunk: k-vectors per block. Blocks are summed in a scan whose body is
        rematerialised in reverse mode: memory O(N k_chunk + K basis), never a
        (k, atom) or (k, atom, basis) array over all k.
    """
    dtype = positions.dtype
    n_atoms = positions.shape[0]
    onehot = species_onehot.astype(dtype)
    n_species = onehot.shape[1]
    n_lm = (config.max_angular + 1) ** 2
    n_rad = config.max_radial + 1
    recip = 2.0 * jnp.pi * jnp.linalg.inv(cell).T
    volume = jnp.abs(jnp.linalg.det(cell))
    deg = _lm_degree(config.max_angular)
    # Re[i^l z]: the real part (even l) or the imaginary part (odd l), with signs
    sign_re = jnp.asarray(np.where(deg % 2 == 0, (-1.0) ** (deg // 2), 0.0), dtype)
    sign_im = jnp.asarray(np.where(deg % 2 == 1, -((-1.0) ** ((deg - 1) // 2)), 0.0), dtype)
    kidx = np.asarray(kindices, np.float64).reshape(-1, 3)
    k_chunk = max(1, min(k_chunk, len(kidx)))
    pad = -len(kidx) % k_chunk
    # padded k-vectors: index (0, 0, 0), masked out below
    blocks = np.concatenate([kidx, np.zeros((pad, 3))]).reshape(-1, k_chunk, 3)
    valid = np.concatenate([np.ones(len(kidx)), np.zeros(pad)]).reshape(-1, k_chunk)

    @jax.checkpoint
    def block(coef, xs):
        m, ok = xs
        k = m.astype(dtype) @ recip  # (Kc, 3)
        k2 = jnp.sum(k * k, axis=-1)
        # strictly inside: lattice vectors on the sphere (common for round cells and
        # the default 1.2 pi / smearing) are left out whatever the rounding of |k|
        inside = (ok > 0) & (k2 < (config.k_cutoff * (1.0 - 1e-12)) ** 2)
        knorm = jnp.sqrt(jnp.where(inside, k2, 1.0))
        k_safe = jnp.where(inside[:, None], k, jnp.asarray([0.0, 0.0, 1.0], dtype))
        fhat = jnp.where(inside, density_fourier(knorm, config.exponent, config.smearing), 0.0)
        radial = _radial_integrals_fast(config, knorm)  # (Kc, L+1, n)
        ylm = real_spherical_harmonics(k_safe, config.max_angular)  # (Kc, LM)
        kern = fhat[:, None, None] * ylm[:, :, None] * radial[:, deg, :]  # (Kc, LM, n)
        kc = (kern * sign_re[None, :, None]).reshape(k_chunk, -1)
        ks = (kern * sign_im[None, :, None]).reshape(k_chunk, -1)
        phase = positions @ k.T  # (N, Kc)
        cos_p, sin_p = jnp.cos(phase), jnp.sin(phase)
        s_cos, s_sin = onehot.T @ cos_p, onehot.T @ sin_p  # (A, Kc)
        # z = exp(i k r_i) conj(S_a): coef_i = c_i.(C_a kc - S_a ks) + s_i.(S_a kc + C_a ks)
        u = s_cos[:, :, None] * kc[None] - s_sin[:, :, None] * ks[None]  # (A, Kc, LMN)
        w = s_sin[:, :, None] * kc[None] + s_cos[:, :, None] * ks[None]
        u = jnp.transpose(u, (1, 0, 2)).reshape(k_chunk, -1)
        w = jnp.transpose(w, (1, 0, 2)).reshape(k_chunk, -1)
        return coef + cos_p @ u + sin_p @ w, None

    coef0 = jnp.zeros((n_atoms, n_species * n_lm * n_rad), dtype)
    coef, _ = jax.lax.scan(block, coef0, (jnp.asarray(blocks), jnp.asarray(valid, dtype)))
    # (4 pi / V) and the half-space factor 2
    coef = (8.0 * jnp.pi / volume) * coef.reshape(n_atoms, n_species, n_lm, n_rad)
    return _center_weight(_add_zero_term(coef, onehot, volume, config), onehot, config)


def _add_zero_term(coef, onehot, volume, config):
    """The k = 0 term (p = 0 and p > 3 only): l = 0, Y_00 = 1 / sqrt(4 pi),
    I_n0(0) = int r^2 R_n dr, times the species counts."""
    f0 = _density_fourier_zero(config.exponent, config.smearing)
    if f0 is None:
        return coef
    _, weights, _ = config.tables
    i0 = jnp.asarray(weights.sum(axis=1), coef.dtype)
    counts = jnp.sum(onehot, axis=0)  # (A,)
    zero = (4.0 * jnp.pi / volume) * f0 / math.sqrt(4 * math.pi) * counts[:, None] * i0[None]
    return coef.at[:, :, 0, :].add(zero[None])


def _center_weight(coef, onehot, config):
    if config.center_atom_weight == 1.0:
        return coef
    _, _, self_proj = config.tables
    corr = (1.0 - config.center_atom_weight) * jnp.asarray(self_proj, coef.dtype)
    return coef.at[:, :, 0, :].add(-onehot[:, :, None] * corr[None, None, :])


# ------------------------------------------------------------------ mesh route

#: Default B-spline order of the mesh route.
MESH_ORDER = 6
#: Default relative accuracy the mesh route is sized for (see :func:`lode_mesh_size`).
MESH_ACCURACY = 1e-5


def mesh_kindices(cell, k_cutoff, margin=1.05):
    """Host: (K', 3) reciprocal indices with ``m_3 >= 0`` and ``0 < |k| < k_cutoff *
    margin``: the rfft half mesh's share of the sphere (the half-space set of
    :func:`kvector_indices` plus the mirror image of its ``m_3 = 0`` plane)."""
    half = kvector_indices(cell, k_cutoff, margin)
    return np.concatenate([half, -half[half[:, 2] == 0]])


def _alias_error(xi, order):
    """Relative B-spline interpolation error of a plane wave of frequency xi (in
    cycles per mesh point, |xi| < 1/2): the two nearest aliases,
    ``(xi / (1 - xi))^p + (xi / (1 + xi))^p``, counted once for the spreading and
    once for the interpolation back."""
    xi = np.abs(xi)
    return 2.0 * ((xi / (1.0 - xi)) ** order + (xi / (1.0 + xi)) ** order)


@functools.lru_cache(maxsize=64)
def _mesh_error_weights(config: LodeConfig):
    """Host: k nodes on (0, k_cutoff) and the weights ``k^2 |fhat_p| max|I_nl|``."""
    k = np.linspace(0.02 * config.k_cutoff, config.k_cutoff, 400)
    i_max = np.abs(_host_radial_integrals(config, k)).reshape(len(k), -1).max(axis=1)
    fhat = np.abs(np.asarray(density_fourier(jnp.asarray(k), config.exponent, config.smearing)))
    return k, k * k * fhat * i_max


def mesh_error_estimate(config: LodeConfig, cell, mesh, order):
    """Host: estimated error of the mesh route relative to the largest coefficient,
    ``int k^2 |fhat_p| max|I_nl| e(k) dk / int k^2 |fhat_p| max|I_nl| dk`` over
    ``(0, k_cutoff)``, with e(k) the alias error (:func:`_alias_error`) summed over
    the three axes at their worst frequency ``k |a_a| / (2 pi K_a)``. Measured
    errors (max over coefficients, relative to the largest) run 1-3x above it."""
    k, weight = _mesh_error_weights(config)
    lengths = np.linalg.norm(np.asarray(cell, np.float64), axis=1)
    xi = np.minimum(k[:, None] * lengths[None, :] / (2 * np.pi * np.asarray(mesh)[None, :]), 0.499)
    err = _alias_error(xi, order).sum(axis=1)
    return float(np.sum(weight * err) / np.sum(weight))


def lode_mesh_size(config: LodeConfig, cell, kindices, order=MESH_ORDER, accuracy=MESH_ACCURACY):
    """Host: the smallest FFT-friendly mesh ``(K1, K2, K3)`` that holds every index
    of ``kindices`` strictly inside its Brillouin zone (``K_a >= 2 max|m_a| + 1``)
    and whose :func:`mesh_error_estimate` is at most ``accuracy``. The mesh is
    grown by a common factor over the zone minimum (every axis keeps the same
    oversampling of its largest frequency)."""
    from jaxlr.kernels.tuning import fft_size

    if not (0.0 < accuracy < 1.0):
        raise ValueError(f"mesh accuracy must be in (0, 1), got {accuracy}")
    m_max = np.abs(np.asarray(kindices)).reshape(-1, 3).max(axis=0) if len(kindices) else [0] * 3
    m_max = np.maximum(np.asarray(m_max), 1)

    def mesh_for(factor):
        return tuple(
            fft_size(max(math.ceil(2 * factor * m), 2 * m + 1), order) for m in m_max.tolist()
        )

    factor = 1.0
    mesh = mesh_for(factor)
    while mesh_error_estimate(config, cell, mesh, order) > accuracy:
        factor *= 1.05
        if factor > 20:
            raise ValueError(f"mesh accuracy {accuracy} needs a larger spline order than {order}")
        mesh = mesh_for(factor)
    return mesh


def _channel_chunk(n_atoms, mesh, order, n_channels, budget=2**28):
    """Channels per scan step: about ``budget`` bytes (float64) of mesh fields and
    interpolation windows live at once."""
    per_channel = 8 * (5 * int(np.prod(mesh)) + n_atoms * order**3)
    return int(max(1, min(n_channels, budget // per_channel)))


def lode_mesh(
    positions,
    species_onehot,
    cell,
    config: LodeConfig,
    kindices,
    mesh,
    order=MESH_ORDER,
    channel_chunk=None,
    k_chunk=4096,
):
    """(N, A, (L+1)^2, n) periodic LODE coefficients on a mesh (the same sum as
    :func:`lode_periodic`, smooth-PME style).

    With ``Q_a`` the species-a atoms spread on the mesh by order-p cardinal
    B-splines (:func:`jaxlr.kernels.pme.spread_charges`), SPME's interpolation of the
    plane waves ``exp(i k.r) ~ b(m) sum_x W(r, x) exp(2 pi i m.x / K)`` turns the k sum
    into a field per channel,

        c[i, a, lm, n] = sum_x W(r_i, x) phi[a, lm, n](x),
        phi = (4 pi / V) sum_m fhat_p I_nl Y_lm(k_hat) i^l |b(m)|^2 FFT(Q_a)(m) e^{2 pi i m.x/K},

    one inverse real FFT per (species, lm, n) channel, interpolated back at the atoms
    with the same B-splines (:func:`jaxlr.kernels.pme.interpolate_mesh`). The sum is
    over the same masked sphere ``0 < |k| < k_cutoff`` (and the same k = 0 rule) as
    the direct route; the only new error is the B-spline aliasing
    (:func:`mesh_error_estimate`).

    Args:
      positions, species_onehot, cell, config: as :func:`lode_periodic`.
      kindices: (K', 3) static indices from :func:`mesh_kindices` (``m_3 >= 0``),
        masked by ``|k| < k_cutoff`` here.
      mesh: static (K1, K2, K3) (:func:`lode_mesh_size`); must hold every index
        strictly inside its zone. order: B-spline order (3..12).
      channel_chunk: channels per step of a ``scan`` (rematerialised in reverse
        mode): memory O(chunk x (mesh + N p^3)), never all channel fields at once.
        Default: about 256 MB of fields per step.
      k_chunk: k-vectors per block of the kernel tables.
    """
    from jaxlr.kernels.pme import _modulus, interpolate_mesh, spread_charges

    dtype = positions.dtype
    cdtype = jnp.result_type(dtype, jnp.complex64)
    mesh = tuple(int(k) for k in mesh)
    n_atoms = positions.shape[0]
    onehot = species_onehot.astype(dtype)
    n_species = onehot.shape[1]
    lmax, n_rad = config.max_angular, config.max_radial + 1
    n_lm = (lmax + 1) ** 2
    m_np = np.asarray(kindices, np.int64).reshape(-1, 3)
    if np.any(m_np[:, 2] < 0):
        raise ValueError("kindices must have m_3 >= 0 (use mesh_kindices)")
    if np.any(2 * np.abs(m_np).max(axis=0, initial=0) + 1 > np.asarray(mesh)):
        raise ValueError(f"mesh {mesh} does not hold the k set (max |m| {np.abs(m_np).max(0)})")
    recip = 2.0 * jnp.pi * jnp.linalg.inv(cell).T
    volume = jnp.abs(jnp.linalg.det(cell))
    n_k = len(m_np)

    # static per-index factors: SPME's |b(m)|^2 and the inverse FFT's 1 / prod(K)
    mod = np.ones(n_k)
    for a in range(3):
        mod = mod * _modulus(order, mesh[a])[m_np[:, a] % mesh[a]]
    mod = mod * float(np.prod(mesh))
    i1, i2, i3 = (m_np[:, 0] % mesh[0], m_np[:, 1] % mesh[1], m_np[:, 2])

    # kernel tables on the index set: fhat I_nl (K', L+1, n) and Y_lm (K', LM), in blocks
    k_chunk = max(1, min(k_chunk, n_k))
    pad = -n_k % k_chunk
    blocks = np.concatenate([m_np, np.zeros((pad, 3), np.int64)]).reshape(-1, k_chunk, 3)
    valid = np.concatenate([np.ones(n_k), np.zeros(pad)]).reshape(-1, k_chunk)

    @jax.checkpoint
    def table_block(xs):
        m, ok = xs
        k = m.astype(dtype) @ recip
        k2 = jnp.sum(k * k, axis=-1)
        inside = (ok > 0) & (k2 < (config.k_cutoff * (1.0 - 1e-12)) ** 2)
        knorm = jnp.sqrt(jnp.where(inside, k2, 1.0))
        k_safe = jnp.where(inside[:, None], k, jnp.asarray([0.0, 0.0, 1.0], dtype))
        fhat = jnp.where(inside, density_fourier(knorm, config.exponent, config.smearing), 0.0)
        radial = fhat[:, None, None] * _radial_integrals_fast(config, knorm)
        return radial, real_spherical_harmonics(k_safe, lmax)

    radial, ylm = jax.lax.map(table_block, (jnp.asarray(blocks), jnp.asarray(valid, dtype)))
    radial = radial.reshape(-1, lmax + 1, n_rad)[:n_k]
    ylm = ylm.reshape(-1, n_lm)[:n_k]

    # species densities on the mesh, their transforms at the index set
    s = positions @ jnp.linalg.inv(cell)
    q = jax.vmap(spread_charges, in_axes=(None, 1, None, None))(s, onehot, mesh, order)
    q_hat = jnp.fft.rfftn(q, axes=(1, 2, 3))[:, i1, i2, i3]  # (A, K')
    q_hat = q_hat * jnp.asarray(mod, dtype)[None, :]

    # channels (a, lm, n), flattened in output order, in chunks
    n_ch = n_species * n_lm * n_rad
    chunk = _channel_chunk(n_atoms, mesh, order, n_ch) if channel_chunk is None else channel_chunk
    chunk = max(1, min(int(chunk), n_ch))
    ch = np.arange(-(-n_ch // chunk) * chunk) % n_ch  # padding repeats channels, dropped below
    ch_a, ch_lm, ch_n = ch // (n_lm * n_rad), (ch // n_rad) % n_lm, ch % n_rad
    ch_l = _lm_degree(lmax)[ch_lm]
    phase = np.array([1.0, 1.0j, -1.0, -1.0j])[ch_l % 4]  # i^l
    xs = tuple(
        jnp.asarray(v.reshape(-1, chunk))
        for v in (ch_a, ch_lm, ch_l, ch_n, phase.real.astype(np.float64), phase.imag)
    )
    half = (mesh[0], mesh[1], mesh[2] // 2 + 1)

    @jax.checkpoint
    def body(carry, xs):
        a, lm, l, n, p_re, p_im = xs
        kern = (radial[:, l, n] * ylm[:, lm]).T  # (C, K')
        qa = q_hat[a]  # (C, K')
        re = kern * (p_re.astype(dtype)[:, None] * qa.real - p_im.astype(dtype)[:, None] * qa.imag)
        im = kern * (p_re.astype(dtype)[:, None] * qa.imag + p_im.astype(dtype)[:, None] * qa.real)
        grid = jnp.zeros((chunk,) + half, cdtype)
        grid = grid.at[:, i1, i2, i3].set(jax.lax.complex(re, im), unique_indices=True)
        field = jnp.fft.irfftn(grid, s=mesh, axes=(1, 2, 3)).astype(dtype)  # (C, K1, K2, K3)
        return carry, interpolate_mesh(s, jnp.transpose(field, (1, 2, 3, 0)), order)

    _, out = jax.lax.scan(body, None, xs)  # (steps, N, C)
    coef = jnp.transpose(out, (1, 0, 2)).reshape(n_atoms, -1)[:, :n_ch]
    coef = (4.0 * jnp.pi / volume) * coef.reshape(n_atoms, n_species, n_lm, n_rad)
    return _center_weight(_add_zero_term(coef, onehot, volume, config), onehot, config)


# ------------------------------------------------------------------ free space


def _free_kernel_grid(config, n_points=400):
    """Host: k nodes and weights for P_nl(d) = (2/pi) int k^2 fhat I_nl j_l(k d) dk."""
    s_min = _gto_widths(config.max_radial, config.radius).min()
    k_max = math.sqrt(2 * 46.0) / min(s_min, config.smearing) * 1.5
    x, w = np.polynomial.legendre.leggauss(n_points)
    k = 0.5 * k_max * (x + 1.0)
    return k, 0.5 * k_max * w


def lode_free(positions, species_onehot, config: LodeConfig, mask=None):
    """(N, A, (L+1)^2, n) LODE coefficients of a molecule (free space): a sum over
    all atoms j (itself included) of P_nl(|r_j - r_i|) Y_lm(r_j - r_i)."""
    dtype = positions.dtype
    kq, wq = _free_kernel_grid(config)
    kq_j = jnp.asarray(kq, dtype)
    fhat = density_fourier(kq_j, config.exponent, config.smearing)
    radial = jnp.asarray(_host_radial_integrals(config, kq), dtype)  # (Q, L+1, n), fixed grid
    table = (
        (2.0 / jnp.pi)
        * jnp.asarray(wq * kq**2, dtype)[:, None, None]
        * fhat[:, None, None]
        * radial
    )
    deg = _lm_degree(config.max_angular)
    onehot = species_onehot.astype(dtype)
    if mask is not None:
        onehot = onehot * mask[:, None].astype(dtype)

    def one(ri):
        d = positions - ri[None, :]  # (N, 3)
        r2 = jnp.sum(d * d, axis=-1)
        apart = r2 > 0
        r = jnp.sqrt(jnp.where(apart, r2, 1.0))
        jl = spherical_bessel(r[:, None] * kq_j[None, :], config.max_angular)  # (N, Q, L+1)
        pnl = jnp.einsum("jql,qln->jln", jl, table)  # (N, L+1, n)
        ylm = real_spherical_harmonics(
            jnp.where(apart[:, None], d, jnp.asarray([0.0, 0.0, 1.0], dtype)), config.max_angular
        )
        ylm = jnp.where(apart[:, None], ylm, 0.0)
        val = ylm[:, :, None] * pnl[:, deg, :]  # (N, LM, n)
        # the atom itself: only l = 0 (Y_00 = 1/sqrt(4 pi)), P_n0(0)
        p0 = jnp.einsum("q,qn->n", jnp.ones_like(kq_j), table[:, 0, :])
        val = val.at[:, 0, :].add(
            jnp.where(apart, 0.0, 1.0)[:, None] * p0[None] / math.sqrt(4 * math.pi)
        )
        return jnp.einsum("ja,jmn->amn", onehot, val)

    # centres in vectorised chunks of at most ~2^22 (pair, node) Bessel evaluations
    n = positions.shape[0]
    chunk = max(1, min(n, (1 << 22) // max(1, n * len(kq) * (config.max_angular + 1))))
    coef = jax.lax.map(one, positions, batch_size=chunk)
    return _center_weight(coef, onehot, config)


def power_spectrum(coef):
    """(N, A, A, L+1, n, n) rotation invariants sum_m c[a, lm, n] c[b, lm, n']."""
    n_lm = coef.shape[2]
    max_angular = int(round(math.sqrt(n_lm))) - 1
    out = []
    for l in range(max_angular + 1):
        block = coef[:, :, l * l : (l + 1) * (l + 1), :]
        out.append(jnp.einsum("iamn,ibmk->iabnk", block, block))
    return jnp.stack(out, axis=3)
