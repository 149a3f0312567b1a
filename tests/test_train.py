"""Models, training, checkpoints, datasets and the ``jaxlr fit`` main job."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlr import data, models, train
from jaxlr.data import datasets
from jaxlr.neighbors import Pairs
from tests.structures import random_rotation

SMALL = {"features": 8, "n_layers": 1, "n_basis": 6, "hidden": 8}


@pytest.fixture(scope="module")
def clusters():
    return datasets.load("nacl_clusters")


@pytest.fixture(scope="module")
def charges_set():
    return datasets.load("random_charges")


def _one(model, frame, electrostatics=None, capacity=None):
    """Arguments of model(...) for one unpadded frame."""
    cutoff = models.pair_cutoff(model, [frame])
    batch = data.pad([frame], frame.n_atoms, cutoff=cutoff, capacity=capacity)
    pairs = Pairs(
        jnp.asarray(batch.pair_i[0]),
        jnp.asarray(batch.pair_j[0]),
        jnp.asarray(batch.pair_shifts[0]),
        jnp.asarray(batch.pair_mask[0]),
        cutoff,
        False,
    )
    if electrostatics is None:
        electrostatics = models.electrostatics_for(
            [frame], data.kind(frame), sigma=model.sigma, cutoff=cutoff
        )
    return batch, pairs, electrostatics


# ------------------------------------------------------------------ datasets


def test_default_dataset_has_documented_frames_labels_and_checksum(clusters):
    record = datasets.manifest()
    assert set(record) == set(datasets.NAMES)
    for name in datasets.NAMES:
        assert datasets.checksum(datasets.path(name)) == record[name]["sha256"]
        assert record[name]["settings"] == datasets.SETTINGS[name]
    assert len(clusters) == 900 == record["nacl_clusters"]["n_frames"]
    sizes = [f.n_atoms for f in clusters]
    assert sizes[:600].count(16) == 300 and sizes[:600].count(17) == 300
    assert sizes[600:750] == [16] * 150 and sizes[750:] == [17] * 150
    for f in clusters:
        assert f.labels() == ["energy", "forces", "charges", "dipole"]
        assert f.charge == (1.0 if f.n_atoms == 17 else 0.0)
        assert abs(f.charges.sum() - f.charge) < 1e-6
    # the settings travel inside the file too
    import ase.io

    every = ase.io.read(datasets.path("nacl_clusters"), index=":", format="extxyz")
    first = every[0]
    assert first.info["gen_seed"] == datasets.SETTINGS["nacl_clusters"]["seed"]
    assert first.info["gen_method"] == "GFN2-xTB"
    # the pulled-out frames: one outer Na moved 0-7 Å radially, away from the rest
    for a in every[600:]:
        i, d = a.info["pull_atom"], a.info["pull_distance"]
        assert a.numbers[i] == 11 and 0.0 <= d <= 7.0
        rest = np.delete(a.positions, i, axis=0)
        gap = np.min(np.linalg.norm(rest - a.positions[i], axis=1))
        assert gap > 2.0  # never dragged into the cluster
    assert "pull_atom" not in every[0].info
    bulk = datasets.load("nacl_bulk")
    assert len(bulk) == 200 and all(f.stress is not None and f.periodic for f in bulk)


def test_random_charge_labels_are_the_ewald_energy_of_the_true_charges(charges_set):
    import jaxlr
    from jaxlr.neighbors import _host_pairs

    s = datasets.SETTINGS["random_charges"]
    f = charges_set[3]
    assert set(np.unique(f.charges)) == {-1.0, 1.0}
    assert np.all((f.charges > 0) == (f.numbers == 11))
    i, j, sh = _host_pairs(f.positions, s["repulsion_cutoff"], f.cell, (True,) * 3, True)
    pairs = Pairs(
        jnp.asarray(i), jnp.asarray(j), jnp.asarray(sh), jnp.ones(len(i), bool), 4.5, True
    )
    rep = datasets.random_charges_energy(
        f.positions, f.cell, pairs, s["born_mayer_a"], s["born_mayer_rho"], 4.5
    )
    e = jaxlr.electrostatic_energy(f.positions, f.charges, f.cell, accuracy=1e-9) + rep
    assert abs(float(e) - f.energy) < 1e-5


def test_dataset_regenerates_bit_for_bit(tmp_path):
    pytest.importorskip("tblite")
    datasets.generate("nacl_path", tmp_path)
    assert (
        datasets.checksum(tmp_path / "nacl_path.extxyz.gz")
        == (datasets.manifest()["nacl_path"]["sha256"])
    )
    assert (tmp_path / "nacl_path.extxyz.gz").read_bytes() == datasets.path(
        "nacl_path"
    ).read_bytes()


def test_dataset_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        datasets.load("nope")


# ------------------------------------------------------------------ models


@pytest.mark.parametrize("name", ["latent", "short_range"])
def test_forces_and_stress_are_derivatives_of_the_energy(name, charges_set):
    frame = charges_set[0]
    model = models.build(name, **SMALL)
    batch, pairs, el = _one(model, frame)
    pos, cell = jnp.asarray(frame.positions), jnp.asarray(frame.cell)
    num, mask = jnp.asarray(frame.numbers), jnp.ones(frame.n_atoms, bool)
    out = models.predict(model, pos, num, mask, pairs, cell, 0.0, el)

    @jax.jit
    def energy(p, c):
        return model(p, num, mask, pairs, c, 0.0, el)["energy"]

    h = 1e-5
    for atom, axis in [(0, 0), (5, 2), (17, 1)]:
        d = jnp.zeros_like(pos).at[atom, axis].set(h)
        fd = -(energy(pos + d, cell) - energy(pos - d, cell)) / (2 * h)
        assert abs(float(fd) - float(out["forces"][atom, axis])) < 1e-7
    volume = abs(np.linalg.det(frame.cell))
    for a, b in [(0, 0), (1, 2), (2, 1)]:
        eps = jnp.zeros((3, 3)).at[a, b].set(h)
        plus = energy(pos @ (jnp.eye(3) + eps), cell @ (jnp.eye(3) + eps))
        minus = energy(pos @ (jnp.eye(3) - eps), cell @ (jnp.eye(3) - eps))
        fd = (plus - minus) / (2 * h) / volume
        assert abs(float(fd) - float(out["stress"][a, b])) < 1e-8


def test_charges_conserve_total_charge_and_symmetries(clusters):
    frame = next(f for f in clusters if f.charge == 1.0)
    model = models.build("explicit", **SMALL, seed=3)
    batch, pairs, el = _one(model, frame)
    num, mask = jnp.asarray(frame.numbers), jnp.ones(frame.n_atoms, bool)

    @jax.jit
    def run(pos):
        return models.predict(model, pos, num, mask, pairs, None, 1.0, el)

    out = run(jnp.asarray(frame.positions))
    assert abs(float(jnp.sum(out["charges"])) - 1.0) < 1e-12
    assert float(jnp.std(out["charges"])) > 1e-4
    rot = random_rotation(np.random.default_rng(1))
    moved = run(jnp.asarray(frame.positions @ rot.T))
    assert abs(float(moved["energy"] - out["energy"])) < 1e-9
    np.testing.assert_allclose(moved["forces"], np.asarray(out["forces"]) @ rot.T, atol=1e-9)
    np.testing.assert_allclose(moved["dipole"], rot @ np.asarray(out["dipole"]), atol=1e-9)
    np.testing.assert_allclose(moved["charges"], out["charges"], atol=1e-12)
    shift = np.array([0.3, -1.2, 2.0])
    shifted = run(jnp.asarray(frame.positions + shift))
    assert abs(float(shifted["energy"] - out["energy"])) < 1e-9
    np.testing.assert_allclose(shifted["forces"], out["forces"], atol=1e-9)
    # the dipole of a charged cluster moves with the origin by Q * shift
    np.testing.assert_allclose(shifted["dipole"], np.asarray(out["dipole"]) + shift, atol=1e-9)


def test_padding_and_batching_never_change_a_prediction(clusters, charges_set):
    # a tight Ewald accuracy: the k set is chosen per batch, to 1e-12 relative
    for frames in (clusters[295:303], charges_set[:3]):
        model = models.build("latent", **SMALL, seed=1)
        together = train.predict_frames(model, frames, batch_size=8, accuracy=1e-12)
        for f, p in zip(frames, together):
            alone = train.predict_frames(model, [f], batch_size=1, accuracy=1e-12)[0]
            assert abs(alone["energy"] - p["energy"]) < 1e-9
            np.testing.assert_allclose(alone["forces"], p["forces"], atol=1e-10)
            np.testing.assert_allclose(alone["charges"], p["charges"], atol=1e-12)


def test_pure_function_equals_the_module(charges_set):
    frame = charges_set[1]
    model = models.build("latent", **SMALL)
    batch, pairs, el = _one(model, frame)
    args = (jnp.asarray(frame.positions), jnp.asarray(frame.numbers))
    fn, state = models.pure(model)
    mask = jnp.ones(frame.n_atoms, bool)
    e1 = jax.jit(fn, static_argnums=7)(state, *args, jnp.asarray(frame.cell), pairs, mask, 0.0, el)
    e2 = model(args[0], args[1], mask, pairs, jnp.asarray(frame.cell), 0.0, el)["energy"]
    assert abs(float(e1) - float(e2)) < 1e-10


def test_slab_frames_are_refused_by_charge_models(charges_set):
    f = charges_set[0]
    slab = data.Frame(f.positions, f.numbers, f.cell, (True, True, False), 0.0)
    with pytest.raises(ValueError, match="slab"):
        models.electrostatics_for([slab], "slab", sigma=1.0, cutoff=5.0)


# ------------------------------------------------------------------ training

TINY = {
    "model": "latent",
    "model_args": SMALL,
    "epochs": 3,
    "batch_size": 8,
    "learning_rate": 1e-2,
    "warmup_epochs": 0,
    "seed": 1,
}


def _flat(model):
    from flax import nnx

    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(nnx.state(model))])


def test_training_lowers_the_loss_and_resumes_exactly(clusters, tmp_path):
    thermal = clusters[:600]  # the thermal frames (the pulled-out ones follow)
    frames = thermal[::25] + thermal[1::25]  # 48 frames, both clusters
    full = train.fit(frames, TINY, tmp_path / "a", progress=False)
    hist = full["history"]
    assert hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"]
    for name in ("config.json", "history.json", "metrics.json"):
        assert (tmp_path / "a" / name).exists()
    assert {"energy", "forces", "charges"} <= set(full["metrics"])
    part = train.fit(frames, TINY, tmp_path / "b", progress=False, stop_after=2)
    assert len(part["history"]) == 2
    rest = train.fit(frames, None, tmp_path / "b", progress=False, resume=True)
    assert rest["history"][2]["train_loss"] == pytest.approx(hist[2]["train_loss"], rel=1e-10)
    last_a = train.load(tmp_path / "a", which="last")
    last_b = train.load(tmp_path / "b", which="last")
    np.testing.assert_allclose(_flat(last_a), _flat(last_b), rtol=1e-10, atol=1e-13)
    with pytest.raises(FileExistsError, match="not empty"):
        train.fit(frames, TINY, tmp_path / "a", progress=False)


def test_corrupted_or_missing_checkpoints_raise_clearly(clusters, tmp_path):
    frames = clusters[::60]
    train.fit(frames, {**TINY, "epochs": 1}, tmp_path / "r", progress=False)
    train.load(tmp_path / "r")  # loads
    # truncate every file: which one holds the parameters (and where in it) depends
    # on orbax's write order, so cutting only the biggest could miss them
    files = [p for p in (tmp_path / "r" / "checkpoints" / "last").rglob("*") if p.is_file()]
    for file in files:
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 3])
    with pytest.raises(train.CheckpointError, match="corrupted"):
        train.load(tmp_path / "r", which="last")
    import shutil

    shutil.rmtree(tmp_path / "r" / "checkpoints" / "best")
    with pytest.raises(train.CheckpointError, match="no checkpoint"):
        train.load(tmp_path / "r")


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(clusters, tmp_path, monkeypatch):
    frames = clusters[::60]
    train.fit(frames, TINY, tmp_path / "r", progress=False, stop_after=1)
    before = _flat(train.load(tmp_path / "r", which="last"))
    monkeypatch.setattr(train, "_loss", lambda errors, weights: jnp.nan)
    with pytest.raises(train.TrainingDiverged, match="non-finite training loss.*last good"):
        train.fit(frames, None, tmp_path / "r", progress=False, resume=True)
    np.testing.assert_array_equal(_flat(train.load(tmp_path / "r", which="last")), before)


def test_config_and_data_errors_name_the_argument(clusters, tmp_path):
    with pytest.raises(ValueError, match="unknown training config key"):
        train.TrainConfig.from_dict({"epochz": 3})
    with pytest.raises(ValueError, match="learning_rate"):
        train.TrainConfig.from_dict({"learning_rate": -1.0})
    unlabelled = [data.Frame(f.positions, f.numbers, energy=f.energy) for f in clusters[:20]]
    with pytest.raises(ValueError, match="no REF_charges"):
        train.fit(unlabelled, {**TINY, "model": "explicit"}, tmp_path / "x", progress=False)


def test_unknown_species_at_prediction_time(clusters, tmp_path):
    train.fit(clusters[::60], {**TINY, "epochs": 1}, tmp_path / "r", progress=False)
    f = clusters[0]
    odd = data.Frame(f.positions, np.where(f.numbers == 11, 19, f.numbers), charge=0.0)
    with pytest.raises(ValueError, match=r"frame 0 has atomic number\(s\) \[19\]"):
        train.evaluate(tmp_path / "r", [odd])


@pytest.mark.slow
def test_two_devices_give_the_same_step_as_one(tmp_path):
    script = f"""
import jax, numpy as np, sys
jax.config.update("jax_enable_x64", True)
from jaxlr import train
from jaxlr.data import datasets
from flax import nnx
assert len(jax.devices()) == int(sys.argv[1])
frames = datasets.load("nacl_clusters")[::40]
cfg = {json.dumps({**TINY, "epochs": 1})}
r = train.fit(frames, cfg, sys.argv[2], progress=False)
leaves = jax.tree.leaves(nnx.state(train.load(sys.argv[2], which="last")))
np.save(sys.argv[2] + ".npy", np.concatenate([np.ravel(x) for x in leaves]))
"""
    # one device here (the suite's process), two in a subprocess with fake devices
    assert len(jax.devices()) == 1
    frames = datasets.load("nacl_clusters")[::40]
    train.fit(frames, {**TINY, "epochs": 1}, tmp_path / "d1", progress=False)
    results = [_flat(train.load(tmp_path / "d1", which="last"))]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = tmp_path / "d2"
    subprocess.run(
        [sys.executable, "-c", script, "2", str(out)],
        check=True,
        env=env,
        cwd=Path(__file__).parents[1],
    )
    results.append(np.load(str(out) + ".npy"))
    # Adam divides by sqrt(v): parameters whose gradients are pure rounding noise
    # move by up to ~lr * 1e-5 differently; a wrong reduction would differ by ~lr
    np.testing.assert_allclose(results[0], results[1], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_jaxlr_fit_and_evaluate_end_to_end(tmp_path, capsys):
    from jaxlr.cli import main

    run = tmp_path / "run"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model_args": SMALL, "batch_size": 8}))
    assert (
        main(
            [
                "fit",
                "--epochs",
                "1",
                "--max-frames",
                "24",
                "--out",
                str(run),
                "--config",
                str(cfg),
                "--model",
                "latent_dipoles",
                "--model-arg",
                "sigma=0.8",
                "--quiet",
            ]
        )
        == 0
    )
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["hyper"]["sigma"] == 0.8 and saved["model"]["hyper"]["atomic_dipoles"]
    # the baseline shares the backbone's hyper-parameters, not the dipole head
    base = json.loads((run / "baseline" / "config.json").read_text())
    assert base["model"]["hyper"]["sigma"] == 0.8 and "atomic_dipoles" not in base["model"]["hyper"]
    for name in (
        "config.json",
        "metrics.json",
        "history.json",
        "learning_curves.png",
        "parity.png",
        "path.png",
        "report.txt",
        "summary.json",
    ):
        assert (run / name).stat().st_size > 0, name
    assert (run / "checkpoints" / "best").is_dir()
    assert (run / "baseline" / "metrics.json").exists()
    report = (run / "report.txt").read_text()
    assert "LatentDipoles" in report and "ShortRange" in report
    frames = datasets.load("nacl_path")
    file = tmp_path / "path.extxyz"
    data.write(file, frames)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(file)]) == 0
    printed = capsys.readouterr().out
    assert "energy (meV/atom)" in printed and "charges (me)" in printed
    back = data.read(run / "predictions.extxyz")
    assert len(back) == len(frames)
    import ase.io

    first = ase.io.read(run / "predictions.extxyz", index=0)
    assert "MODEL_energy" in first.info and first.arrays["MODEL_charges"].shape == (17,)


def test_response_labels_train_and_evaluate(tmp_path):
    """Born charges, fields and polarization flow from the files to the loss: the
    Born-charge loss term equals the error of predict_frames' Born charges, fields make
    the energy the electric enthalpy, and polarization is compared modulo its quantum."""
    frames = datasets.load("water_clusters")[::10]
    assert any(f.field is not None for f in frames)
    cfg = {
        "model": "latent",
        "model_args": SMALL,
        "epochs": 1,
        "weights": {"energy": 100.0, "forces": 1.0, "born_charges": 100.0},
    }
    run = train.fit(frames, cfg, tmp_path / "run", progress=False)
    model, test = run["model"], run["test"]
    m = run["metrics"]["born_charges"]
    preds = train.predict_frames(model, test, born_charges=True)
    d = np.concatenate([p["born_charges"] - f.born_charges for p, f in zip(preds, test)])
    assert m["mae"] == pytest.approx(np.mean(np.abs(d)), rel=1e-10)
    from jaxlr import response

    for p, f in zip(preds, test):
        assert response.acoustic_sum_rule_violation(p["born_charges"], f.charge) < 1e-10
    # a field frame: the predicted energy is U - mu . E
    f = next(f for f in frames if f.field is not None)
    plain = data.Frame(f.positions, f.numbers, charge=f.charge)
    with_field, without = train.predict_frames(model, [f, plain])
    assert with_field["energy"] == pytest.approx(
        without["energy"] - without["dipole"] @ f.field, abs=1e-10
    )
    # polarization differences are reduced to the nearest branch
    cell = np.array([[5.0, 0.0, 0.0], [1.0, 6.0, 0.0], [0.0, 0.5, 7.0]])
    quantum = cell / np.linalg.det(cell)
    d = np.array([1e-3, -2e-3, 5e-4])
    shifted = d + quantum[0] - 2 * quantum[2]
    red = train._branch_difference(jnp.asarray(shifted)[None], jnp.asarray(cell)[None])
    np.testing.assert_allclose(np.asarray(red[0]), d, atol=1e-14)
    with pytest.raises(ValueError, match="no charges"):
        train.fit(frames, {"model": "short_range", "epochs": 1}, tmp_path / "sr", progress=False)
