import jax.numpy as jnp
import numpy as np
import pytest

from jaxlr.kernels import EwaldConfig, ewald_energy, tune_ewald
from jaxlr.neighbors import neighbor_pairs


def evaluate(pos, q, cell, cfg):
    pairs = neighbor_pairs(pos, cfg.r_cut, cell)
    return float(
        ewald_energy(
            jnp.asarray(pos), jnp.asarray(q), jnp.asarray(cell), pairs, config=cfg, prefactor=1.0
        )
    )


@pytest.mark.slow
@pytest.mark.parametrize("n", [100, 1000])  # 3000+ atoms: benchmarks/ewald.py
def test_tuner_is_honest(n):
    """Measured relative energy error <= requested, random neutral ions at 0.1 / Å^3."""
    rng = np.random.default_rng(n)
    side = (n / 0.1) ** (1 / 3)
    # 1000 ions +-1 in a cube, 100 Gaussian-distributed charges in a skewed box
    for trial in [0] if n == 1000 else [1]:
        pos = rng.uniform(0, side, (n, 3))
        q = rng.choice([-1.0, 1.0], n) if trial == 0 else rng.normal(size=n)
        q -= q.mean()
        cell = side * np.eye(3)
        if trial == 1:  # a skewed triclinic box of the same volume
            cell = np.array([[side, 0, 0], [0.4 * side, side, 0], [-0.3 * side, 0.2 * side, side]])
            pos = pos @ np.linalg.inv(side * np.eye(3)) @ cell
        ref = evaluate(pos, q, cell, tune_ewald(pos, q, cell, accuracy=1e-12))
        for accuracy in (1e-3, 1e-5, 1e-8):
            cfg = tune_ewald(pos, q, cell, accuracy=accuracy)
            err = abs(evaluate(pos, q, cell, cfg) - ref) / abs(ref)
            assert err <= accuracy, (n, trial, accuracy, err, cfg)


def test_config_is_hashable_and_validated():
    a = EwaldConfig(0.5, 6.0, (4, 4, 4))
    assert hash(a) == hash(EwaldConfig(0.5, 6.0, [4, 4, 4]))
    with pytest.raises(ValueError, match="alpha"):
        EwaldConfig(-1.0, 6.0, (4, 4, 4))
    with pytest.raises(ValueError, match="k_max"):
        EwaldConfig(1.0, 6.0, (4, 4))
    pos = np.random.default_rng(0).uniform(0, 5, (10, 3))
    with pytest.raises(ValueError, match="accuracy"):
        tune_ewald(pos, np.ones(10), 5 * np.eye(3), accuracy=0.0)


def test_explicit_parameters_carry_an_error_estimate():
    rng = np.random.default_rng(1)
    pos = rng.uniform(0, 10, (50, 3))
    q = rng.normal(size=50)
    q -= q.mean()
    cell = 10 * np.eye(3)
    loose = tune_ewald(pos, q, cell, alpha=0.5, r_cut=4.0, k_max=(3, 3, 3))
    tight = tune_ewald(pos, q, cell, alpha=0.5, r_cut=8.0, k_max=(8, 8, 8))
    assert loose.estimated_error > 1e3 * tight.estimated_error
    ref = evaluate(pos, q, cell, tune_ewald(pos, q, cell, accuracy=1e-12))
    # the estimate is of the right size: within 30x of the measured error either way
    err = abs(evaluate(pos, q, cell, loose) - ref)
    assert loose.estimated_error / 30 < err < loose.estimated_error * 30
