r"""Smooth particle-mesh Ewald (reciprocal part) on a fixed mesh.

Charges are spread on a (K1, K2, K3) mesh over fractional coordinates with cardinal
B-splines of order p (Essmann et al., J. Chem. Phys. 103, 8577 (1995)); the
reciprocal energy is

    E_rec = (2 pi / V) sum_{m != 0} exp(-k^2 / 4 alpha^2) / k^2
            [c(m) |FFT(Q)(m)|^2 - Q2 (c(m) a(m) - 1)],

``k = m @ (2 pi inv(cell).T)``. The influence factor ``c`` is SPME's B-spline
modulus correction or the optimal (P3M) one for energies; the second term removes
the mean interaction of each charge with its own mesh image (see
:func:`_mesh_tables` and docs/pme.md). A real FFT holds half of the m set. The
potential is ``dE/dq`` (E is quadratic in q); forces and stress come from autodiff
through the spreading (a scatter whose transpose is a gather) and the FFT.

The real-space, self and background terms are Ewald's (:mod:`jaxlr.kernels.ewald`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr.kernels.coulomb import _as_charges, blocked_sum
from jaxlr.kernels.ewald import (
    _multipole_ewald_energy,
    _self_and_background_energy,
    field_from_energy,
    real_space_energy,
)
from jaxlr.neighbors import Pairs
from jaxlr.units import COULOMB

__all__ = [
    "PMEConfig",
    "bspline_weights",
    "spread_charges",
    "spline_windows",
    "interpolate_mesh",
    "pme_reciprocal_energy",
    "pme_energy",
    "pme_potential",
    "pme_field",
]


@dataclasses.dataclass(frozen=True)
class PMEConfig:
    """Static (hashable) PME parameters.

    Attributes:
      alpha: splitting parameter in 1/Å.
      mesh: (K1, K2, K3) mesh points per fractional axis.
      order: B-spline order p (3..12; every mesh size must be >= p).
      r_cut: real-space cutoff in Å (needed for the full energy only).
      influence: "spme" (modulus correction) or "p3m" (optimal for energies).
      self_correction: subtract the mean interaction of each charge with its own
        mesh image (see :func:`pme_reciprocal_energy`).
      estimated_error: the tuner's estimate of the absolute energy error (Gaussian
        units), for information.
    """

    alpha: float
    mesh: tuple[int, int, int]
    order: int = 6
    r_cut: float | None = None
    influence: str = "spme"
    self_correction: bool = True
    estimated_error: float | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        if len(self.mesh) != 3 or any(int(k) < 1 for k in self.mesh):
            raise ValueError(f"mesh must be 3 positive integers, got {self.mesh}")
        object.__setattr__(self, "mesh", tuple(int(k) for k in self.mesh))
        if not 3 <= self.order <= 12:
            raise ValueError(f"order must be in 3..12, got {self.order}")
        if self.influence not in ("spme", "p3m"):
            raise ValueError(f"influence must be 'spme' or 'p3m', got {self.influence!r}")
        if any(k < self.order for k in self.mesh):
            raise ValueError(f"every mesh size must be >= order {self.order}, got {self.mesh}")


def bspline_weights(frac, order):
    """(..., order) weights M_p(frac + j), j = 0..order-1, for frac in [0, 1).

    The Cox-de Boor recursion M_n(x) = [x M_{n-1}(x) + (n - x) M_{n-1}(x - 1)]/(n - 1)
    evaluated at the points x = frac + j, which hold the order-p support."""
    w = [frac, 1.0 - frac]  # M_2(frac + j), j = 0, 1 (M_2(x) = 1 - |x - 1|)
    for n in range(3, order + 1):
        new = []
        for j in range(n):
            x = frac + j
            left = w[j] if j < n - 1 else 0.0  # M_{n-1}(x), support [0, n-1)
            right = w[j - 1] if j >= 1 else 0.0  # M_{n-1}(x - 1)
            new.append((x * left + (n - x) * right) / (n - 1))
        w = new
    return jnp.stack([jnp.broadcast_to(x, frac.shape) for x in w], axis=-1)


def _bspline_at_integers(order):
    """M_p(k) for k = 0..p (numpy, float64)."""
    vals = np.zeros(order + 1)
    # M_p(k): the recursion at frac = 0, from M_2(0) = 0, M_2(1) = 1
    w = [0.0, 1.0]
    for n in range(3, order + 1):
        w = [
            (j * (w[j] if j < n - 1 else 0.0) + (n - j) * (w[j - 1] if j >= 1 else 0.0)) / (n - 1)
            for j in range(n)
        ]
    vals[: len(w)] = w
    return vals


def _modulus(order, k_mesh):
    """|b(m)|^2 for m = 0..K-1: 1 / |sum_{k=0}^{p-2} M_p(k+1) exp(2 pi i m k / K)|^2."""
    mp = _bspline_at_integers(order)
    m = np.arange(k_mesh)
    k = np.arange(order - 1)
    denom = (
        np.abs(
            np.sum(
                mp[k + 1][None, :] * np.exp(2j * np.pi * m[:, None] * k[None, :] / k_mesh), axis=1
            )
        )
        ** 2
    )
    out = np.zeros(k_mesh)
    ok = denom > 1e-10
    out[ok] = 1.0 / denom[ok]
    return out


def spline_windows(s, mesh, order):
    """B-spline windows of fractional positions s (N, 3) on ``mesh``: ``(start, w)``,
    start (N, 3) int32 the window's first mesh point (mod K) and w (N, 3, p) the
    weights ``M_p(u_a - start_a - t)`` of the points ``start_a + t``, t = 0..p-1."""
    start, frac = _window_start(s, mesh, order)
    return start, bspline_weights(frac, order)[:, :, ::-1]


def _window_start(s, mesh, order):
    """(start (N, 3) int32, frac (N, 3)): each atom's window corner (mod K) and the
    fractional offsets its spline weights are evaluated at."""
    p = order
    mesh_np = np.asarray(mesh, np.int32)
    u = s * jnp.asarray(mesh_np, s.dtype)[None, :]
    base = jnp.floor(u)
    frac = u - base
    # weights of the points start + t, t = 0..p-1, start = base - (p - 1)
    start = (base.astype(jnp.int32) - (p - 1)) % mesh_np[None, :]
    return start, frac


def spread_charges(s, charges, mesh, order, dipoles=None):
    """Q[k] = sum_i q_i prod_a M_p(u_ia - k_a) on the periodic mesh; s fractional (N, 3).

    ``dipoles``: optional (N, 3) fractional dipoles ``d = mu @ inv(cell)``; each adds
    ``mu . grad_r`` of its atom's weights, ``sum_a K_a d_a dW/du_a`` (the mesh image
    of the dipole density ``-mu . grad delta``).

    Each atom adds one (p, p, p) block at its window's corner into a mesh padded by
    p - 1 on every axis (one windowed scatter per atom, contiguous inner rows); the
    padding is then folded back onto the periodic mesh. The transpose (forces) is
    the matching windowed gather."""
    p = order
    mesh_np = np.asarray(mesh, np.int32)
    start, frac = _window_start(s, mesh, order)
    if dipoles is None:
        w = bspline_weights(frac, p)[:, :, ::-1]
        block = (
            charges[:, None, None, None]
            * w[:, 0, :, None, None]
            * w[:, 1, None, :, None]
            * w[:, 2, None, None, :]
        )
    else:
        w, dw = jax.jvp(lambda f: bspline_weights(f, p), (frac,), (jnp.ones_like(frac),))
        w, dw = w[:, :, ::-1], dw[:, :, ::-1]
        kd = dipoles * jnp.asarray(mesh_np, s.dtype)[None, :]  # K_a d_a
        # q w1 w2 w3 + kd1 w1' w2 w3 + kd2 w1 w2' w3 + kd3 w1 w2 w3'
        a1 = charges[:, None] * w[:, 0] + kd[:, 0, None] * dw[:, 0]
        block = (
            a1[:, :, None] * w[:, 1, None, :]
            + kd[:, 1, None, None] * w[:, 0, :, None] * dw[:, 1, None, :]
        )[:, :, :, None] * w[:, 2, None, None, :] + (
            kd[:, 2, None, None] * w[:, 0, :, None] * w[:, 1, None, :]
        )[:, :, :, None] * dw[:, 2, None, None, :]
    padded = jnp.zeros(tuple(int(k) + p - 1 for k in mesh), s.dtype)
    dnums = jax.lax.ScatterDimensionNumbers(
        update_window_dims=(1, 2, 3),
        inserted_window_dims=(),
        scatter_dims_to_operand_dims=(0, 1, 2),
    )
    grid = jax.lax.scatter_add(
        padded, start, block.astype(s.dtype), dnums, indices_are_sorted=False, unique_indices=False
    )
    if p > 1:  # fold the padding back, axis by axis
        k0, k1, k2 = mesh
        grid = grid[:k0].at[: p - 1].add(grid[k0:])
        grid = grid[:, :k1].at[:, : p - 1].add(grid[:, k1:])
        grid = grid[:, :, :k2].at[:, :, : p - 1].add(grid[:, :, k2:])
    return grid


def interpolate_mesh(s, grid, order):
    """(N, C) ``sum_k prod_a M_p(u_ia - k_a) grid[k, c]``: the B-spline interpolation
    of C fields at the fractional positions s (N, 3), the transpose of
    :func:`spread_charges`. ``grid`` is (K1, K2, K3, C), channels last, so that each
    atom gathers one contiguous (p, p, p, C) window of the periodically padded mesh."""
    p = order
    mesh = grid.shape[:3]
    start, w = spline_windows(s, mesh, order)
    if p > 1:  # periodic padding: the window may run p - 1 past the last point
        grid = jnp.concatenate([grid, grid[: p - 1]], axis=0)
        grid = jnp.concatenate([grid, grid[:, : p - 1]], axis=1)
        grid = jnp.concatenate([grid, grid[:, :, : p - 1]], axis=2)
    dnums = jax.lax.GatherDimensionNumbers(
        offset_dims=(1, 2, 3, 4), collapsed_slice_dims=(), start_index_map=(0, 1, 2)
    )
    windows = jax.lax.gather(
        grid,
        start,
        dnums,
        slice_sizes=(p, p, p, grid.shape[3]),
        indices_are_sorted=False,
        unique_indices=False,
        mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    )  # (N, p, p, p, C)
    w = w.astype(grid.dtype)
    # a broadcast product and one reduction: XLA fuses it with the gather (small
    # batched einsums here run 2-3x slower on CPU)
    w3 = w[:, 0, :, None, None] * w[:, 1, None, :, None] * w[:, 2, None, None, :]
    return jnp.sum(windows * w3[..., None], axis=(1, 2, 3))


def _axis_factors(k_mesh, order):
    """Exact per-axis aliasing sums at the integer frequencies n = fftfreq(K) * K.

    With W(xi) = sinc(xi)^p the Fourier transform of the order-p B-spline (xi = n/K +
    j over the aliases j), Poisson summation gives finite sums:

    * ``u0 = |W(n/K)|`` (the principal alias);
    * ``a = sum_j W(n/K + j)^2 = sum_k M_2p(k + p) cos(2 pi n k / K)`` (the
      autocorrelation of M_p is the centred M_2p);
    * ``b2 = |sum_j (-1)^{jp} W(n/K + j)|^2 = 1 / modulus`` (SPME's b-factor).
    """
    n = np.fft.fftfreq(k_mesh, 1.0 / k_mesh)
    u0 = np.abs(np.sinc(n / k_mesh)) ** order
    m2p = _bspline_at_integers(2 * order)
    k = np.arange(-(order - 1), order)
    a = np.sum(m2p[k + order][None, :] * np.cos(2 * np.pi * np.outer(n, k) / k_mesh), axis=1)
    mod = _modulus(order, k_mesh)
    b2 = np.where(mod > 0, 1.0 / np.where(mod > 0, mod, 1.0), np.inf)
    return u0, a, b2


def _influence_factor(u0, a, b2, influence):
    """Per-axis influence factor: SPME's ``1 / b2`` (0 where b vanishes) or the
    optimal (P3M) ``u0^2 / a^2``."""
    if influence == "spme":
        return np.where(np.isfinite(b2), 1.0 / np.where(np.isfinite(b2), b2, 1.0), 0.0)
    if influence == "p3m":
        return u0**2 / a**2
    raise ValueError(f"influence must be 'spme' or 'p3m', got {influence!r}")


@functools.lru_cache(maxsize=64)
def _mesh_tables(mesh, order, influence="spme"):
    """Static numpy tables on the rfft half mesh.

    Returns ``(c, bias)``: the influence factor ``c`` (G = R(k) c, with R = 4 pi e^{-k^2/4a^2}/k^2)
    and the mean self-interaction error factor ``c * a - 1``, both with the
    half-space weights (2 for interior m3 planes) folded in.

    * ``spme``: ``c = prod_a 1 / b2_a`` (Essmann's modulus correction);
    * ``p3m``: ``c = prod_a u0_a^2 / a_a^2``, the influence function minimising the
      RMS energy error over uniformly placed charges (Hockney & Eastwood, for the
      potential; principal alias of R).
    """
    half = mesh[2] // 2 + 1
    cs, cas = [], []
    for axis, k_mesh in enumerate(mesh):
        u0, a, b2 = _axis_factors(k_mesh, order)
        c = _influence_factor(u0, a, b2, influence)
        if axis == 2:
            c, a = c[:half], a[:half]
        cs.append(c)
        cas.append(c * a)

    def outer(v):
        return v[0][:, None, None] * v[1][None, :, None] * v[2][None, None, :]

    # rfft holds m3 >= 0: interior planes count twice (m and -m), 0 and Nyquist once
    weight3 = np.full(half, 2.0)
    weight3[0] = 1.0
    if mesh[2] % 2 == 0:
        weight3[-1] = 1.0
    w = weight3[None, None, :]
    return outer(cs) * w, (outer(cas) - 1.0) * w


_PAIRS_AB = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))


@functools.lru_cache(maxsize=256)
def _alias_moments(k_mesh, order, n_alias=400):
    """Per-axis alias sums ``sum_j xi_j^t W(xi_j / K)^2``, t = 0, 1, 2, with
    ``xi_j = n + K j`` over the aliases j (W = sinc^p), at n = fftfreq(K) * K."""
    n = np.fft.fftfreq(k_mesh, 1.0 / k_mesh)
    xi = n[:, None] + k_mesh * np.arange(-n_alias, n_alias + 1)[None, :]
    w2 = np.sinc(xi / k_mesh) ** (2 * order)
    return [np.sum(xi**t * w2, axis=1) for t in range(3)]


@functools.lru_cache(maxsize=64)
def _dipole_mesh_tables(mesh, order, influence="spme"):
    """(6, K1, K2, K3 // 2 + 1) tables ``c A_ab - m_a m_b`` for the pairs ab of
    ``_PAIRS_AB``, with the half-space weights: the mean self-interaction of a
    fractional dipole d with its own mesh image, minus the exact one, is
    ``(2 pi / V) 4 pi^2 sum_ab d_a d_b sum_m g(m) (c A_ab - m_a m_b)``, with
    ``A_ab = sum_aliases W^2 xi_a xi_b`` (xi = m + K j)."""
    half = mesh[2] // 2 + 1
    mom, ms, cs = [], [], []
    for axis, k_mesh in enumerate(mesh):
        u0, a, b2 = _axis_factors(k_mesh, order)
        c = _influence_factor(u0, a, b2, influence)
        t = _alias_moments(k_mesh, order)
        m = np.fft.fftfreq(k_mesh, 1.0 / k_mesh)
        if axis == 2:
            c, t, m = c[:half], [x[:half] for x in t], np.arange(half, dtype=np.float64)
        cs.append(c)
        mom.append(t)
        ms.append(m)
    shape = (mesh[0], mesh[1], half)

    def axis_view(v, axis):
        return v.reshape([-1 if i == axis else 1 for i in range(3)])

    c = axis_view(cs[0], 0) * axis_view(cs[1], 1) * axis_view(cs[2], 2)
    weight3 = np.full(half, 2.0)
    weight3[0] = 1.0
    if mesh[2] % 2 == 0:
        weight3[-1] = 1.0
    out = []
    for a, b in _PAIRS_AB:
        prod = np.ones(shape)
        exact = np.ones(shape)
        for axis in range(3):
            power = (axis == a) + (axis == b)
            prod = prod * axis_view(mom[axis][power], axis)
            exact = exact * axis_view(ms[axis] ** power, axis)
        out.append((c * prod - exact) * weight3[None, None, :])
    return np.stack(out)


def _mesh_weights(cell, alpha, mesh, dtype):
    """exp(-k^2 / 4 alpha^2) / k^2 on the rfft half mesh, 0 at k = 0; k^2 from the
    reciprocal metric, so no (K1, K2, K3, 3) array of k vectors is formed."""
    half = mesh[2] // 2 + 1
    m1 = jnp.asarray(np.fft.fftfreq(mesh[0], 1.0 / mesh[0]), dtype)[:, None, None]
    m2 = jnp.asarray(np.fft.fftfreq(mesh[1], 1.0 / mesh[1]), dtype)[None, :, None]
    m3 = jnp.asarray(np.arange(half), dtype)[None, None, :]
    recip = 2.0 * jnp.pi * jnp.linalg.inv(cell).T
    g = recip @ recip.T
    k2 = (
        g[0, 0] * m1 * m1
        + g[1, 1] * m2 * m2
        + g[2, 2] * m3 * m3
        + 2.0 * (g[0, 1] * m1 * m2 + g[0, 2] * m1 * m3 + g[1, 2] * m2 * m3)
    )
    zero = np.zeros((mesh[0], mesh[1], half), bool)
    zero[0, 0, 0] = True
    k2 = jnp.where(zero, 1.0, k2)
    return jnp.where(zero, 0.0, jnp.exp(-k2 / (4.0 * alpha**2)) / k2)


def _mesh_dot(a, b):
    """sum(a * b) over a 3D mesh, axis by axis. In float32 one flat XLA reduction
    over 10^5-10^6 terms loses ~1e-5 relative; partial sums per axis (kept apart by
    an optimisation barrier, so XLA does not fuse them back) lose ~1e-7."""
    s = jnp.sum(a * b, axis=2)
    s = jax.lax.optimization_barrier(s)
    return jnp.sum(jax.lax.optimization_barrier(jnp.sum(s, axis=1)))


def pme_reciprocal_energy(positions, charges, cell, *, config: PMEConfig, dipoles=None):
    """Reciprocal-space energy (Gaussian units) on ``config.mesh``.

    ``(2 pi / V) sum_k e^{-k^2/4a^2}/k^2 [c(k) |FFT(Q)(k)|^2 - Q2 (c(k) a(k) - 1)]``:
    the second term (``config.self_correction``) removes the mean spurious
    self-interaction of each charge with its own mesh image, which is otherwise the
    largest error of smooth PME (a bias of order ``Q2 h^p``).

    ``dipoles`` ((N, 3) e·Å): point dipoles spread with the gradients of the
    B-spline weights (see :func:`spread_charges`)."""
    dtype = positions.dtype
    mesh, order = config.mesh, config.order
    charges = charges.astype(dtype)
    inv = jnp.linalg.inv(cell)
    s = positions @ inv
    d = None if dipoles is None else dipoles.astype(dtype) @ inv
    q_hat = jnp.fft.rfftn(spread_charges(s, charges, mesh, order, d))
    c, bias = _mesh_tables(mesh, order, config.influence)
    g = _mesh_weights(cell, config.alpha, mesh, dtype)
    power = jnp.real(q_hat) ** 2 + jnp.imag(q_hat) ** 2
    volume = jnp.abs(jnp.linalg.det(cell))
    e = _mesh_dot(g * jnp.asarray(c, dtype), power)
    if config.self_correction:
        e = e - blocked_sum(charges * charges) * _mesh_dot(g, jnp.asarray(bias, dtype))
        if d is not None:
            # the same for the dipoles: 4 pi^2 sum_ab D_ab <g, c A_ab - m_a m_b>
            tables = jnp.asarray(_dipole_mesh_tables(mesh, order, config.influence), dtype)
            dd = d.T @ d  # (3, 3) sum_j d_ja d_jb
            e = e - (4.0 * jnp.pi**2) * sum(
                dd[a, b] * _mesh_dot(g, tables[k]) for k, (a, b) in enumerate(_PAIRS_AB)
            )
    return (2.0 * jnp.pi / volume) * e


def pme_energy(
    positions,
    charges,
    cell,
    pairs: Pairs,
    *,
    config: PMEConfig,
    sigma=None,
    prefactor=COULOMB,
    dipoles=None,
):
    """Full PME energy (eV with ``prefactor=COULOMB``): Ewald's real-space, self and
    background terms with the reciprocal part on the mesh. Arguments as
    :func:`jaxlr.kernels.ewald_energy` (``dipoles`` included, tin-foil boundary);
    ``config.r_cut`` is the real-space cutoff."""
    if config.r_cut is None:
        raise ValueError("config.r_cut is needed for the full PME energy")
    if dipoles is not None:
        positions, cell = jnp.asarray(positions), jnp.asarray(cell)
        charges = _as_charges(charges, dipoles, positions)

        def reciprocal(p, q, mu, c):
            return pme_reciprocal_energy(p, q, c, config=config, dipoles=mu)

        e = _multipole_ewald_energy(
            positions, charges, jnp.asarray(dipoles), cell, pairs, config, sigma, reciprocal
        )
        return prefactor * e
    positions, charges, cell = jnp.asarray(positions), jnp.asarray(charges), jnp.asarray(cell)
    e = real_space_energy(
        positions, charges, cell, pairs, alpha=config.alpha, r_cut=config.r_cut, sigma=sigma
    )
    e = e + _self_and_background_energy(charges, cell, config.alpha, sigma)
    e = e + pme_reciprocal_energy(positions, charges, cell, config=config)
    return prefactor * e


def pme_potential(
    positions,
    charges,
    cell,
    pairs: Pairs,
    *,
    config: PMEConfig,
    sigma=None,
    prefactor=COULOMB,
    dipoles=None,
):
    """(N,) PME potential phi_i = dE/dq_i (V with ``prefactor=COULOMB``); exact, since E
    is quadratic in q, so E = 1/2 sum q_i phi_i (without dipoles)."""
    positions = jnp.asarray(positions)
    charges = _as_charges(charges, dipoles, positions).astype(positions.dtype)
    return jax.grad(pme_energy, argnums=1)(
        positions,
        charges,
        cell,
        pairs,
        config=config,
        sigma=sigma,
        prefactor=prefactor,
        dipoles=dipoles,
    )


def pme_field(
    positions,
    charges,
    dipoles,
    cell,
    pairs: Pairs,
    *,
    config: PMEConfig,
    sigma=None,
    prefactor=COULOMB,
):
    """(N, 3) field at each atom, ``-dE/dmu_i`` without the Gaussian dipole self
    energy (V/Å with ``prefactor=COULOMB``); see :func:`jaxlr.kernels.ewald_field`."""
    positions, cell = jnp.asarray(positions), jnp.asarray(cell)
    charges = _as_charges(charges, dipoles, positions).astype(positions.dtype)
    dipoles = jnp.asarray(dipoles).astype(positions.dtype)

    def energy(mu):
        return pme_energy(
            positions, charges, cell, pairs, config=config, sigma=sigma, prefactor=1.0, dipoles=mu
        )

    return field_from_energy(energy, dipoles, sigma, charges, prefactor)
