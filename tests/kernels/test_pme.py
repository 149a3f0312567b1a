import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlr.kernels.ewald import reciprocal_energy
from jaxlr.kernels.pme import (
    PMEConfig,
    bspline_weights,
    pme_energy,
    pme_potential,
    pme_reciprocal_energy,
    spread_charges,
)

CELL = np.array([[10.0, 0.0, 0.0], [2.0, 11.0, 0.0], [-1.5, 1.0, 9.0]])


def test_bspline_partition_of_unity_and_values():
    frac = jnp.linspace(0.0, 0.999, 11)
    for order in (3, 4, 6, 8):
        w = bspline_weights(frac, order)
        np.testing.assert_allclose(np.asarray(w.sum(-1)), 1.0, atol=1e-14)
        assert np.all(np.asarray(w) >= 0)
    # cubic B-spline (order 4) at integer knots: 1/6, 2/3, 1/6
    w0 = bspline_weights(jnp.zeros(1), 4)[0]
    np.testing.assert_allclose(np.asarray(w0), [0.0, 1 / 6, 2 / 3, 1 / 6], atol=1e-15)


def test_spreading_conserves_charge():
    rng = np.random.default_rng(0)
    s = jnp.asarray(rng.uniform(-0.5, 1.5, (7, 3)))
    q = jnp.asarray(rng.normal(size=7))
    mesh = (12, 10, 14)
    grid = spread_charges(s, q, mesh, 6)
    assert float(grid.sum()) == pytest.approx(float(q.sum()), abs=1e-13)


def system(n=30, seed=1):
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 1, (n, 3)) @ CELL
    q = rng.normal(size=n)
    return jnp.asarray(pos), jnp.asarray(q - q.mean()), jnp.asarray(CELL)


def test_pme_converges_to_ewald_reciprocal():
    pos, q, cell = system()
    alpha = 0.4
    ref = float(reciprocal_energy(pos, q, cell, alpha=alpha, k_max=(12, 12, 12)))
    errors = []
    for mesh, order in (((16, 16, 16), 4), ((24, 24, 24), 6), ((48, 48, 48), 8)):
        e = float(pme_reciprocal_energy(pos, q, cell, config=PMEConfig(alpha, mesh, order)))
        errors.append(abs(e / ref - 1))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-10


def test_pme_forces_and_stress_match_ewald():
    pos, q, cell = system(12)
    alpha = 0.4
    cfg = PMEConfig(alpha, (40, 45, 36), 8)  # FFT-friendly sizes, not powers of two

    def pme(p, c):
        return pme_reciprocal_energy(p, q, c, config=cfg)

    def ewald(p, c):
        return reciprocal_energy(p, q, c, alpha=alpha, k_max=(12, 12, 12))

    for f_pme, f_ref in zip(
        jax.grad(pme, argnums=(0, 1))(pos, cell), jax.grad(ewald, argnums=(0, 1))(pos, cell)
    ):
        np.testing.assert_allclose(np.asarray(f_pme), np.asarray(f_ref), rtol=1e-7, atol=1e-9)
    # translating every atom by a non-lattice vector changes nothing
    shift = jnp.asarray([0.123, -0.456, 0.789])
    assert float(pme(pos + shift[None, :], cell)) == pytest.approx(float(pme(pos, cell)), rel=1e-9)


def test_float32_and_no_recompile():
    pos, q, cell = system(10)
    cfg = PMEConfig(0.4, (24, 24, 24), 6)
    traces = []

    @jax.jit
    def f(p, qq, c):
        traces.append(1)
        return pme_reciprocal_energy(p, qq, c, config=cfg)

    f(pos, q, cell)
    f(pos + 0.1, q * 2, cell * 1.01)
    assert len(traces) == 1
    e32 = pme_reciprocal_energy(
        pos.astype(jnp.float32), q.astype(jnp.float32), cell.astype(jnp.float32), config=cfg
    )
    assert e32.dtype == jnp.float32
    assert float(e32) == pytest.approx(float(f(pos, q, cell)), rel=1e-4)


def test_config_validation():
    with pytest.raises(ValueError, match="order"):
        PMEConfig(0.4, (16, 16, 16), 2)
    with pytest.raises(ValueError, match="mesh"):
        PMEConfig(0.4, (16, 16), 4)
    with pytest.raises(ValueError, match="mesh"):
        PMEConfig(0.4, (4, 16, 16), 6)


def test_madelung_translated_rock_salt_by_pme():
    from jaxlr.neighbors import neighbor_pairs
    from tests.structures import MADELUNG, crystal

    pos, q, cell, d = crystal("rocksalt")
    pos = pos + np.array([0.1234, -0.377, 0.2911])  # off the mesh nodes
    cfg = PMEConfig(3.0, (20, 20, 20), 8, r_cut=3.0)
    pairs = neighbor_pairs(pos, cfg.r_cut, cell)
    e = pme_energy(
        jnp.asarray(pos), jnp.asarray(q), jnp.asarray(cell), pairs, config=cfg, prefactor=1.0
    )
    assert -float(e) * d / 4 == pytest.approx(MADELUNG["rocksalt"], rel=1e-6)


def test_pme_energy_and_potential_match_ewald_with_gaussians():
    from jaxlr.kernels import ewald_energy, tune_ewald
    from jaxlr.neighbors import neighbor_pairs

    pos, q, cell = system(16)
    q = q + 0.3  # charged: the background term
    sigma = 0.6
    ref_cfg = tune_ewald(
        np.asarray(pos), np.asarray(q), np.asarray(cell), accuracy=1e-11, sigma=sigma
    )
    cfg = PMEConfig(ref_cfg.alpha, (48, 48, 40), 8, r_cut=ref_cfg.r_cut)
    pairs = neighbor_pairs(np.asarray(pos), cfg.r_cut, np.asarray(cell))
    e_ref = ewald_energy(pos, q, cell, pairs, config=ref_cfg, sigma=sigma)
    e = pme_energy(pos, q, cell, pairs, config=cfg, sigma=sigma)
    assert float(e) == pytest.approx(float(e_ref), rel=1e-9)
    phi = pme_potential(pos, q, cell, pairs, config=cfg, sigma=sigma)
    assert float(0.5 * jnp.sum(q * phi)) == pytest.approx(float(e), rel=1e-12)
    with pytest.raises(ValueError, match="r_cut"):
        pme_energy(pos, q, cell, pairs, config=PMEConfig(0.4, (16, 16, 16), 4))


# ---------------------------------------------------------------- tuned PME

SKEWED = np.array([[9.0, 0.0, 0.0], [3.5, 8.0, 0.0], [-2.0, 2.5, 8.5]])


def random_ions(n, cell, seed, charged=False):
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 1, (n, 3)) @ cell
    q = rng.permutation(np.tile([1.0, -1.0], n // 2))
    if charged:
        q[:3] += 0.5
    return pos, q


def prepared_energy(pos, q, cell, **kw):
    import jaxlr

    fn = jaxlr.prepare_energy(pos, q, cell, prefactor=1.0, **kw)
    return fn, float(fn(jnp.asarray(pos), jnp.asarray(q), jnp.asarray(cell)))


@pytest.mark.parametrize(
    "accuracy, n, cell, charged",
    [
        (1e-4, 64, 9.0 * np.eye(3), False),
        (1e-5, 200, SKEWED * 1.35, True),
        (1e-6, 120, SKEWED, False),
        (1e-7, 100, 10.0 * np.eye(3), True),
    ],
)
def test_tuned_pme_meets_requested_accuracy(accuracy, n, cell, charged):
    """Random neutral and charged ions, cubic and skewed cells: the measured relative
    error of the tuned PME energy (against an independent numpy Ewald sum) is within
    the request, and the estimate is not wildly pessimistic either."""
    from tests.structures import numpy_ewald

    pos, q = random_ions(n, cell, seed=n, charged=charged)
    fn, e = prepared_energy(pos, q, cell, method="pme", accuracy=accuracy)
    assert fn.method == "pme"
    ref = numpy_ewald(pos, q, cell)
    err = abs(e - ref) / abs(ref)
    assert err <= accuracy, (err, fn.config)
    assert fn.estimated_error / abs(ref) < 30 * accuracy


@pytest.mark.parametrize("name", ["rocksalt", "cscl", "zincblende", "wurtzite"])
def test_madelung_constants_off_the_mesh(name):
    from tests.structures import MADELUNG, crystal

    pos, q, cell, d = crystal(name, primitive=name == "cscl")
    pos = pos + np.array([0.1234, -0.377, 0.2911])  # not a lattice vector, off the nodes
    fn, e = prepared_energy(pos, q, cell, method="pme", accuracy=1e-8)
    assert -e * d / (len(q) / 2) == pytest.approx(MADELUNG[name], rel=1e-6)


def rock_salt_supercell(rep, d=2.82):
    """rep^3 conventional rock-salt cells (8 ions each), nearest neighbours d Å apart,
    translated off the mesh nodes."""
    from tests.structures import crystal

    pos, q, cell, _ = crystal("rocksalt")
    shifts = np.stack(np.meshgrid(*[np.arange(rep)] * 3, indexing="ij"), -1).reshape(-1, 1, 3)
    pos = (pos[None] + shifts @ cell).reshape(-1, 3) * d + np.array([0.1234, -0.377, 0.2911])
    return pos, np.tile(q, rep**3), rep * d * cell


@pytest.mark.parametrize("accuracy", [1e-4, 1e-6])
def test_tuned_pme_meets_requested_accuracy_on_a_crystal(accuracy):
    """512-ion rock salt against its Madelung energy. The Bragg peaks of a crystal
    (|S|^2 ~ N^2) make the mesh error coherent: the random-charge estimate alone
    chose configs 3x over the request here (order 4 at 1e-4; at 1e-6 an order-7 mesh
    commensurate with the lattice), and 4x-10x over at 4k-32k ions."""
    from tests.structures import MADELUNG

    pos, q, cell = rock_salt_supercell(4)
    fn, e = prepared_energy(pos, q, cell, method="pme", accuracy=accuracy)
    exact = -MADELUNG["rocksalt"] * (len(q) / 2) / 2.82
    err = abs(e - exact) / abs(exact)
    assert err <= accuracy, (err, fn.config)
    assert fn.estimated_error / abs(exact) < 30 * accuracy


@pytest.mark.parametrize("mesh, order, influence", [(40, 7, "p3m"), (27, 4, "spme")])
def test_structure_error_is_the_measured_mesh_error(mesh, order, influence):
    """pme_structure_error (numpy, against an order-12 reference) equals the kernel's
    reciprocal energy minus an Ewald sum on a crystal, commensurate mesh (40 points
    on 4 cells: aliases land on Bragg peaks) or not; the random-charge estimate is
    far below it."""
    from jaxlr.kernels.tuning import pme_mesh_error, pme_structure_error

    pos, q, cell = rock_salt_supercell(4)
    alpha = 0.6
    args = jnp.asarray(pos), jnp.asarray(q), jnp.asarray(cell)
    ref = float(reciprocal_energy(*args, alpha=alpha, k_max=(26, 26, 26)))
    cfg = PMEConfig(alpha, (mesh,) * 3, order, influence=influence)
    measured = float(pme_reciprocal_energy(*args, config=cfg)) - ref
    err = pme_structure_error(pos, q, cell, alpha, cfg.mesh, order, influence)
    assert err == pytest.approx(measured, rel=0.02)
    assert pme_mesh_error(float(len(q)), cell, alpha, cfg.mesh, order, influence) < abs(err) / 5


def test_self_correction_and_p3m_influence_reduce_the_error():
    """The mean self-interaction is smooth PME's largest error; both corrections
    remove most of it on the same mesh."""
    pos, q = random_ions(300, 14.0 * np.eye(3), seed=5)
    pos, q, cell = jnp.asarray(pos), jnp.asarray(q), jnp.asarray(14.0 * np.eye(3))
    ref = float(reciprocal_energy(pos, q, cell, alpha=0.5, k_max=(12, 12, 12)))

    def err(**kw):
        cfg = PMEConfig(0.5, (20, 20, 20), 6, **kw)
        return abs(float(pme_reciprocal_energy(pos, q, cell, config=cfg)) - ref)

    plain = err(self_correction=False)
    assert err() < plain / 5
    assert err(influence="p3m", self_correction=False) < plain / 5
    assert err(influence="p3m") < plain / 5


def test_mesh_error_estimate_tracks_measured_error():
    from jaxlr.kernels.tuning import pme_mesh_error

    cell = 15.0 * np.eye(3)
    errors, estimates = [], []
    for mesh, order in (((16, 16, 16), 4), ((20, 20, 20), 6), ((30, 30, 30), 6)):
        sq = []
        for seed in range(4):
            pos, q = random_ions(300, cell, seed)
            pos, q, c = jnp.asarray(pos), jnp.asarray(q), jnp.asarray(cell)
            ref = float(reciprocal_energy(pos, q, c, alpha=0.5, k_max=(14, 14, 14)))
            e = float(pme_reciprocal_energy(pos, q, c, config=PMEConfig(0.5, mesh, order)))
            sq.append((e - ref) ** 2)
        errors.append(np.sqrt(np.mean(sq)))
        estimates.append(pme_mesh_error(300.0, cell, 0.5, mesh, order))
    ratio = np.array(errors) / np.array(estimates)
    assert np.all(ratio < 1.5) and np.all(ratio > 0.05), ratio


def test_tuner_picks_fft_friendly_sizes_per_axis():
    from jaxlr.kernels import fft_size, tune_pme

    assert [fft_size(k) for k in (11, 13, 17, 97, 121)] == [12, 14, 18, 98, 125]
    cell = np.diag([12.0, 20.0, 31.0])
    pos, q = random_ions(400, cell, seed=2)
    cfg = tune_pme(pos, q, cell, accuracy=1e-5)
    assert all(fft_size(k) == k for k in cfg.mesh)
    assert cfg.mesh[0] < cfg.mesh[1] < cfg.mesh[2]
    assert cfg == tune_pme(pos, q, cell, accuracy=1e-5)  # deterministic
    with pytest.raises(ValueError, match="accuracy"):
        tune_pme(pos, q, cell, accuracy=0.0)
    with pytest.raises(ValueError, match="order"):
        tune_pme(pos, q, cell, order=2)


def test_pme_forces_stress_finite_differences_and_net_force():
    import jaxlr

    cell = SKEWED
    pos, q = random_ions(40, cell, seed=3, charged=True)
    fn = jaxlr.prepare_energy(pos, q, cell, method="pme", accuracy=1e-8, sigma=0.4)
    qj = jnp.asarray(q)

    def energy(p, c):
        return fn(p, qj, c)

    e, f, stress = jax.jit(lambda p, c: jaxlr.energy_forces_stress(energy, p, c))(
        jnp.asarray(pos), jnp.asarray(cell)
    )
    h = 1e-5
    for atom, axis in ((0, 0), (7, 2), (33, 1)):
        dp = np.zeros_like(pos)
        dp[atom, axis] = h
        fd = (float(energy(pos + dp, cell)) - float(energy(pos - dp, cell))) / (2 * h)
        assert float(f[atom, axis]) == pytest.approx(-fd, rel=1e-6, abs=1e-8)
    vol = abs(np.linalg.det(cell))
    for a, b in ((0, 0), (1, 2), (2, 1)):
        eps = np.zeros((3, 3))
        eps[a, b] = h
        ep = float(energy(pos @ (np.eye(3) + eps), cell @ (np.eye(3) + eps)))
        em = float(energy(pos @ (np.eye(3) - eps), cell @ (np.eye(3) - eps)))
        assert float(stress[a, b]) == pytest.approx((ep - em) / (2 * h) / vol, rel=1e-6, abs=1e-9)
    force_scale = float(jnp.sqrt(jnp.mean(f**2)))
    assert float(jnp.linalg.norm(f.sum(0))) < 1e-6 * force_scale * len(q)


def test_pme_prepared_jit_vmap_float32():
    import jaxlr

    cell = 10.0 * np.eye(3)
    pos, q = random_ions(50, cell, seed=7)
    fn = jaxlr.prepare_energy(pos, q, cell, method="pme", accuracy=1e-6)
    traces = []

    @jax.jit
    def f(p, qq, c):
        traces.append(1)
        return fn(p, qq, c)

    e1 = f(jnp.asarray(pos), jnp.asarray(q), jnp.asarray(cell))
    f(jnp.asarray(pos + 0.05), jnp.asarray(-q), jnp.asarray(cell * 1.01))
    assert len(traces) == 1
    # a padded batch: zero-charge padding atoms change nothing
    batch_p = np.stack([pos, np.concatenate([pos[:40], pos[:10] + 0.3])])
    batch_q = np.stack([q, np.concatenate([q[:40], np.zeros(10)])])
    out = jax.vmap(fn, in_axes=(0, 0, None))(
        jnp.asarray(batch_p), jnp.asarray(batch_q), jnp.asarray(cell)
    )
    from tests.structures import numpy_ewald

    ref = numpy_ewald(pos[:40], q[:40], cell) * jaxlr.units.COULOMB
    assert float(out[0]) == pytest.approx(float(e1), rel=1e-12)
    assert float(out[1]) == pytest.approx(float(ref), rel=1e-5)
    e32 = fn(*(jnp.asarray(x, jnp.float32) for x in (pos, q, cell)))
    assert e32.dtype == jnp.float32
    assert float(e32) == pytest.approx(float(e1), rel=1e-4)
