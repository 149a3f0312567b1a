import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxlr
from jaxlr.kernels import EwaldConfig, ewald_energy, ewald_potential, tune_ewald
from jaxlr.neighbors import neighbor_pairs
from tests.structures import MADELUNG, MADELUNG_ISSUE, crystal, numpy_ewald, random_rotation


def energy(pos, q, cell, accuracy=1e-10, **kw):
    return float(jaxlr.electrostatic_energy(pos, q, cell, accuracy=accuracy, prefactor=1.0, **kw))


def madelung(pos, q, cell, d):
    return -energy(pos, q, cell) * d / (len(q) / 2)


@pytest.mark.parametrize("name", list(MADELUNG))
@pytest.mark.parametrize("primitive", [False, True])
def test_madelung(name, primitive):
    pos, q, cell, d = crystal(name, primitive)
    m = madelung(pos, q, cell, d)
    assert m == pytest.approx(MADELUNG[name], rel=1e-8)
    assert m == pytest.approx(MADELUNG_ISSUE[name], rel=1e-6)


@pytest.mark.parametrize("name", list(MADELUNG))
def test_madelung_translated_rotated_scaled(name):
    rng = np.random.default_rng(1)
    pos, q, cell, d = crystal(name, primitive=True)
    ref = MADELUNG[name]
    shifted = pos + np.array([0.1234, -0.377, 0.2911])  # not a lattice vector
    assert madelung(shifted, q, cell, d) == pytest.approx(ref, rel=1e-8)
    rot = random_rotation(rng)
    assert madelung(pos @ rot.T, q, cell @ rot.T, d) == pytest.approx(ref, rel=1e-8)
    for scale in (0.5, 3.0):
        # E goes as 1 / length
        assert madelung(pos * scale, q, cell * scale, d * scale) == pytest.approx(ref, rel=1e-8)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.5])
def test_charged_simple_cubic_with_background(alpha):
    pos, q, cell = np.zeros((1, 3)), np.ones(1), np.eye(3)
    x = math.sqrt(-math.log(1e-16))
    km = math.ceil(2 * alpha * x / (2 * math.pi))
    cfg = EwaldConfig(alpha, x / alpha, (km, km, km))
    pairs = neighbor_pairs(pos, cfg.r_cut, cell)
    e = ewald_energy(
        jnp.asarray(pos), jnp.asarray(q), jnp.asarray(cell), pairs, config=cfg, prefactor=1.0
    )
    assert float(e) == pytest.approx(-2.837297479 / 2, rel=1e-9)


def skewed_system(rng, n=24, charged=False):
    cell = np.array([[5.0, 0.0, 0.0], [3.9, 4.1, 0.0], [-2.2, 2.7, 4.6]])
    pos = rng.uniform(0, 1, (n, 3)) @ cell
    q = rng.normal(size=n)
    if not charged:
        q -= q.mean()
    return pos, q, cell


@pytest.mark.parametrize("charged", [False, True])
def test_against_independent_numpy_sum_skewed_cell(charged):
    rng = np.random.default_rng(7)
    pos, q, cell = skewed_system(rng, charged=charged)
    ref = numpy_ewald(pos, q, cell)
    assert energy(pos, q, cell, accuracy=1e-10) == pytest.approx(ref, rel=1e-9)


def test_energy_independent_of_alpha():
    rng = np.random.default_rng(8)
    pos, q, cell = skewed_system(rng, charged=True)
    sig = rng.uniform(0.3, 0.8, len(q))
    for sigma in (None, sig):
        base = tune_ewald(pos, q, cell, accuracy=1e-10, sigma=sigma)
        values = []
        for f in (0.7, 1.0, 1.6):
            cfg = tune_ewald(pos, q, cell, accuracy=1e-11, sigma=sigma, alpha=base.alpha * f)
            assert cfg.alpha == base.alpha * f
            pairs = neighbor_pairs(pos, cfg.r_cut, cell)
            values.append(
                float(
                    ewald_energy(
                        jnp.asarray(pos),
                        jnp.asarray(q),
                        jnp.asarray(cell),
                        pairs,
                        config=cfg,
                        sigma=sigma,
                        prefactor=1.0,
                    )
                )
            )
        assert np.ptp(values) <= 1e-9 * abs(values[0])


def test_potential_gives_energy():
    rng = np.random.default_rng(9)
    pos, q, cell = skewed_system(rng, charged=True)
    for sigma in (None, 0.5):
        phi = jaxlr.electrostatic_potential(pos, q, cell, accuracy=1e-10, sigma=sigma)
        e = jaxlr.electrostatic_energy(pos, q, cell, accuracy=1e-10, sigma=sigma)
        assert float(0.5 * jnp.sum(jnp.asarray(q) * phi)) == pytest.approx(float(e), rel=1e-11)
        # phi is the physical potential: dE/dq_i (E is quadratic in q)
        fn = jaxlr.prepare_energy(pos, q, cell, accuracy=1e-10, sigma=sigma)
        dq = jax.grad(fn, argnums=1)(jnp.asarray(pos), jnp.asarray(q), jnp.asarray(cell))
        np.testing.assert_allclose(np.asarray(dq), np.asarray(phi), rtol=1e-9, atol=1e-10)


def test_gaussian_charges_tend_to_direct_sum():
    rng = np.random.default_rng(10)
    pos = rng.uniform(0, 4, (6, 3))
    q = rng.normal(size=6)
    q -= q.mean()
    sigma = rng.uniform(0.4, 0.9, 6)
    direct = energy(pos, q, None, sigma=sigma)
    diffs = []
    for box in (12.0, 24.0, 48.0):
        shift = 0.5 * box - 2.0
        diffs.append(abs(energy(pos + shift, q, box * np.eye(3), sigma=sigma) - direct))
    # a neutral molecule in a periodic box: the error falls as the box grows (dipole ~ 1/L^3)
    assert diffs[0] > diffs[1] > diffs[2]
    assert diffs[2] < 1e-3 * abs(direct)


def test_gaussian_self_energy_single_charge():
    # one Gaussian charge of width sigma in a huge box with background: E -> q^2/(2 sqrt(pi) sigma)
    sigma, box = 0.7, 60.0
    e = energy(np.full((1, 3), 30.0), np.ones(1), box * np.eye(3), sigma=sigma)
    madelung_sc = -2.837297479 / 2 / box
    assert e == pytest.approx(
        1 / (2 * math.sqrt(math.pi) * sigma) + madelung_sc + 2 * math.pi * sigma**2 / box**3,
        rel=1e-9,
    )


def prepared(pos, q, cell, **kw):
    fn = jaxlr.prepare_energy(pos, q, cell, accuracy=1e-11, **kw)
    return lambda p, c: fn(p, jnp.asarray(q), c)


def test_forces_and_stress_by_finite_differences():
    rng = np.random.default_rng(11)
    pos, q, cell = skewed_system(rng, n=10, charged=True)
    f = prepared(pos, q, cell, sigma=0.4)
    p0, c0 = jnp.asarray(pos), jnp.asarray(cell)
    e, forces, stress = jaxlr.energy_forces_stress(f, p0, c0)
    h = 1e-5
    for a, b in [(0, 0), (3, 1), (7, 2)]:
        dp = jnp.zeros_like(p0).at[a, b].set(h)
        fd = (f(p0 + dp, c0) - f(p0 - dp, c0)) / (2 * h)
        assert float(-forces[a, b]) == pytest.approx(float(fd), rel=1e-6, abs=1e-8)
    volume = abs(np.linalg.det(cell))
    for a, b in [(0, 0), (1, 2), (2, 1), (0, 2)]:
        eps = jnp.zeros((3, 3)).at[a, b].set(h)
        ep = f(p0 @ (jnp.eye(3) + eps), c0 @ (jnp.eye(3) + eps))
        em = f(p0 @ (jnp.eye(3) - eps), c0 @ (jnp.eye(3) - eps))
        assert float(stress[a, b]) == pytest.approx(
            float((ep - em) / (2 * h) / volume), rel=1e-6, abs=1e-9
        )
    np.testing.assert_allclose(np.asarray(stress), np.asarray(stress).T, atol=1e-9)
    # net force vanishes (momentum conservation)
    np.testing.assert_allclose(np.asarray(forces.sum(0)), 0.0, atol=1e-7)


def test_second_derivatives_finite_and_match_fd():
    rng = np.random.default_rng(12)
    pos, q, cell = skewed_system(rng, n=6)
    f = prepared(pos, q, cell)
    check_grads(
        lambda p: f(p, jnp.asarray(cell)),
        (jnp.asarray(pos),),
        order=2,
        modes=["rev"],
        atol=1e-5,
        rtol=1e-5,
    )
    hess = jax.hessian(lambda p: f(p, jnp.asarray(cell)))(jnp.asarray(pos))
    assert np.all(np.isfinite(np.asarray(hess)))


def test_invariances_and_supercell():
    rng = np.random.default_rng(13)
    pos, q, cell = skewed_system(rng, n=12)
    e0 = energy(pos, q, cell)
    rot = random_rotation(rng)
    assert energy(pos @ rot.T, q, cell @ rot.T) == pytest.approx(e0, rel=1e-9)
    assert energy(pos + np.array([1.3, -7.1, 2.2]), q, cell) == pytest.approx(e0, rel=1e-9)
    perm = rng.permutation(len(q))
    assert energy(pos[perm], q[perm], cell) == pytest.approx(e0, rel=1e-9)
    # wrapping an atom into a neighbouring image changes nothing
    moved = pos.copy()
    moved[0] += cell[1] - 2 * cell[2]
    assert energy(moved, q, cell) == pytest.approx(e0, rel=1e-9)
    # 2 x 1 x 3 supercell: energy scales with the number of cells
    reps = [pos + i * cell[0] + k * cell[2] for i in range(2) for k in range(3)]
    sup = np.concatenate(reps)
    sup_cell = cell * np.array([2, 1, 3])[:, None]
    assert energy(sup, np.tile(q, 6), sup_cell) == pytest.approx(6 * e0, rel=1e-9)


def test_kernel_potential_full_and_half_lists_agree():
    rng = np.random.default_rng(14)
    pos, q, cell = skewed_system(rng, n=15)
    cfg = tune_ewald(pos, q, cell, accuracy=1e-10)
    args = (jnp.asarray(pos), jnp.asarray(q), jnp.asarray(cell))
    half = ewald_potential(*args, neighbor_pairs(pos, cfg.r_cut, cell), config=cfg)
    full = ewald_potential(*args, neighbor_pairs(pos, cfg.r_cut, cell, half=False), config=cfg)
    np.testing.assert_allclose(np.asarray(half), np.asarray(full), rtol=1e-12, atol=1e-12)


def test_reciprocal_custom_jvp_matches_plain_autodiff():
    from jaxlr.kernels import ewald as ew

    rng = np.random.default_rng(15)
    pos, q, cell = skewed_system(rng, n=9, charged=True)
    cfg = tune_ewald(pos, q, cell, accuracy=1e-8)
    assert cfg.k_columns is not None  # the tuner's trimmed k set

    def plain(p, qq, c):
        s_groups = ew._structure_factors(
            ew._phases(p, c, cfg.k_max, p.dtype), qq, cfg.k_groups, cfg.k_max, 4
        )
        total = 0.0
        for x, (m1, m2, h) in zip(s_groups, cfg.k_groups):
            w = ew._group_weights(c, cfg.alpha, m1, m2, h, p.dtype)
            total = total + jnp.sum(w * jnp.abs(x) ** 2)
        return 2 * jnp.pi / jnp.abs(jnp.linalg.det(c)) * total

    def custom(p, qq, c):
        return ew.reciprocal_energy(p, qq, c, alpha=cfg.alpha, k_max=cfg.k_max, config=cfg)

    args = (jnp.asarray(pos), jnp.asarray(q), jnp.asarray(cell))
    assert float(custom(*args)) == pytest.approx(float(plain(*args)), rel=1e-12)
    g_plain = jax.jit(jax.grad(plain, argnums=(0, 1, 2)))(*args)
    g_custom = jax.jit(jax.grad(custom, argnums=(0, 1, 2)))(*args)
    for a, b in zip(g_plain, g_custom):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-10, atol=1e-12)
    # forward mode and second order through the custom rule
    h_plain = jax.jit(jax.hessian(plain))(*args)  # positions
    h_custom = jax.jit(jax.hessian(custom))(*args)
    np.testing.assert_allclose(np.asarray(h_custom), np.asarray(h_plain), rtol=1e-9, atol=1e-10)
    # forward mode: the JVP along a random direction equals grad . v
    v = tuple(jnp.asarray(rng.normal(size=np.shape(a))) for a in args)
    _, tangent = jax.jvp(custom, args, v)
    expected = sum(jnp.sum(g * t) for g, t in zip(g_custom, v))
    assert float(tangent) == pytest.approx(float(expected), rel=1e-10)


def test_mixed_point_and_gaussian_charges():
    # sigma_i = 0 marks a point charge among Gaussian ones (electrolyte around an
    # electrode): reference = point Ewald + explicit image sum of the Gaussian
    # screening -erfc(r / w_ij) / r over pairs with a Gaussian partner + self terms
    from scipy.special import erfc

    from jaxlr.kernels import coulomb_energy

    rng = np.random.default_rng(21)
    pos, q, cell = skewed_system(rng, n=12, charged=True)
    n = len(q)
    sig = np.where(np.arange(n) % 3 == 0, 0.0, rng.uniform(0.5, 0.9, n))
    ref = numpy_ewald(pos, q, cell)
    volume = abs(np.linalg.det(cell))
    for S in itertools.product(range(-3, 4), repeat=3):
        d = pos[None, :, :] - pos[:, None, :] + np.asarray(S) @ cell
        r = np.linalg.norm(d, axis=-1)
        s2 = sig[:, None] ** 2 + sig[None, :] ** 2
        ok = (s2 > 0) & (r > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where(ok, -erfc(r / np.sqrt(2 * np.where(ok, s2, 1))) / r, 0.0)
        ref += 0.5 * np.sum(np.outer(q, q) * v)
    g = sig > 0
    ref += np.sum(q[g] ** 2 / (2 * np.sqrt(np.pi) * sig[g]))
    ref += 2 * np.pi * q.sum() / volume * np.sum(q * sig**2)  # background x Gaussian
    for method in ("ewald", "pme"):
        e = energy(pos, q, cell, accuracy=1e-9, sigma=sig, method=method)
        assert e == pytest.approx(ref, rel=1e-7, abs=1e-8), method
    # molecule: the direct sum with point-point pairs 1/r
    pm = pos[:5]
    dm = np.linalg.norm(pm[:, None] - pm[None], axis=-1)
    s2 = sig[:5, None] ** 2 + sig[None, :5] ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        from scipy.special import erf

        v = np.where(s2 > 0, erf(dm / np.sqrt(2 * np.where(s2 > 0, s2, 1))), 1.0) / dm
    np.fill_diagonal(v, 0.0)
    refm = 0.5 * q[:5] @ v @ q[:5] + sum(
        q[i] ** 2 / (2 * np.sqrt(np.pi) * sig[i]) for i in range(5) if sig[i] > 0
    )
    assert energy(pm, q[:5], None, sigma=sig[:5]) == pytest.approx(refm, rel=1e-12)
    grad = jax.grad(coulomb_energy)(jnp.asarray(pm), jnp.asarray(q[:5]), sigma=jnp.asarray(sig[:5]))
    assert np.all(np.isfinite(np.asarray(grad)))


def test_ewald_matrix_is_the_hessian_in_the_charges():
    from jaxlr.kernels import ewald_matrix

    rng = np.random.default_rng(22)
    pos, q, cell = skewed_system(rng, n=10, charged=True)
    sig = np.where(np.arange(10) % 4 == 0, 0.0, rng.uniform(0.5, 0.9, 10))
    cfg = tune_ewald(pos, q, cell, accuracy=1e-10, sigma=sig)
    pairs = neighbor_pairs(pos, cfg.r_cut, cell, half=True)
    args = (jnp.asarray(pos), jnp.asarray(cell), pairs)
    a = np.asarray(ewald_matrix(*args, config=cfg, sigma=jnp.asarray(sig)))
    phi = ewald_potential(
        args[0], jnp.asarray(q), args[1], pairs, config=cfg, sigma=sig, prefactor=1.0
    )
    np.testing.assert_allclose(a @ q, np.asarray(phi), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a, a.T, atol=1e-14)
    rows = np.array([1, 4, 5, 8])
    sub = ewald_matrix(*args, config=cfg, sigma=jnp.asarray(sig), rows=rows)
    np.testing.assert_allclose(np.asarray(sub), a[np.ix_(rows, rows)], atol=1e-14)
