"""The Wannier-centroid model (DPLR style): its Coulomb energy against an independent
sum over ion and centroid sites, symmetries, the dipole bookkeeping, Born charges."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

import jaxlr
from jaxlr import train
from jaxlr.data import Frame
from jaxlr.data.reference import water_cluster
from jaxlr.models import WannierCentres, build
from jaxlr.train import predict_frames
from jaxlr.units import COULOMB
from tests.structures import random_rotation


def _model(**kw):
    m = WannierCentres(features=16, n_layers=1, cutoff=4.0, sigma=0.4, seed=3, **kw)
    m.centre_scale[...] = jnp.asarray(3.0)  # displacements of a few tenths of Å
    return m


def _coulomb_only(m):
    m.energy_scale[...] = jnp.zeros(())  # the short-range energy vanishes
    return m


def _sites(frame, out):
    ions = {1: 1.0, 8: 6.0}
    z = frame.numbers
    pos = np.r_[frame.positions, out["wannier_centres"][z == 8]]
    q = np.r_[[ions[int(a)] for a in z], -8.0 * np.ones(np.sum(z == 8))]
    return pos, q


def test_molecular_energy_against_an_independent_site_sum():
    water = water_cluster(3)
    frame = Frame(positions=water.positions, numbers=water.numbers)
    m = _coulomb_only(_model())
    out = predict_frames(m, [frame])[0]
    disp = np.linalg.norm(out["wannier_centres"] - frame.positions, axis=1)
    assert 0.02 < disp[frame.numbers == 8].min() and disp.max() < 1.0
    assert np.all(disp[frame.numbers == 1] == 0)
    oxygen = frame.numbers == 8
    np.testing.assert_allclose(
        out["atomic_dipoles"][oxygen],
        -8.0 * (out["wannier_centres"] - frame.positions)[oxygen],
        atol=1e-12,
    )
    assert np.all(out["atomic_dipoles"][~oxygen] == 0)
    pos, q = _sites(frame, out)
    s = 0.4
    e = sum(q[k] ** 2 / (2 * np.sqrt(np.pi) * s) for k in range(len(q)))
    for a in range(len(q)):
        for b in range(a + 1, len(q)):
            r = np.linalg.norm(pos[a] - pos[b])
            e += q[a] * q[b] * erf(r / (2 * s)) / r
    np.testing.assert_allclose(out["energy"], COULOMB * e, rtol=1e-10)
    # the dipole is the ion + centroid dipole; the neutral molecule's is origin-free
    np.testing.assert_allclose(out["dipole"], q @ pos, atol=1e-10)
    shifted = Frame(positions=water.positions + 2.5, numbers=water.numbers)
    np.testing.assert_allclose(predict_frames(m, [shifted])[0]["dipole"], out["dipole"], atol=1e-10)


def test_centroids_rotate_with_the_structure():
    water = water_cluster(2)
    rng = np.random.default_rng(0)
    rot = random_rotation(rng)
    m = _model()
    a = predict_frames(m, [Frame(positions=water.positions, numbers=water.numbers)])[0]
    pos2 = water.positions @ rot.T + 0.7
    b = predict_frames(m, [Frame(positions=pos2, numbers=water.numbers)])[0]
    np.testing.assert_allclose(b["wannier_centres"], a["wannier_centres"] @ rot.T + 0.7, atol=1e-10)
    np.testing.assert_allclose(b["energy"], a["energy"], rtol=1e-10)
    np.testing.assert_allclose(b["forces"], a["forces"] @ rot.T, atol=1e-9)


def test_periodic_energy_against_the_public_ewald_and_born_sum_rule():
    water = water_cluster(4)
    cell = np.diag([7.5, 8.0, 8.5])
    frame = Frame(
        positions=water.positions + 3.0, numbers=water.numbers, cell=cell, pbc=(True,) * 3
    )
    m = _coulomb_only(_model())
    out = predict_frames(m, [frame], accuracy=1e-8, born_charges=True)[0]
    pos, q = _sites(frame, out)
    ref = jaxlr.electrostatic_energy(pos, q, cell, sigma=0.4, method="ewald", accuracy=1e-10)
    np.testing.assert_allclose(out["energy"], float(ref), rtol=1e-7)
    z = out["born_charges"]
    assert np.abs(z.sum(axis=0)).max() < 1e-9  # acoustic sum rule, neutral cell
    assert np.abs(z).max() > 0.1
    # forces are the derivative of the energy (finite differences on one coordinate)
    h = 1e-4
    e = []
    for sign in (1, -1):
        p = frame.positions.copy()
        p[2, 1] += sign * h
        f2 = Frame(positions=p, numbers=frame.numbers, cell=cell, pbc=(True,) * 3)
        e.append(predict_frames(m, [f2], accuracy=1e-8)[0]["energy"])
    np.testing.assert_allclose(out["forces"][2, 1], -(e[0] - e[1]) / (2 * h), rtol=1e-5, atol=1e-7)


def test_bookkeeping_errors_and_hyper_round_trip():
    m = _model()
    again = build("wannier", **m.hyper)
    assert again.ions == m.ions and again.centres == m.centres
    with pytest.raises(ValueError, match="no entry in ions"):
        WannierCentres(ions={1: 1.0}, centres={8: -8.0})
    water = water_cluster(1)
    charged = Frame(positions=water.positions, numbers=water.numbers, charge=1.0)
    with pytest.raises(ValueError, match="total charge"):
        m.check_frames([charged])
    methane = Frame(positions=np.eye(3) * 1.5, numbers=np.array([6, 1, 1]))
    with pytest.raises(ValueError, match="without an ionic charge"):
        m.check_frames([methane])


# ---------------------------------------------------------------- latent dipoles


def _dipole_model():
    from jaxlr.models import LatentDipoles

    m = LatentDipoles(features=16, n_layers=1, cutoff=4.0, sigma=0.5, seed=2)
    m.dipole_scale[...] = jnp.asarray(0.5)
    return m


def test_latent_dipoles_rotate_and_enter_energy_and_dipole():
    water = water_cluster(3)
    frame = Frame(positions=water.positions, numbers=water.numbers)
    m = _dipole_model()
    a = predict_frames(m, [frame])[0]
    p = a["atomic_dipoles"]
    assert np.abs(p).max() > 1e-2
    np.testing.assert_allclose(a["dipole"], a["charges"] @ frame.positions + p.sum(0), atol=1e-10)
    # the Coulomb part is the public kernel's energy of these charges and dipoles
    m0 = _dipole_model()
    m0.energy_scale[...] = jnp.zeros(())
    b = predict_frames(m0, [frame])[0]
    ref = jaxlr.electrostatic_energy(
        frame.positions, b["charges"], dipoles=b["atomic_dipoles"], sigma=0.5
    )
    np.testing.assert_allclose(b["energy"], float(ref), rtol=1e-10)
    rot = random_rotation(np.random.default_rng(4))
    c = predict_frames(m, [Frame(positions=water.positions @ rot.T, numbers=water.numbers)])[0]
    np.testing.assert_allclose(c["atomic_dipoles"], p @ rot.T, atol=1e-10)
    np.testing.assert_allclose(c["energy"], a["energy"], rtol=1e-10)


def test_latent_dipoles_in_a_cell_obey_the_sum_rule():
    water = water_cluster(4)
    cell = np.diag([7.0, 7.5, 8.0])
    frame = Frame(
        positions=water.positions + 3.0, numbers=water.numbers, cell=cell, pbc=(True,) * 3
    )
    m = _dipole_model()
    m.energy_scale[...] = jnp.zeros(())
    out = predict_frames(m, [frame], accuracy=1e-8, born_charges=True)[0]
    ref = jaxlr.electrostatic_energy(
        frame.positions,
        out["charges"],
        cell,
        dipoles=out["atomic_dipoles"],
        sigma=0.5,
        method="ewald",
        accuracy=1e-10,
    )
    np.testing.assert_allclose(out["energy"], float(ref), rtol=1e-6)
    assert np.abs(out["born_charges"].sum(axis=0)).max() < 1e-9


def test_atomic_dipoles_only_for_local_charge_models():
    with pytest.raises(ValueError, match="atomic_dipoles"):
        build("short_range", atomic_dipoles=True)
    m = _dipole_model()
    again = build("latent_dipoles", **m.hyper)
    assert again.atomic_dipoles and again.hyper == m.hyper


def test_wannier_model_trains_on_centroids_saves_and_reloads(tmp_path):
    from jaxlr.data import datasets

    frames = [f for f in datasets.load("water_wannier") if f.n_atoms <= 6][:12]
    assert all(f.wannier_centres is not None for f in frames)
    args = {"features": 8, "n_layers": 1, "n_basis": 6, "hidden": 8, "sigma": 0.5}
    cfg = {
        "model": "wannier",
        "model_args": args,
        "epochs": 4,
        "batch_size": 4,
        "n_buckets": 1,
        "learning_rate": 1e-2,
        "split": (1.0, 0.0, 0.0),
        "weights": {"energy": 0.0, "forces": 0.0, "wannier_centres": 1e4},
    }
    before = train.metrics_from(predict_frames(WannierCentres(**args), frames), frames)
    run = train.fit(frames, cfg, tmp_path / "run", progress=False, test_frames=frames)
    after = run["metrics"]["wannier_centres"]["rmse"]
    assert after < 0.5 * before["wannier_centres"]["rmse"]
    loaded = train.load(tmp_path / "run")
    a, b = (predict_frames(m, frames[:3]) for m in (run["model"], loaded))
    for p, q in zip(a, b):
        np.testing.assert_allclose(p["wannier_centres"], q["wannier_centres"], atol=1e-12)
        np.testing.assert_allclose(p["dipole"], q["dipole"], atol=1e-12)
