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
