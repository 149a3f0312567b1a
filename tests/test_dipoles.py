"""Atomic dipoles (point and Gaussian) in the direct, Ewald and PME kernels and the
public API: limits of charge pairs, an independent spherical lattice sum, the
simple-cubic dipole lattice, splitting independence, derivatives, symmetries,
the field, the tuner's dipolar accuracy and input errors."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlr
from jaxlr.kernels import (
    EwaldConfig,
    PMEConfig,
    coulomb_energy,
    coulomb_field,
    ewald_energy,
    ewald_field,
    pme_energy,
    pme_field,
    surface_energy,
    tune_ewald,
)
from jaxlr.kernels.slab import slab_cell, slab_correction
from jaxlr.neighbors import neighbor_pairs
from tests.structures import random_rotation

SQRT_PI = math.sqrt(math.pi)
CELL = np.array([[6.0, 0.0, 0.0], [0.7, 6.3, 0.0], [0.4, -0.5, 5.6]])
#: a tight explicit Ewald config for CELL-sized cells (erfc(7) ~ 4e-23, e^{-k^2/4} ~ 1e-20)
TIGHT = EwaldConfig(1.0, 7.0, (14, 14, 14))


def tight(cell, alpha=1.0, digits=16):
    """Explicit Ewald config with truncation errors below ~10^-digits (no tuning)."""
    x = math.sqrt(digits * math.log(10.0))  # erfc(x) ~ exp(-x^2)
    lengths = np.linalg.norm(np.asarray(cell), axis=1)
    k_max = tuple(int(math.ceil(2 * alpha * x * length / (2 * math.pi))) for length in lengths)
    # the cutoff also covers the Gaussian correction of widths sigma <= 0.6
    return EwaldConfig(alpha, max(x / alpha, 8.0), k_max)


def tight_pme(alpha=1.0):
    # r_cut 8: the Gaussian correction erfc(r / sqrt(2 (s_i^2 + s_j^2))) / r of sigma
    # <= 0.6 must be negligible there too, or pairs crossing it make the energy jump
    return PMEConfig(alpha, (48, 48, 48), 10, 8.0)


def system(n=6, seed=0, charged=True, cell=CELL):
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0.0, 1.0, (n, 3)) @ cell
    q = rng.normal(size=n) if charged else np.zeros(n)
    q -= q.mean()
    mu = 0.4 * rng.normal(size=(n, 3))
    sig = rng.uniform(0.3, 0.6, n)
    return pos, q, mu, sig


def ewald(pos, q, mu, cell=CELL, sigma=None, config=TIGHT):
    pairs = neighbor_pairs(np.asarray(pos), config.r_cut, np.asarray(cell))
    return ewald_energy(
        jnp.asarray(pos),
        jnp.asarray(q),
        jnp.asarray(cell),
        pairs,
        config=config,
        sigma=sigma,
        prefactor=1.0,
        dipoles=None if mu is None else jnp.asarray(mu),
    )


def expand(pos, q, mu, h):
    """Each dipole -> charges +-1/h at r +- h mu / 2 (a dipole mu), the site charge at r."""
    n = len(q)
    p = jnp.concatenate([pos, pos + 0.5 * h * mu, pos - 0.5 * h * mu])
    qq = jnp.concatenate([q, jnp.full(n, 1.0 / h), jnp.full(n, -1.0 / h)])
    return p, qq


def intra_site(q, mu, h, sig):
    """Direct energy between the three charges of each expanded site (the +-c pair
    and the Gaussian self energies of +-c; q's terms with +-c cancel), less what the
    dipole model counts itself (the Gaussian dipole self energy)."""
    from scipy.special import erf

    c = 1.0 / h
    d = h * np.linalg.norm(mu, axis=1)
    if sig is None:
        return float(np.sum(-c * c / d))
    v = erf(d / (2.0 * sig)) / d
    self_q = c * c / (SQRT_PI * sig)
    self_mu = np.sum(mu * mu, axis=1) / (12.0 * SQRT_PI * sig**3)
    return float(np.sum(-c * c * v + self_q - self_mu))


@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("gaussian", [False, True])
def test_dipole_is_limit_of_two_opposite_charges(periodic, gaussian):
    pos, q, mu, sig = system(4, seed=1)
    sig = sig if gaussian else None

    @jax.jit
    def dipolar(p):
        if periodic:
            pairs = neighbor_pairs(np.asarray(pos), TIGHT.r_cut, CELL)
            args = (p, jnp.asarray(q), jnp.asarray(CELL), pairs)
            return ewald_energy(*args, config=TIGHT, sigma=sig, prefactor=1.0, dipoles=mu)
        return coulomb_energy(p, q, sigma=sig, prefactor=1.0, dipoles=mu)

    def charges_only(p, h, pairs):
        pp, qq = expand(p, jnp.asarray(q), jnp.asarray(mu), h)
        s3 = None if sig is None else np.concatenate([sig] * 3)
        if periodic:
            args = (pp, qq, jnp.asarray(CELL), pairs)
            return ewald_energy(*args, config=TIGHT, sigma=s3, prefactor=1.0)
        return coulomb_energy(pp, qq, sigma=s3, prefactor=1.0)

    p = jnp.asarray(pos)
    e_dip, f_dip = jax.value_and_grad(dipolar)(p)
    # Richardson: E(h) = E0 + c h^2 + O(h^4); the intra-site terms move with the site
    # and do not change the forces
    out = []
    value_and_grad = jax.jit(jax.value_and_grad(charges_only))
    for h in (4e-2, 2e-2):  # not smaller: the positions round the +-c offsets
        pairs = neighbor_pairs(np.asarray(expand(pos, q, mu, h)[0]), TIGHT.r_cut, CELL)
        e_q, f_q = value_and_grad(p, jnp.asarray(h), pairs if periodic else None)
        out.append((float(e_q) - intra_site(q, mu, h, sig), f_q))
    e_q = (4.0 * out[1][0] - out[0][0]) / 3.0
    f_q = (4.0 * out[1][1] - out[0][1]) / 3.0
    np.testing.assert_allclose(float(e_dip), e_q, rtol=5e-6, atol=1e-9)
    np.testing.assert_allclose(f_dip, f_q, rtol=1e-6, atol=1e-8)


def test_gaussian_dipole_self_energy():
    # one Gaussian dipole: the limit of two opposite Gaussian charges, less nothing
    sig, mu, h = 0.7, np.array([0.3, -0.2, 0.5]), 1e-3
    p, qq = expand(jnp.zeros((1, 3)), jnp.zeros(1), jnp.asarray(mu[None]), h)
    e_pair = coulomb_energy(p[1:], qq[1:], sigma=sig, prefactor=1.0)
    e = coulomb_energy(jnp.zeros((1, 3)), None, sigma=sig, prefactor=1.0, dipoles=mu[None])
    expected = mu @ mu / (12.0 * SQRT_PI * sig**3)
    np.testing.assert_allclose(float(e), expected, rtol=1e-12)
    np.testing.assert_allclose(float(e_pair), expected, rtol=1e-5)


def spherical_sum(pos, q, mu, cell, radii):
    """Plain numpy sum over whole-cell images inside spheres of the given radii (point
    charges and dipoles, vacuum outside), averaged over the radii to damp the shell
    noise."""
    heights = abs(np.linalg.det(cell)) / np.linalg.norm(
        np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1
    )
    reach = int(np.ceil(max(radii) / heights.min())) + 1
    m = np.array(list(itertools.product(range(-reach, reach + 1), repeat=3)))
    shifts = m @ cell
    norm = np.linalg.norm(shifts, axis=1)
    keep = norm <= max(radii)
    shifts, norm = shifts[keep], norm[keep]
    per_shift = np.zeros(len(shifts))
    n = len(q)
    for i in range(n):
        for j in range(n):
            r = pos[j] - pos[i] + shifts
            d = np.linalg.norm(r, axis=1)
            ok = d > 1e-12
            d = np.where(ok, d, 1.0)
            ri, rj = r @ mu[i], r @ mu[j]
            e = q[i] * q[j] / d + (q[j] * ri - q[i] * rj + mu[i] @ mu[j]) / d**3
            e -= 3.0 * ri * rj / d**5
            per_shift += 0.5 * np.where(ok, e, 0.0)
    order = np.argsort(norm)
    cum = np.cumsum(per_shift[order])
    idx = np.searchsorted(norm[order], radii, side="right") - 1
    return float(np.mean(cum[idx]))


@pytest.mark.parametrize("charged", [False, True])
def test_ewald_and_pme_against_spherical_numpy_sum(charged):
    rng = np.random.default_rng(3)
    cell = np.array([[5.0, 0.0, 0.0], [0.8, 5.5, 0.0], [0.3, -0.4, 4.8]])
    pos = rng.uniform(0.0, 1.0, (4, 3)) @ cell
    q = np.array([1.0, -1.0, 0.5, -0.5]) if charged else np.zeros(4)
    mu = 0.4 * rng.normal(size=(4, 3))
    reference = spherical_sum(pos, q, mu, cell, np.linspace(60.0, 100.0, 41))
    # sphere in vacuum = tin-foil + 2 pi |M|^2 / (3 V)
    surface = float(surface_energy(jnp.asarray(pos), jnp.asarray(q), jnp.asarray(mu), cell))
    for method in ("ewald", "pme"):
        e = jaxlr.electrostatic_energy(
            pos, q, cell, dipoles=mu, method=method, accuracy=1e-8, prefactor=1.0
        )
        np.testing.assert_allclose(float(e) + surface, reference, rtol=2e-5)


@pytest.mark.parametrize("gaussian", [False, True])
def test_energy_independent_of_splitting(gaussian):
    pos, q, mu, sig = system(8, seed=2)
    sig = sig if gaussian else None
    energies = []
    for alpha in (0.7, 1.3):
        energies.append(float(ewald(pos, q, mu, sigma=sig, config=tight(CELL, alpha))))
    energies.append(float(pme_energy_of(pos, q, mu, CELL, tight_pme(), sig)))
    np.testing.assert_allclose(energies, energies[0], rtol=1e-8)


def pme_energy_of(pos, q, mu, cell, cfg, sig=None):
    pairs = neighbor_pairs(np.asarray(pos), cfg.r_cut, np.asarray(cell))
    args = (jnp.asarray(pos), jnp.asarray(q), jnp.asarray(cell), pairs)
    return pme_energy(*args, config=cfg, sigma=sig, prefactor=1.0, dipoles=jnp.asarray(mu))


@pytest.mark.parametrize("method", ["ewald", "pme"])
def test_simple_cubic_parallel_dipoles(method):
    # tin-foil energy per dipole -2 pi mu^2 / (3 a^3): the lattice sum of the dipole
    # tensor over a sphere vanishes by cubic symmetry (so the vacuum-sphere energy is 0),
    # and tin-foil removes the surface term 2 pi M^2 / (3 V) of the sphere
    a = 3.0
    cell = a * np.eye(3)
    # explicit tight parameters: erfc(6) ~ 2e-17, the k set / mesh reach exp(-k^2/4) < e^-70
    if method == "ewald":
        configs = EwaldConfig(1.0, 6.0, (8, 8, 8)), EwaldConfig(1.0, 6.0, (16, 16, 16))
    else:
        configs = PMEConfig(1.0, (24,) * 3, 10, 6.0), PMEConfig(1.0, (48,) * 3, 10, 6.0)
    origin = np.zeros((1, 3))
    fn = jaxlr.prepare_energy(origin, None, cell, dipoles=np.ones((1, 3)), config=configs[0])
    for mu in ([0.0, 0.0, 1.0], [0.3, 0.5, -0.2]):
        mu = np.array([mu])
        e = fn(origin, np.zeros(1), cell, mu) / jaxlr.units.COULOMB
        expected = -2.0 * math.pi * float(mu[0] @ mu[0]) / (3 * a**3)
        np.testing.assert_allclose(float(e), expected, rtol=1e-8)
    # a 2x2x2 supercell holds 8 times the energy
    pos = a * np.array(list(itertools.product([0, 1], repeat=3)), float)
    mus = np.tile(mu, (8, 1))
    fn8 = jaxlr.prepare_energy(pos, None, 2 * cell, dipoles=mus, config=configs[1])
    e8 = fn8(pos, np.zeros(8), 2 * cell, mus) / jaxlr.units.COULOMB
    np.testing.assert_allclose(float(e8), 8 * float(e), rtol=1e-8)


@pytest.mark.parametrize("method", ["direct", "ewald", "pme"])
def test_forces_stress_and_dipole_gradient_by_finite_differences(method):
    pos, q, mu, sig = system(6, seed=4)
    cell = None if method == "direct" else jnp.asarray(CELL)
    fn = jaxlr.prepare_energy(
        pos,
        q,
        None if cell is None else CELL,
        dipoles=mu,
        sigma=sig,
        method=method,
        prefactor=1.0,
        config=None if cell is None else (tight(CELL) if method == "ewald" else tight_pme()),
    )
    pos, q, mu = jnp.asarray(pos), jnp.asarray(q), jnp.asarray(mu)
    e, f, stress = jaxlr.energy_forces_stress(lambda p, c: fn(p, q, c, mu), pos, cell)
    eps = 1e-5
    rng = np.random.default_rng(0)
    d = jnp.asarray(rng.normal(size=pos.shape))
    fd = (fn(pos + eps * d, q, cell, mu) - fn(pos - eps * d, q, cell, mu)) / (2 * eps)
    np.testing.assert_allclose(-float(jnp.sum(f * d)), float(fd), rtol=1e-6)
    dm = jnp.asarray(rng.normal(size=mu.shape))
    g_mu = jax.grad(lambda m: fn(pos, q, cell, m))(mu)
    fd = (fn(pos, q, cell, mu + eps * dm) - fn(pos, q, cell, mu - eps * dm)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.sum(g_mu * dm)), float(fd), rtol=1e-6)
    if cell is not None:
        strain = jnp.asarray(0.5 * (rng.normal(size=(3, 3)) + rng.normal(size=(3, 3)).T))

        def strained(t):
            deform = jnp.eye(3) + t * strain
            return fn(pos @ deform, q, cell @ deform, mu)

        fd = (strained(eps) - strained(-eps)) / (2 * eps)
        volume = abs(float(jnp.linalg.det(cell)))
        np.testing.assert_allclose(float(jnp.sum(stress * strain)) * volume, float(fd), rtol=1e-6)


@pytest.mark.parametrize("method", ["direct", "ewald", "pme"])
def test_rotation_equivariance(method):
    pos, q, mu, sig = system(6, seed=5)
    rot = random_rotation(np.random.default_rng(1))
    cell = None if method == "direct" else CELL
    fn = jaxlr.prepare_energy(
        pos, q, cell, dipoles=mu, sigma=sig, method=method, accuracy=1e-8, prefactor=1.0
    )
    e, f = fn(pos, q, cell, mu), fn.field(pos, q, cell, mu)
    rotated = None if cell is None else cell @ rot.T
    e_r = fn(pos @ rot.T, q, rotated, mu @ rot.T)
    f_r = fn.field(pos @ rot.T, q, rotated, mu @ rot.T)
    np.testing.assert_allclose(float(e_r), float(e), rtol=1e-9)
    np.testing.assert_allclose(f_r, np.asarray(f) @ rot.T, rtol=1e-7, atol=1e-9)


def test_field_definitions():
    pos, q, mu, sig = system(5, seed=6)
    p, qq, mm = jnp.asarray(pos), jnp.asarray(q), jnp.asarray(mu)
    # point sites: -grad phi of the other sources at atom 0
    f = coulomb_field(p, qq, mm, prefactor=1.0)

    def phi0(r):
        d = p[1:] - r
        dist = jnp.linalg.norm(d, axis=1)
        return jnp.sum(qq[1:] / dist) - jnp.sum(jnp.sum(mm[1:] * d, axis=1) / dist**3)

    np.testing.assert_allclose(f[0], -jax.grad(phi0)(p[0]), rtol=1e-10)
    # every route: field = -dE/dmu + the Gaussian dipole self term's gradient
    cfg, pcfg = tight(CELL), tight_pme()
    self_grad = mm / (6.0 * SQRT_PI * jnp.asarray(sig)[:, None] ** 3)
    for field, energy, cfg_ in ((ewald_field, ewald_energy, cfg), (pme_field, pme_energy, pcfg)):
        pairs = neighbor_pairs(pos, cfg_.r_cut, CELL)
        args = (p, qq, jnp.asarray(CELL), pairs)
        kw = dict(config=cfg_, sigma=sig, prefactor=1.0)
        g = jax.grad(lambda m, kw=kw, args=args, energy=energy: energy(*args, dipoles=m, **kw))(mm)
        f = field(p, qq, mm, jnp.asarray(CELL), pairs, **kw)
        np.testing.assert_allclose(f, -(g - self_grad), rtol=1e-9, atol=1e-12)
        # E = 1/2 sum q phi - 1/2 sum mu . field + Gaussian dipole self energy
        e = energy(*args, dipoles=mm, **kw)
        phi = jax.grad(lambda c, kw=kw, energy=energy: energy(p, c, *args[2:], dipoles=mm, **kw))(
            qq
        )
        self_e = jnp.sum(jnp.sum(mm * mm, 1) / (12 * SQRT_PI * jnp.asarray(sig) ** 3))
        np.testing.assert_allclose(
            float(e), float(0.5 * qq @ phi - 0.5 * jnp.sum(mm * f) + self_e), rtol=1e-10
        )


@pytest.mark.parametrize("method", ["direct", "ewald", "pme"])
def test_field_operator_is_linear_jittable_and_matches(method):
    pos, q, mu, sig = system(6, seed=7)
    cell = None if method == "direct" else CELL
    config = {"direct": None, "ewald": tight(CELL, digits=10), "pme": tight_pme()}[method]
    fn = jaxlr.prepare_energy(
        pos, q, cell, dipoles=mu, sigma=sig, method=method, prefactor=1.0, config=config
    )
    field_fn, overflow = fn.field_operator(
        jnp.asarray(pos), None if cell is None else jnp.asarray(cell)
    )
    assert not bool(overflow)
    jf = jax.jit(field_fn)
    f = jf(jnp.asarray(q), jnp.asarray(mu))
    f_sum = jf(jnp.asarray(q), jnp.zeros_like(jnp.asarray(mu))) + jf(
        jnp.zeros_like(jnp.asarray(q)), jnp.asarray(mu)
    )
    np.testing.assert_allclose(f, f_sum, atol=1e-12)
    np.testing.assert_allclose(f, fn.field(pos, q, cell, mu), atol=1e-12)
    if method != "pme":  # the public entry point (it tunes on the host)
        f_api = jaxlr.electrostatic_field(
            pos, q, cell, dipoles=mu, sigma=sig, method=method, prefactor=1.0
        )
        # tuned for a 1e-6 relative energy error: the field agrees to ~1e-5 of its scale
        np.testing.assert_allclose(f, f_api, rtol=1e-4, atol=1e-5)
    # vmap over a batch of dipoles
    batch = jnp.stack([jnp.asarray(mu), 2.0 * jnp.asarray(mu)])
    fb = jax.vmap(lambda m: field_fn(None, m))(batch)
    np.testing.assert_allclose(fb[1], 2.0 * fb[0], rtol=1e-10, atol=1e-12)


def test_no_recompile_and_finite_gradients_at_zero_and_padding():
    pos, q, mu, sig = system(6, seed=8)
    # a padded atom on top of a real one: zero charge, zero dipole, width 0 (point)
    pos = np.concatenate([pos, pos[:1]])
    q = np.append(q, 0.0)
    mu = np.concatenate([mu, np.zeros((1, 3))])
    sig = np.append(sig, 0.0)
    fn = jaxlr.prepare_energy(pos, q, CELL, dipoles=mu, sigma=sig, method="ewald", prefactor=1.0)
    traces = []

    @jax.jit
    def e(p, m, c):
        traces.append(1)
        return fn(p, jnp.asarray(q), c, m)

    e(jnp.asarray(pos), jnp.asarray(mu), jnp.asarray(CELL))
    e(jnp.asarray(pos) + 0.01, 0.5 * jnp.asarray(mu), jnp.asarray(CELL) * 1.01)
    assert len(traces) == 1
    zeros = jnp.zeros_like(jnp.asarray(mu))
    for m in (zeros, jnp.asarray(mu)):
        g = jax.grad(e, argnums=(0, 1, 2))(jnp.asarray(pos), m, jnp.asarray(CELL))
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in g)
    hess = jax.hessian(lambda p: e(p, zeros, jnp.asarray(CELL)))(jnp.asarray(pos))
    assert bool(jnp.all(jnp.isfinite(hess)))
    hess = jax.hessian(lambda m: e(jnp.asarray(pos), m, jnp.asarray(CELL)))(zeros)
    assert bool(jnp.all(jnp.isfinite(hess)))
    # direct route, point sites on top of each other
    h = jax.hessian(lambda p: coulomb_energy(p, jnp.asarray(q), prefactor=1.0, dipoles=zeros))(
        jnp.asarray(pos)
    )
    assert bool(jnp.all(jnp.isfinite(h)))


@pytest.mark.parametrize("method", ["ewald", "pme"])
def test_float32_keeps_dtype(method):
    pos, q, mu, _ = system(6, seed=9)
    fn = jaxlr.prepare_energy(pos, q, CELL, dipoles=mu, method=method, accuracy=1e-5, prefactor=1.0)
    args32 = [jnp.asarray(x, jnp.float32) for x in (pos, q, CELL, mu)]
    e32 = fn(*args32)
    e64 = fn(*[jnp.asarray(x) for x in (pos, q, CELL, mu)])
    assert e32.dtype == jnp.float32
    np.testing.assert_allclose(float(e32), float(e64), rtol=1e-4)
    f32 = fn.field(*args32)
    assert f32.dtype == jnp.float32


@pytest.mark.parametrize("charged", [False, True])
def test_tuner_meets_dipolar_accuracy(charged):
    rng = np.random.default_rng(10)
    n = 64
    length = (n / 0.1) ** (1 / 3)
    cell = np.diag([length, 1.1 * length, 0.9 * length])
    cell[1, 0] = 1.0
    pos = rng.uniform(0, 1, (n, 3)) @ cell
    q = rng.normal(size=n) if charged else np.zeros(n)
    q -= q.mean()
    mu = 0.5 * rng.normal(size=(n, 3))
    ref = float(
        ewald(pos, q, mu, cell, config=tune_ewald(pos, q, cell, accuracy=1e-13, dipoles=mu))
    )
    cases = [(1e-5, "ewald")] if charged else [(1e-4, "ewald"), (1e-6, "ewald"), (1e-5, "pme")]
    for accuracy, method in cases:
        e = jaxlr.electrostatic_energy(
            pos, q, cell, dipoles=mu, method=method, accuracy=accuracy, prefactor=1.0
        )
        assert abs(float(e) - ref) <= accuracy * abs(ref), (method, accuracy)


def test_slab_correction_carries_the_dipoles():
    # a dipolar slab summed in periodic cells of two different lengths along z: the
    # corrected energies agree only if the dipoles enter M_z and the second moment
    rng = np.random.default_rng(11)
    cell = np.array([[6.0, 0.0, 0.0], [1.0, 6.0, 0.0], [0.0, 0.0, 1.0]])
    pos = rng.uniform(0, 1, (6, 3)) * np.array([6.0, 6.0, 3.0])
    q = rng.normal(size=6)  # charged slab
    mu = 0.5 * rng.normal(size=(6, 3))
    energies = []
    for length in (30.0, 45.0):
        periodic = np.asarray(slab_cell(jnp.asarray(cell), length))
        e = ewald(pos, q, mu, periodic, config=tight(periodic, digits=12))
        e = e + slab_correction(
            jnp.asarray(pos), jnp.asarray(q), jnp.asarray(cell), length, None, jnp.asarray(mu)
        )
        energies.append(float(e))
    np.testing.assert_allclose(energies[0], energies[1], rtol=2e-6)
    # and the public route agrees
    e = jaxlr.electrostatic_energy(
        pos, q, cell, dipoles=mu, pbc=(True, True, False), accuracy=1e-6, prefactor=1.0
    )
    np.testing.assert_allclose(float(e), energies[1], rtol=1e-5)


def test_bad_dipoles_raise():
    pos, q, mu, _ = system(4)
    with pytest.raises(ValueError, match="dipoles must have shape"):
        jaxlr.electrostatic_energy(pos, q, dipoles=mu[:, :2])
    with pytest.raises(ValueError, match="dipoles must have shape"):
        jaxlr.electrostatic_field(pos, q, CELL, dipoles=mu[:3])
    bad = mu.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="dipoles has non-finite"):
        jaxlr.prepare_energy(pos, q, CELL, dipoles=bad)
    with pytest.raises(ValueError, match="charges is None"):
        jaxlr.electrostatic_energy(pos, None)
    # charges None with dipoles means zeros
    e = jaxlr.electrostatic_energy(pos, None, dipoles=mu, prefactor=1.0)
    e0 = jaxlr.electrostatic_energy(pos, np.zeros(4), dipoles=mu, prefactor=1.0)
    assert float(e) == float(e0)
