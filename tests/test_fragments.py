"""Fragment charge constraints (data, batching, local charge and QEq models) and the
charge-aware option of the local charge models."""

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlr import models, train
from jaxlr.data import Frame, from_atoms, pad, read, to_atoms, unpad, write
from jaxlr.kernels.qeq import solve_dense
from jaxlr.models import Electrostatics, Fragments
from jaxlr.neighbors import all_pairs

SMALL = {"features": 8, "n_layers": 1, "n_basis": 6, "hidden": 8}
ION = np.array([[0.0, 0.0, 0.0], [0.6, 0.6, 0.6], [-0.6, -0.6, 0.6], [-0.6, 0.6, -0.6]])


def ion_pair(r, rng, labelled=True):
    """NH3+-like ... BF3--like pair of 4-atom fragments ``r`` Å apart (charges +1/-1)."""
    a = ION + 0.05 * rng.standard_normal((4, 3))
    b = -ION * 1.3 + [r, 0.0, 0.0] + 0.05 * rng.standard_normal((4, 3))
    kw = {}
    if labelled:
        kw = {"energy": -14.4 / r, "forces": np.zeros((8, 3))}
    return Frame(
        np.concatenate([a, b]),
        np.array([7, 1, 1, 1, 5, 9, 9, 9]),
        charge=0.0,
        fragments=np.repeat([0, 1], 4),
        fragment_charges=np.array([1.0, -1.0]),
        **kw,
    )


def test_fragment_charges_round_trip_and_bad_input(tmp_path):
    rng = np.random.default_rng(0)
    frame = ion_pair(5.0, rng)
    write(tmp_path / "pair.extxyz", [frame, Frame(ION, np.array([7, 1, 1, 1]), charge=1.0)])
    back = read(tmp_path / "pair.extxyz")
    np.testing.assert_array_equal(back[0].fragments, [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(back[0].fragment_charges, [1.0, -1.0])
    assert back[1].fragments is None and back[1].n_fragments == 1
    # a bare "fragment" array without fragment charges is only descriptive
    atoms = to_atoms(frame)
    del atoms.info["fragment_charges"]
    assert from_atoms(atoms).fragments is None

    def bad(**change):
        a = to_atoms(frame)
        for key, value in change.items():
            (a.arrays if key == "fragment" else a.info)[key] = value
        with pytest.raises(ValueError, match=r"frame 7: .*fragment") as err:
            from_atoms(a, index=7)
        return str(err.value)

    assert "sum to 0.5" in bad(fragment_charges=np.array([1.0, -0.5]))
    assert "integers 0 to 1" in bad(fragment=np.array([0, 0, 0, 0, 1, 1, 1, 2]))
    assert "no atoms" in bad(fragment_charges=np.array([1.0, -1.0, 0.0]))
    a = to_atoms(frame)
    del a.arrays["fragment"]
    with pytest.raises(ValueError, match="without arrays\\['fragment'\\]"):
        from_atoms(a)
    with pytest.raises(ValueError, match="both or neither"):
        Frame(ION, np.array([7, 1, 1, 1]), fragments=np.zeros(4, int))


def test_batches_carry_fragments_and_pad_them():
    rng = np.random.default_rng(1)
    frames = [ion_pair(4.0, rng), Frame(ION, np.array([7, 1, 1, 1]), charge=1.0)]
    batch = pad(frames, 10, 3)
    assert batch.fragment_charge.shape == (3, 2)
    np.testing.assert_array_equal(batch.fragment_charge, [[1, -1], [1, 0], [0, 0]])
    back = unpad(batch)
    np.testing.assert_array_equal(back[0].fragments, frames[0].fragments)
    assert back[1].fragments is None and back[1].charge == 1.0
    with pytest.raises(ValueError, match="n_fragments=1"):
        pad(frames, 10, 3, n_fragments=1)


@pytest.mark.parametrize("name", ["latent", "qeq"])  # explicit: the same code as latent
def test_charge_models_hold_each_fragment_at_its_charge(name):
    """Each fragment sums to its own total at any separation (an ion pair stays
    +1 / -1), in a padded batch mixing fragment and plain structures; a batch of one
    predicts the same."""
    rng = np.random.default_rng(2)
    frames = [ion_pair(r, rng, labelled=False) for r in (3.0, 6.0, 12.0)]
    frames.append(Frame(ION, np.array([7, 1, 1, 1]), charge=1.0))
    model = models.build(name, **SMALL, seed=3)
    pred = train.predict_frames(model, frames)
    for f, p in zip(frames[:3], pred):
        sums = [p["charges"][f.fragments == k].sum() for k in (0, 1)]
        np.testing.assert_allclose(sums, [1.0, -1.0], atol=1e-12)
    assert pred[3]["charges"].sum() == pytest.approx(1.0, abs=1e-12)
    single = train.predict_frames(model, frames[1:2])[0]
    np.testing.assert_allclose(single["charges"], pred[1]["charges"], atol=1e-12)
    assert single["energy"] == pytest.approx(pred[1]["energy"], abs=1e-10)
    # without the constraint the charges flow between the fragments
    free = train.predict_frames(model, [Frame(frames[0].positions, frames[0].numbers, charge=0.0)])[
        0
    ]
    assert abs(free["charges"][:4].sum() - 1.0) > 1e-3


def test_qeq_fragments_equalise_separately_dense_and_matrix_free():
    rng = np.random.default_rng(4)
    f = ion_pair(4.0, rng)
    n = f.n_atoms
    args = (
        jnp.asarray(f.numbers),
        jnp.ones(n, bool),
        all_pairs(n, half=False),
        None,
        Fragments(jnp.asarray(f.fragments), jnp.asarray(f.fragment_charges)),
        Electrostatics("molecule"),
    )
    out = {}
    for solver in ("dense", "matrix_free"):
        model = models.build("qeq", **SMALL, seed=5, solver=solver, tol=1e-12)

        def solution(r, model=model):
            s = model.features(r, *args[:3], None)
            q, chi, hard, a = model.equilibrate(r, *args, s)
            aq = a(q) if callable(a) else a @ q
            return q, chi + hard * q + models._potentials.COULOMB * aq

        q, g = jax.jit(solution)(jnp.asarray(f.positions))
        g = np.asarray(g)
        # the chemical potential is uniform within each fragment, not across them
        assert np.ptp(g[:4]) < 1e-9 and np.ptp(g[4:]) < 1e-9
        assert abs(g[0] - g[4]) > 1e-3
        out[solver] = np.asarray(q)
    np.testing.assert_allclose(out["dense"], out["matrix_free"], atol=1e-9)


def test_an_empty_constraint_row_constrains_nothing():
    rng = np.random.default_rng(6)
    m = rng.normal(size=(5, 5))
    h = m @ m.T + 5 * np.eye(5)
    chi = rng.normal(size=5)
    b = np.array([[1.0, 1, 0, 0, 0], [0, 0, 1, 1, 1]])
    q, lam, ok = solve_dense(jnp.asarray(h), jnp.asarray(chi), b, jnp.array([0.5, -0.5]))
    b_pad = np.vstack([b, np.zeros(5)])
    q_p, lam_p, ok_p = solve_dense(
        jnp.asarray(h), jnp.asarray(chi), b_pad, jnp.array([0.5, -0.5, 0.0])
    )
    assert bool(ok) and bool(ok_p)
    np.testing.assert_allclose(q_p, q, atol=1e-12)
    np.testing.assert_allclose(lam_p[:2], lam, atol=1e-12)
    assert float(lam_p[2]) == 0.0


def test_charge_aware_latent_model_tells_charge_states_apart():
    """A plain latent model gives a symmetric Ag3 the same energy for +1 and -1 (the
    Coulomb energy of Q/3 charges is even in Q); the charge-aware head does not.
    Forces of the charge-aware model equal finite differences."""
    ag3 = np.array([[0.0, 0.0, 0.0], [2.7, 0.0, 0.0], [1.35, 1.35 * 3**0.5, 0.0]])
    frames = [Frame(ag3, np.array([47, 47, 47]), charge=q) for q in (1.0, -1.0)]
    plain = models.build("latent", **SMALL, seed=7)
    e = [p["energy"] for p in train.predict_frames(plain, frames)]
    assert e[0] == pytest.approx(e[1], abs=1e-12)
    aware = models.build("latent", **SMALL, seed=7, charge_aware=True)
    assert aware.hyper["charge_aware"] is True
    e = [p["energy"] for p in train.predict_frames(aware, frames)]
    assert abs(e[0] - e[1]) > 1e-4
    with pytest.raises(ValueError, match="charge_aware=True is an option"):
        models.build("short_range", charge_aware=True)

    rng = np.random.default_rng(8)
    f = ion_pair(3.5, rng, labelled=False)
    args = (
        jnp.asarray(f.numbers),
        jnp.ones(8, bool),
        all_pairs(8, half=False),
        None,
        Fragments(jnp.asarray(f.fragments), jnp.asarray(f.fragment_charges)),
        Electrostatics("molecule"),
    )
    energy = jax.jit(lambda r: aware(r, *args)["energy"])
    pos = jnp.asarray(f.positions)
    out = jax.jit(lambda r: models.predict(aware, r, *args))(pos)
    h = 1e-5
    for i, c in [(0, 0), (5, 2)]:
        d = jnp.zeros_like(pos).at[i, c].set(h)
        fd = -(energy(pos + d) - energy(pos - d)) / (2 * h)
        assert float(out["forces"][i, c]) == pytest.approx(float(fd), abs=1e-8)


def test_fragment_training_saves_and_reloads(tmp_path):
    rng = np.random.default_rng(9)
    frames = [ion_pair(r, rng) for r in np.linspace(3.0, 9.0, 10)]
    model_args = {**SMALL, "charge_aware": True}
    cfg = {"model": "latent", "model_args": model_args, "epochs": 2, "batch_size": 4}
    run = train.fit(frames, cfg, tmp_path / "run", progress=False)
    again = train.load(tmp_path / "run")
    assert again.hyper["charge_aware"] is True
    a = train.predict_frames(run["model"], frames[:3])
    b = train.predict_frames(again, frames[:3])
    for p, r, f in zip(a, b, frames):
        assert p["energy"] == pytest.approx(r["energy"], abs=1e-10)
        np.testing.assert_allclose(p["charges"][:4].sum(), 1.0, atol=1e-12)
    assert ase.Atoms  # ASE round trip of predictions is covered by test_train
