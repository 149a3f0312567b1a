"""Datasets: extxyz round trip, validation errors, padding and buckets, splits."""

import ase
import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlr
from jaxlr import data


def frames(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    # a molecule with every label but stress, a charged molecule, a periodic cell
    # with stress, a slab with only an energy
    for n, kind in ((5, "mol"), (7, "charged"), (8, "cell"), (6, "slab")):
        pos = rng.uniform(0, 4, (n, 3))
        numbers = rng.choice([1, 8, 11, 17], n)
        charge = 1.0 if kind == "charged" else 0.0
        cell, pbc = None, (False, False, False)
        if kind == "cell":
            cell, pbc = np.diag([6.0, 6.5, 7.0]) + 0.3 * rng.normal(size=(3, 3)), (True,) * 3
        if kind == "slab":
            cell, pbc = np.diag([6.0, 6.0, 20.0]), (True, True, False)
        q = rng.normal(size=n)
        q += (charge - q.sum()) / n
        labels = dict(energy=float(rng.normal()))
        if kind != "slab":
            labels.update(forces=rng.normal(size=(n, 3)), charges=q, dipole=rng.normal(size=3))
        if kind == "mol":
            labels["wannier_centres"] = pos + 0.1 * rng.normal(size=(n, 3))
        if kind == "cell":
            s = rng.normal(size=(3, 3))
            labels["stress"] = s + s.T
        out.append(data.Frame(pos, numbers, cell, pbc, charge, **labels))
    return out


def assert_same(a, b, atol=1e-12):
    np.testing.assert_allclose(a.positions, b.positions, atol=atol)
    np.testing.assert_array_equal(a.numbers, b.numbers)
    assert a.pbc == b.pbc and a.charge == pytest.approx(b.charge)
    assert (a.cell is None) == (b.cell is None)
    if a.cell is not None:
        np.testing.assert_allclose(a.cell, b.cell, atol=1e-12)
    assert a.labels() == b.labels()
    for name in a.labels():
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=atol)


def test_extxyz_round_trip_keeps_every_label(tmp_path):
    path = tmp_path / "set.extxyz"
    original = frames()
    data.write(path, original)
    back = data.read(path)
    assert len(back) == len(original)
    for a, b in zip(original, back):
        # ASE writes per-atom columns with 8 decimals (%16.8f)
        assert_same(a, b, atol=5e-9)
    assert back[2].labels() == ["energy", "forces", "stress", "charges", "dipole"]
    assert back[3].pbc == (True, True, False)


def test_malformed_data_names_file_frame_and_key(tmp_path):
    path = tmp_path / "bad.extxyz"
    good = data.to_atoms(frames()[0])
    bad = good.copy()
    bad.arrays["REF_charges"] = np.zeros(len(bad))  # ok shape, wrong total below
    bad.info["charge"] = 2.0
    ase.io.write(path, [good, bad], format="extxyz")
    with pytest.raises(ValueError, match=r"bad.extxyz: frame 1: REF_charges sum"):
        data.read(path)
    atoms = good.copy()
    atoms.info["REF_dipole"] = np.zeros(4)
    with pytest.raises(ValueError, match=r"frame 3: key 'REF_dipole' has shape \(4,\)"):
        data.from_atoms(atoms, index=3)
    atoms = good.copy()
    atoms.info["REF_stress"] = np.zeros(9)
    with pytest.raises(ValueError, match="REF_stress' on a non-periodic"):
        data.from_atoms(atoms)
    with pytest.raises(FileNotFoundError, match="no such dataset"):
        data.read(tmp_path / "missing.extxyz")


def test_wannier_centres_label_round_trip_validation_and_batch(tmp_path):
    path = tmp_path / "wannier.extxyz"
    original = frames()
    assert original[0].labels() == ["energy", "forces", "charges", "dipole", "wannier_centres"]
    data.write(path, original)
    text = path.read_text()
    assert "REF_wannier_centres:R:3" in text
    back = data.read(path)
    np.testing.assert_allclose(back[0].wannier_centres, original[0].wannier_centres, atol=5e-9)
    assert back[1].wannier_centres is None
    batch = data.pad(back[:2], 8, batch_size=3)
    assert batch.wannier_centres.shape == (3, 8, 3)
    np.testing.assert_array_equal(batch.has_wannier_centres, [1, 0, 0])
    np.testing.assert_array_equal(batch.wannier_centres[0, 5:], 0.0)  # padding atoms
    np.testing.assert_array_equal(batch.wannier_centres[1], 0.0)
    again = data.unpad(batch)
    np.testing.assert_array_equal(again[0].wannier_centres, back[0].wannier_centres)
    assert again[1].wannier_centres is None
    atoms = data.to_atoms(original[0])
    atoms.arrays["REF_wannier_centres"] = np.zeros((len(atoms), 2))
    with pytest.raises(ValueError, match=r"frame 7: key 'REF_wannier_centres' has shape"):
        data.from_atoms(atoms, index=7)
    atoms.arrays["REF_wannier_centres"] = np.full((len(atoms), 3), np.nan)
    with pytest.raises(ValueError, match="'REF_wannier_centres' has non-finite"):
        data.from_atoms(atoms)


def test_padding_and_buckets_never_change_a_prediction():
    """pad -> unpad is the identity; a per-structure function of the padded arrays
    (Coulomb energy of the masked reference charges, Gaussian widths) equals the
    unpadded one, single or in a batch under vmap."""
    fs = [f for f in frames(1) if f.charges is not None and f.cell is None]
    sizes = data.bucket_sizes([f.n_atoms for f in fs], n_buckets=2)
    assert sizes[-1] >= max(f.n_atoms for f in fs)
    batch = data.pad(fs, sizes[-1], batch_size=4)
    for a, b in zip(fs, data.unpad(batch)):
        assert_same(a, b)

    def energy(pos, q, mask):
        # padding atoms: zero charge, far apart from nothing that matters
        return jaxlr.kernels.coulomb_energy(pos, jnp.where(mask, q, 0.0), sigma=0.7)

    padded = jax.vmap(energy)(batch.positions, batch.charges, batch.mask)
    for k, f in enumerate(fs):
        single = energy(jnp.asarray(f.positions), jnp.asarray(f.charges), np.ones(f.n_atoms, bool))
        assert float(padded[k]) == pytest.approx(float(single), rel=1e-12)
    assert np.all(batch.weight == [1, 1, 0, 0])


def test_batches_group_by_bucket_and_shuffle_reproducibly():
    fs = frames(2) * 5
    sizes = (6, 8)
    out = list(data.batches(fs, 3, sizes, shuffle=True, seed=4))
    again = list(data.batches(fs, 3, sizes, shuffle=True, seed=4))
    assert len(out) == len(again)
    for a, b in zip(out, again):
        np.testing.assert_array_equal(a.positions, b.positions)
    assert {b.positions.shape[1] for b in out} == {6, 8}
    assert sum(int(b.weight.sum()) for b in out) == len(fs)
    with pytest.raises(ValueError, match="largest bucket"):
        list(data.batches(fs, 3, (4,)))


def test_splits_are_reproducible_and_disjoint():
    a = data.split(101, (0.8, 0.1, 0.1), seed=3)
    b = data.split(101, (0.8, 0.1, 0.1), seed=3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert sum(len(x) for x in a) == 101
    assert len(np.unique(np.concatenate(a))) == 101
    assert not np.array_equal(a[0], data.split(101, seed=4)[0])
    with pytest.raises(ValueError, match="fractions"):
        data.split(10, (0.5, 0.6))
