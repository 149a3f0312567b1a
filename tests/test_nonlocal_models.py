"""The nonlocal models (long-range attention, LODE features, Ewald message passing): derivatives,
symmetries, supercells, the total charge, and the checkpoint round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlr import models, train
from jaxlr.cell import apply_strain
from jaxlr.data import Frame, datasets
from jaxlr.models import predict
from jaxlr.neighbors import neighbor_pairs
from tests.structures import random_rotation

SMALL = {"features": 8, "n_layers": 1, "n_basis": 6, "hidden": 8}


@pytest.fixture(scope="module", params=["attention", "lode", "ewald-mp"])
def model(request):
    return models.build(request.param, **SMALL, seed=4)


def energy_fn(model, numbers, pairs, cell=None, charge=0.0):
    kind = "molecule" if cell is None else "periodic"
    # the route depends on the cell only (spread atoms: the Ewald tuner of ewald-mp
    # estimates its error on a typical arrangement)
    spread = np.random.default_rng(0).uniform(size=(len(numbers), 3))
    spread = spread @ cell if cell is not None else spread
    frame = Frame(spread, np.asarray(numbers), cell, (cell is not None,) * 3)
    el = model.route([frame], kind, cutoff=model.cutoff)
    mask = jnp.ones(len(numbers), bool)
    num = jnp.asarray(numbers)

    def energy(r, c=None):
        return model(r, num, mask, pairs, c, charge, el)["energy"]

    return jax.jit(energy), (num, mask, pairs, el)


def test_forces_stress_and_supercell(model):
    frame = datasets.load("nacl_bulk")[5]
    pairs = neighbor_pairs(frame.positions, model.cutoff, frame.cell, half=False)
    energy, (num, mask, _, el) = energy_fn(model, frame.numbers, pairs, frame.cell)
    pos, cell = jnp.asarray(frame.positions), jnp.asarray(frame.cell)
    out = jax.jit(lambda r: predict(model, r, num, mask, pairs, cell, 0.0, el))(pos)
    h = 1e-5
    for i, b in [(1, 0), (6, 2)]:
        d = jnp.zeros_like(pos).at[i, b].set(h)
        fd = -(energy(pos + d, cell) - energy(pos - d, cell)) / (2 * h)
        assert float(out["forces"][i, b]) == pytest.approx(float(fd), abs=1e-8)
    eps = jnp.zeros((3, 3)).at[2, 2].set(h)
    fd = (energy(*apply_strain(pos, cell, eps)) - energy(*apply_strain(pos, cell, -eps))) / (2 * h)
    assert float(out["stress"][2, 2]) == pytest.approx(
        float(fd) / abs(np.linalg.det(frame.cell)), abs=1e-9
    )
    sc = Frame(
        np.concatenate([frame.positions, frame.positions + frame.cell[1]]),
        np.tile(frame.numbers, 2),
        frame.cell * np.array([[1.0], [2.0], [1.0]]),
        (True,) * 3,
    )
    sc_pairs = neighbor_pairs(sc.positions, model.cutoff, sc.cell, half=False)
    e_sc, _ = energy_fn(model, sc.numbers, sc_pairs, sc.cell)
    assert float(e_sc(jnp.asarray(sc.positions), jnp.asarray(sc.cell))) == pytest.approx(
        2 * float(energy(pos, cell)), abs=1e-9
    )


def test_invariances_and_total_charge(model):
    rng = np.random.default_rng(3)
    pos = rng.normal(size=(9, 3)) * 2.0
    numbers = rng.choice([1, 8, 11, 17], 9)

    def e(p, z, q=0.0):
        pairs = neighbor_pairs(p, model.cutoff, half=False)
        return float(energy_fn(model, z, pairs, charge=q)[0](jnp.asarray(p)))

    e0 = e(pos, numbers)
    rot = random_rotation(rng)
    perm = rng.permutation(9)
    assert e(pos @ rot.T - 3.1, numbers) == pytest.approx(e0, abs=1e-10)
    assert e(pos[perm], numbers[perm]) == pytest.approx(e0, abs=1e-10)
    # the same geometry with another total charge: a different energy (Ag3+ vs Ag3-),
    # through the total-charge embedding every nonlocal model carries
    ag3 = np.array([[0.0, 0.0, 0.0], [2.7, 0.0, 0.0], [1.35, 1.35 * 3**0.5, 0.0]])
    z = np.array([47, 47, 47])
    assert abs(e(ag3, z, 1.0) - e(ag3, z, -1.0)) > 1e-6
    if model.name != "LongRangeAttention":
        # without the embedding (LODE, Ewald-MP) the charge is invisible, and a neutral
        # structure's energy is the embedding model's (the other parameters are equal)
        key = {"LODEModel": "lode", "EwaldMessagePassing": "ewald-mp"}[model.name]
        plain = models.build(key, **SMALL, seed=4, charge_embedding=False)
        pairs = neighbor_pairs(ag3, model.cutoff, half=False)
        e_p = [float(energy_fn(plain, z, pairs, charge=q)[0](jnp.asarray(ag3))) for q in (1, -1)]
        assert e_p[0] == e_p[1]
        pairs = neighbor_pairs(pos, model.cutoff, half=False)
        e_plain = float(energy_fn(plain, numbers, pairs)[0](jnp.asarray(pos)))
        assert e_plain == pytest.approx(e0, abs=1e-12)
    short = models.build("short_range", **SMALL, seed=4)
    pairs = neighbor_pairs(ag3, 5.0, half=False)
    e_plus = float(energy_fn(short, z, pairs, charge=1.0)[0](jnp.asarray(ag3)))
    e_minus = float(energy_fn(short, z, pairs, charge=-1.0)[0](jnp.asarray(ag3)))
    assert e_plus == e_minus  # a local model cannot tell them apart


@pytest.mark.parametrize("name", ["attention", "lode", "ewald-mp"])
def test_trains_saves_and_reloads(tmp_path, name):
    frames = [f for f in datasets.load("water_clusters") if f.n_atoms == 6 and f.field is None]
    frames = frames[:10]
    cfg = {"model": name, "model_args": SMALL, "epochs": 1, "n_buckets": 1}
    if name == "lode":  # a small basis: the compile time dominates here
        cfg["model_args"] = {**SMALL, "lode_max_radial": 1, "lode_max_angular": 0}
    run = train.fit(frames, cfg, tmp_path / "run", progress=False)
    loaded = train.load(tmp_path / "run")
    a, b = (train.predict_frames(m, frames[:2]) for m in (run["model"], loaded))
    for p, q in zip(a, b):
        assert p["energy"] == pytest.approx(q["energy"], abs=1e-12)
