import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlr import neighbors


def brute_force(positions, cutoff, cell, pbc, half):
    """Independent O(N^2 x images) search; half lists canonicalised."""
    n = len(positions)
    if cell is None:
        images, cell_m = np.zeros((1, 3), int), np.eye(3)
    else:
        cell_m = cell
        cross = np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]])
        h = abs(np.linalg.det(cell)) / np.linalg.norm(cross, axis=1)
        span = np.ptp(positions @ np.linalg.inv(cell), axis=0)
        reach = [math.ceil(cutoff / h[a] + span[a]) + 1 if pbc[a] else 0 for a in range(3)]
        images = np.array(list(itertools.product(*[range(-k, k + 1) for k in reach])))
    out = set()
    for S in images:
        d = positions[None] - positions[:, None] + S @ cell_m
        ii, jj = np.nonzero(np.sum(d * d, -1) < cutoff**2)
        for a, b in zip(ii, jj):
            if a == b and not S.any():
                continue
            out.add(canonical(a, b, S) if half else (a, b, *S))
    assert n == len(positions)
    return out


def canonical(i, j, S):
    S = tuple(int(x) for x in S)
    if (i, S) > (j, tuple(-x for x in S)) and i != j:
        return (j, i, *(-x for x in S))
    if i == j:
        return (i, j, *max(S, tuple(-x for x in S)))
    if i > j:
        return (j, i, *(-x for x in S))
    return (i, j, *S)


def as_set(i, j, S, half, mask=None):
    i, j, S = np.asarray(i), np.asarray(j), np.asarray(S)
    if mask is not None:
        m = np.asarray(mask)
        i, j, S = i[m], j[m], S[m]
    items = [canonical(a, b, s) if half else (a, b, *s) for a, b, s in zip(i, j, S)]
    assert len(items) == len(set(items)), "duplicate pairs"
    return set(items)


def random_system(rng, pbc_random):
    cell = np.eye(3) * rng.uniform(3, 8, 3) + rng.uniform(-2.5, 2.5, (3, 3))
    n = int(rng.integers(1, 25))
    pos = rng.uniform(-0.5, 1.5, (n, 3)) @ cell  # not wrapped
    pbc = tuple(bool(x) for x in rng.random(3) < 0.6) if pbc_random else (True,) * 3
    cross = np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]])
    h = abs(np.linalg.det(cell)) / np.linalg.norm(cross, axis=1)
    cutoff = rng.uniform(0.2, 3.0) * h.min()  # up to 3x the shortest cell height
    return pos, cell, pbc, cutoff


BACKENDS = ["numpy"]
try:
    import vesin  # noqa: F401

    BACKENDS.append("vesin")
except ImportError:
    pass


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("half", [True, False])
def test_host_and_jit_pairs_match_brute_force(seed, half):
    rng = np.random.default_rng(seed)
    pos, cell, pbc, cutoff = random_system(rng, pbc_random=seed % 2 == 1)
    ref = brute_force(pos, cutoff, cell, pbc, half)
    for backend in BACKENDS:
        p = neighbors.neighbor_pairs(pos, cutoff, cell, pbc, half=half, backend=backend)
        assert as_set(p.i, p.j, p.shifts, half) == ref, backend
    fns = neighbors.neighbor_list(pos, cutoff, cell, pbc, half=half)
    pj, overflow = jax.jit(fns.build)(jnp.asarray(pos), jnp.asarray(cell))
    assert not bool(overflow)
    assert as_set(pj.i, pj.j, pj.shifts, half, pj.mask) == ref
    # host and jit keep the same orientation of every pair (capacities are sized on it)
    m = np.asarray(pj.mask)
    jit_oriented = {
        (a, b_, *s)
        for a, b_, s in zip(np.asarray(pj.i)[m], np.asarray(pj.j)[m], np.asarray(pj.shifts)[m])
    }
    host_oriented = {
        (a, b_, *s) for a, b_, s in zip(np.asarray(p.i), np.asarray(p.j), np.asarray(p.shifts))
    }
    assert jit_oriented == host_oriented


def test_pair_vectors_and_distances():
    rng = np.random.default_rng(3)
    pos, cell, pbc, cutoff = random_system(rng, False)
    p = neighbors.neighbor_pairs(pos, cutoff, cell, pbc)
    r = np.linalg.norm(
        np.asarray(neighbors.pair_vectors(jnp.asarray(pos), p, jnp.asarray(cell))), axis=1
    )
    assert np.all(r < cutoff) and np.all(r > 0)


def test_molecule_pairs():
    rng = np.random.default_rng(5)
    pos = rng.uniform(0, 10, (40, 3))
    ref = brute_force(pos, 3.0, None, (False,) * 3, True)
    p = neighbors.neighbor_pairs(pos, 3.0)
    assert as_set(p.i, p.j, p.shifts, True) == ref
    fns = neighbors.neighbor_list(pos, 3.0)
    pj, overflow = jax.jit(fns.build)(jnp.asarray(pos))
    assert not bool(overflow)
    assert as_set(pj.i, pj.j, pj.shifts, True, pj.mask) == ref


def test_all_pairs():
    p = neighbors.all_pairs(5)
    assert p.capacity == 10
    assert len(as_set(p.i, p.j, p.shifts, True)) == 10


def test_host_capacity_overflow_raises():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 5, (20, 3))
    with pytest.raises(ValueError, match="capacity"):
        neighbors.neighbor_pairs(pos, 4.0, np.eye(3) * 5, capacity=3)


def test_jit_builder_checks_the_cell():
    pos = np.random.default_rng(4).uniform(0, 10, (20, 3))
    with pytest.raises(ValueError, match="cell"):
        neighbors.neighbor_list(pos, 3.0, np.eye(3) * 10).build(jnp.asarray(pos), None)
    with pytest.raises(ValueError, match="cell"):
        neighbors.neighbor_list(pos, 3.0).build(jnp.asarray(pos), jnp.eye(3) * 10)


def test_jit_overflow_is_flagged():
    rng = np.random.default_rng(1)
    cell = np.eye(3) * 10.0
    pos = rng.uniform(0, 10, (50, 3))
    fns = neighbors.neighbor_list(pos, 3.0, cell, capacity_multiplier=1.0)
    _, overflow = fns.build(jnp.asarray(pos), jnp.asarray(cell))
    assert not bool(overflow)
    crowded = pos.copy()
    crowded[:25] = crowded[:25] * 0.2  # squeeze half the atoms into a corner
    _, overflow = fns.build(jnp.asarray(crowded), jnp.asarray(cell))
    assert bool(overflow)
    # a shrunk cell invalidates the bin grid: flagged, not silently wrong
    _, overflow = fns.build(jnp.asarray(pos * 0.5), jnp.asarray(cell * 0.5))
    assert bool(overflow)


def test_update_uses_skin():
    rng = np.random.default_rng(2)
    cell = np.eye(3) * 12.0
    pos = jnp.asarray(rng.uniform(0, 12, (60, 3)))
    fns = neighbors.neighbor_list(pos, 3.0, cell, skin=1.0)
    state = fns.allocate(pos, jnp.asarray(cell))
    update = jax.jit(fns.update)
    small = update(state, pos + 0.1, jnp.asarray(cell))
    assert np.array_equal(np.asarray(small.reference_positions), np.asarray(pos))
    moved = pos.at[0].add(0.6)
    big = update(state, moved, jnp.asarray(cell))
    assert np.array_equal(np.asarray(big.reference_positions), np.asarray(moved))
    # the list at the skin covers every pair within the cutoff
    ref = brute_force(np.asarray(moved), 3.0, cell, (True,) * 3, True)
    got = as_set(big.pairs.i, big.pairs.j, big.pairs.shifts, True, big.pairs.mask)
    assert ref <= got


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(positions=np.zeros((3, 2)), cutoff=1.0), "positions"),
        (dict(positions=np.full((3, 3), np.nan), cutoff=1.0), "positions"),
        (dict(positions=np.zeros((3, 3)), cutoff=-1.0), "cutoff"),
        (dict(positions=np.zeros((3, 3)), cutoff=1.0, cell=np.zeros((3, 3))), "singular"),
        (dict(positions=np.zeros((3, 3)), cutoff=1.0, cell=np.eye(2)), "cell"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        neighbors.neighbor_pairs(**kwargs)
