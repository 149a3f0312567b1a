"""Models: the PaiNN backbone's symmetries and padding."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlr.models import PaiNN
from jaxlr.neighbors import neighbor_pairs
from tests.structures import random_rotation


def test_painn_invariance_equivariance_and_padding():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 5, (10, 3))
    z = rng.choice([11, 17], 10)
    model = PaiNN(features=16, n_layers=2, cutoff=4.0, rngs=nnx.Rngs(0))
    pairs = neighbor_pairs(pos, 4.0, half=False)
    mask = jnp.ones(10, bool)
    s, v = model(jnp.asarray(pos), jnp.asarray(z), mask, pairs)
    assert float(jnp.abs(s).max()) > 1e-3
    rot = random_rotation(rng)
    s2, v2 = model(jnp.asarray(pos @ rot.T + 1.3), jnp.asarray(z), mask, pairs)
    np.testing.assert_allclose(np.asarray(s2), np.asarray(s), atol=1e-12)
    np.testing.assert_allclose(
        np.asarray(v2), np.einsum("ab,nbf->naf", rot, np.asarray(v)), atol=1e-12
    )
    # padding atoms and padded pair slots change nothing
    pos_p = np.r_[pos, np.zeros((3, 3))]
    z_p = np.r_[z, [0, 0, 0]]
    mask_p = jnp.asarray(np.r_[np.ones(10, bool), np.zeros(3, bool)])
    pairs_p = neighbor_pairs(pos, 4.0, half=False, capacity=pairs.capacity + 10)
    s3, v3 = model(jnp.asarray(pos_p), jnp.asarray(z_p), mask_p, pairs_p)
    np.testing.assert_allclose(np.asarray(s3[:10]), np.asarray(s), atol=1e-14)
    np.testing.assert_allclose(np.asarray(v3[:10]), np.asarray(v), atol=1e-14)
    assert float(jnp.abs(s3[10:]).max()) == 0.0
