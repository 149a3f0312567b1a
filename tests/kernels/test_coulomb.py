import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.special import erf

from jaxlr.kernels import coulomb_energy, coulomb_potential
from jaxlr.neighbors import all_pairs
from jaxlr.units import COULOMB


def numpy_energy(pos, q, sigma=None):
    n = len(q)
    e = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            r = np.linalg.norm(pos[i] - pos[j])
            v = (
                1 / r
                if sigma is None
                else erf(r / np.sqrt(2 * (sigma[i] ** 2 + sigma[j] ** 2))) / r
            )
            e += q[i] * q[j] * v
    if sigma is not None:
        e += np.sum(q**2 / (2 * np.sqrt(np.pi) * sigma))
    return e


@pytest.mark.parametrize("gaussian", [False, True])
def test_against_numpy(gaussian):
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 6, (30, 3))
    q = rng.normal(size=30)
    sigma = rng.uniform(0.3, 1.0, 30) if gaussian else None
    ref = numpy_energy(pos, q, sigma)
    args = (jnp.asarray(pos), jnp.asarray(q))
    sig = None if sigma is None else jnp.asarray(sigma)
    e_dense = coulomb_energy(*args, sigma=sig, prefactor=1.0)
    e_pairs = coulomb_energy(*args, all_pairs(30), sigma=sig, prefactor=1.0)
    e_full = coulomb_energy(*args, all_pairs(30, half=False), sigma=sig, prefactor=1.0)
    for e in (e_dense, e_pairs, e_full):
        assert float(e) == pytest.approx(ref, rel=1e-12)
    phi = coulomb_potential(*args, sigma=sig)
    assert float(0.5 * jnp.sum(args[1] * phi)) == pytest.approx(COULOMB * ref, rel=1e-12)


def test_two_charges_and_gaussian_limits():
    pos = jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    q = jnp.array([1.0, -1.0])
    assert float(coulomb_energy(pos, q, prefactor=1.0)) == pytest.approx(-0.5)
    # narrow Gaussians: the point-charge pair term plus the self energies
    s = 1e-3
    e = coulomb_energy(pos, q, sigma=s, prefactor=1.0)
    assert float(e) == pytest.approx(-0.5 + 2 / (2 * np.sqrt(np.pi) * s), rel=1e-12)
    # coincident Gaussians: the finite limit erf(r/w)/r -> 2/(sqrt(pi) w), w^2 = 2 (2 s^2)
    same = jnp.zeros((2, 3))
    e0 = coulomb_energy(same, q, sigma=0.5, prefactor=1.0)
    limit = 2 / (np.sqrt(np.pi) * np.sqrt(2 * 2 * 0.5**2))
    assert float(e0) == pytest.approx(2 / (2 * np.sqrt(np.pi) * 0.5) - limit, rel=1e-12)
    near = same.at[1, 2].set(1e-4)
    # E(r) = limit * r^2 / (3 w^2) + O(r^4) for r << w (w = 1 here)
    assert float(coulomb_energy(near, q, sigma=0.5, prefactor=1.0)) == pytest.approx(
        limit * 1e-8 / 3, rel=1e-6
    )
    g = jax.hessian(lambda p: coulomb_energy(p, q, sigma=0.5))(same)
    assert np.all(np.isfinite(np.asarray(g)))


def test_gradients_and_dtype():
    rng = np.random.default_rng(1)
    pos = jnp.asarray(rng.uniform(0, 5, (8, 3)))
    q = jnp.asarray(rng.normal(size=8))
    check_grads(lambda p: coulomb_energy(p, q, sigma=0.4), (pos,), order=2, modes=["rev"])
    check_grads(lambda p: coulomb_energy(p, q), (pos,), order=1, modes=["rev"])
    e32 = coulomb_energy(pos.astype(jnp.float32), q.astype(jnp.float32))
    assert e32.dtype == jnp.float32
    assert float(e32) == pytest.approx(float(coulomb_energy(pos, q)), rel=1e-5)
    # padded atoms (zero charge) at coincident positions keep gradients finite
    pos_pad = jnp.concatenate([pos, jnp.zeros((2, 3))])
    q_pad = jnp.concatenate([q, jnp.zeros(2)])
    g = jax.grad(lambda p: coulomb_energy(p, q_pad, sigma=0.4))(pos_pad)
    assert np.all(np.isfinite(np.asarray(g)))
