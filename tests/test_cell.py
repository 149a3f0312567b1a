import jax.numpy as jnp
import numpy as np
import pytest

from jaxlr import cell as C

CELL = np.array([[5.0, 0.0, 0.0], [3.9, 4.1, 0.0], [-2.2, 2.7, 4.6]])


def test_volume_reciprocal_heights():
    c = jnp.asarray(CELL)
    assert float(C.volume(c)) == pytest.approx(abs(np.linalg.det(CELL)))
    b = np.asarray(C.reciprocal_cell(c))
    np.testing.assert_allclose(CELL @ b.T, 2 * np.pi * np.eye(3), atol=1e-12)
    h = np.asarray(C.heights(c))
    # height along a_0 = projection of a_0 on the unit normal of the (a_1, a_2) plane
    n0 = np.cross(CELL[1], CELL[2])
    assert h[0] == pytest.approx(abs(CELL[0] @ n0) / np.linalg.norm(n0))
    np.testing.assert_allclose(C.host_heights(CELL), h, rtol=1e-14)
    assert np.prod(h) <= float(C.volume(c)) / np.prod(h) * np.prod(h) + 1e-9


def test_fractional_wrap_strain():
    rng = np.random.default_rng(0)
    pos = jnp.asarray(rng.uniform(-10, 10, (7, 3)))
    c = jnp.asarray(CELL)
    s = C.fractional(pos, c)
    np.testing.assert_allclose(np.asarray(C.cartesian(s, c)), np.asarray(pos), atol=1e-12)
    w = C.fractional(C.wrap(pos, c), c)
    assert np.all((np.asarray(w) >= 0) & (np.asarray(w) < 1))
    # wrapping moves atoms by lattice vectors only
    d = np.asarray(C.fractional(C.wrap(pos, c) - pos, c))
    np.testing.assert_allclose(d, np.round(d), atol=1e-10)
    # slab: the open axis is left alone
    ws = np.asarray(C.fractional(C.wrap(pos, c, (True, True, False)), c))
    np.testing.assert_allclose(ws[:, 2], np.asarray(s)[:, 2])
    eps = jnp.asarray(0.01 * rng.normal(size=(3, 3)))
    p2, c2 = C.apply_strain(pos, c, eps)
    np.testing.assert_allclose(np.asarray(C.fractional(p2, c2)), np.asarray(s), atol=1e-12)


def test_validate_cell():
    assert C.validate_cell(None) == (None, (False, False, False))
    c, pbc = C.validate_cell(CELL)
    assert pbc == (True, True, True)
    with pytest.raises(ValueError, match="singular"):
        C.validate_cell(np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        C.validate_cell(np.eye(2))
    with pytest.raises(ValueError, match="pbc"):
        C.validate_cell(None, (True, False, False))
    with pytest.raises(ValueError, match="pbc"):
        C.validate_cell(CELL, (True, False))
    with pytest.raises(ValueError, match="non-finite"):
        C.validate_cell(np.full((3, 3), np.inf))
    with pytest.raises(ValueError, match="positions"):
        C.validate_positions(np.array([[0.0, np.nan, 0.0]]))
