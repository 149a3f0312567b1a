r"""Smooth particle-mesh Ewald (reciprocal part) on a fixed mesh.

Charges are spread on a (K1, K2, K3) mesh over fractional coordinates with cardinal
B-splines of order p (Essmann et al., J. Chem. Phys. 103, 8577 (1995)); the
reciprocal energy is

    E_rec = (2 pi / V) sum_{m != 0} exp(-k^2 / 4 alpha^2) / k^2 B(m) |FFT(Q)(m)|^2,

``k = m @ (2 pi inv(cell).T)``, with the B-spline modulus correction
``B(m) = prod_a |b_a(m_a)|^2``. A real FFT holds half of the m set. The potential
is ``dE/dq`` (E is quadratic in q), forces and stress come from autodiff through the
spreading (a scatter whose transpose is a gather).

The real-space, self and background terms are Ewald's (:mod:`jaxlr.kernels.ewald`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr.kernels.ewald import _self_and_background, real_space_energy
from jaxlr.neighbors import Pairs
from jaxlr.units import COULOMB

__all__ = [
    "PMEConfig",
    "bspline_weights",
    "spread_charges",
    "pme_reciprocal_energy",
    "pme_energy",
    "pme_potential",
]

# Work towards the PME issue: the reciprocal kernel is here and tested against
# Ewald; tuning, method="pme" and slabs come with that issue.


@dataclasses.dataclass(frozen=True)
class PMEConfig:
    """Static PME parameters: splitting ``alpha`` (1/Å), ``mesh`` (K1, K2, K3),
    B-spline ``order`` and the real-space cutoff ``r_cut`` (Å; only for the full
    energy)."""

    alpha: float
    mesh: tuple[int, int, int]
    order: int = 6
    r_cut: float | None = None

    def __post_init__(self):
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        if len(self.mesh) != 3 or any(int(k) < 1 for k in self.mesh):
            raise ValueError(f"mesh must be 3 positive integers, got {self.mesh}")
        object.__setattr__(self, "mesh", tuple(int(k) for k in self.mesh))
        if not 3 <= self.order <= 12:
            raise ValueError(f"order must be in 3..12, got {self.order}")
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


def spread_charges(s, charges, mesh, order):
    """Q[k] = sum_i q_i prod_a M_p(u_ia - k_a) on the periodic mesh; s fractional (N, 3)."""
    mesh_np = np.asarray(mesh, np.int32)
    u = s * jnp.asarray(mesh_np, s.dtype)[None, :]
    base = jnp.floor(u)
    frac = u - base
    w = bspline_weights(frac, order)  # (N, 3, p): weight of grid point base - j
    j = np.arange(order, dtype=np.int32)
    idx = (base.astype(jnp.int32)[:, :, None] - j[None, None, :]) % mesh_np[None, :, None]
    w3 = w[:, 0, :, None, None] * w[:, 1, None, :, None] * w[:, 2, None, None, :]
    vals = charges[:, None, None, None] * w3
    i0 = idx[:, 0, :, None, None]
    i1 = idx[:, 1, None, :, None]
    i2 = idx[:, 2, None, None, :]
    flat = (i0 * mesh[1] + i1) * mesh[2] + i2
    q = jnp.zeros(int(np.prod(mesh_np)), s.dtype).at[flat.reshape(-1)].add(vals.reshape(-1))
    return q.reshape(mesh)


@functools.lru_cache(maxsize=64)
def _mesh_tables(mesh, order):
    """Static numpy tables: integer m per axis (FFT order, rfft on the last) and B(m)."""
    m = [
        np.fft.fftfreq(mesh[0], 1.0 / mesh[0]),
        np.fft.fftfreq(mesh[1], 1.0 / mesh[1]),
        np.arange(mesh[2] // 2 + 1),
    ]
    b = [
        _modulus(order, mesh[0]),
        _modulus(order, mesh[1]),
        _modulus(order, mesh[2])[: mesh[2] // 2 + 1],
    ]
    bmod = b[0][:, None, None] * b[1][None, :, None] * b[2][None, None, :]
    # rfft holds m3 >= 0: interior planes count twice (m and -m), 0 and Nyquist once
    weight3 = np.full(mesh[2] // 2 + 1, 2.0)
    weight3[0] = 1.0
    if mesh[2] % 2 == 0:
        weight3[-1] = 1.0
    return m, bmod * weight3[None, None, :]


def pme_reciprocal_energy(positions, charges, cell, *, config: PMEConfig):
    """Reciprocal-space energy (Gaussian units) by smooth PME on ``config.mesh``."""
    dtype = positions.dtype
    mesh, order = config.mesh, config.order
    s = positions @ jnp.linalg.inv(cell)
    q_mesh = spread_charges(s, charges.astype(dtype), mesh, order)
    q_hat = jnp.fft.rfftn(q_mesh)
    (m1, m2, m3), bmod = _mesh_tables(mesh, order)
    recip = 2.0 * jnp.pi * jnp.linalg.inv(cell).T
    m = np.stack(np.meshgrid(m1, m2, m3, indexing="ij"), axis=-1)
    k = jnp.asarray(m, dtype) @ recip
    k2 = jnp.sum(k * k, axis=-1)
    zero = np.all(m == 0, axis=-1)
    k2 = jnp.where(zero, 1.0, k2)
    g = jnp.where(zero, 0.0, jnp.exp(-k2 / (4.0 * config.alpha**2)) / k2)
    power = jnp.real(q_hat) ** 2 + jnp.imag(q_hat) ** 2
    volume = jnp.abs(jnp.linalg.det(cell))
    return (2.0 * jnp.pi / volume) * jnp.sum(g * jnp.asarray(bmod, dtype) * power)


def pme_energy(
    positions, charges, cell, pairs: Pairs, *, config: PMEConfig, sigma=None, prefactor=COULOMB
):
    """Full PME energy (eV with ``prefactor=COULOMB``): Ewald's real-space, self and
    background terms with the reciprocal part on the mesh. Arguments as
    :func:`jaxlr.kernels.ewald_energy`; ``config.r_cut`` is the real-space cutoff."""
    if config.r_cut is None:
        raise ValueError("config.r_cut is needed for the full PME energy")
    positions, charges, cell = jnp.asarray(positions), jnp.asarray(charges), jnp.asarray(cell)
    e = real_space_energy(
        positions, charges, cell, pairs, alpha=config.alpha, r_cut=config.r_cut, sigma=sigma
    )
    e = e + 0.5 * jnp.sum(charges * _self_and_background(charges, cell, config.alpha, sigma))
    e = e + pme_reciprocal_energy(positions, charges, cell, config=config)
    return prefactor * e


def pme_potential(
    positions, charges, cell, pairs: Pairs, *, config: PMEConfig, sigma=None, prefactor=COULOMB
):
    """(N,) PME potential phi_i = dE/dq_i (V with ``prefactor=COULOMB``); exact, since E
    is quadratic in q, so E = 1/2 sum q_i phi_i."""
    return jax.grad(pme_energy, argnums=1)(
        positions,
        jnp.asarray(charges),
        cell,
        pairs,
        config=config,
        sigma=sigma,
        prefactor=prefactor,
    )
