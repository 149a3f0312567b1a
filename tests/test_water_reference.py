"""GFN2-xTB under an external field, Born charges, polarizability, water_clusters.

Numbers seen with tblite 0.8.0 (GFN2-xTB, accuracy 1e-5, steps 1e-3 Å and 5e-3 V/Å):

- the two Born-charge routes (d mu / d R and d F / d E) differ by at most 5e-7 e
  (monomer), 1e-6 e (dimer, pentamer); with tblite's default accuracy 1.0, by 3e-2 e;
- acoustic sum rule |sum_i Z_i| <= 3e-6 e; d energy / d field = -dipole to ~1e-8 e·Å;
- water monomer polarizability diag (0.0542, 0.0208, 3.2e-5) e·Å^2/V along the H-H
  axis, the bisector and the plane normal (minimal basis: almost no out-of-plane
  response), asymmetry ~1e-13.
"""

import gzip
import hashlib

import numpy as np
import pytest
from ase import Atoms

pytest.importorskip("tblite")

from jaxlr.data import datasets  # noqa: E402
from jaxlr.data.reference import (  # noqa: E402
    born_charges,
    label,
    label_frames,
    polarizability,
    relax,
    water_cluster,
)


@pytest.fixture(scope="module")
def monomer():
    return relax(water_cluster(1))


@pytest.fixture(scope="module")
def dimer():
    return relax(water_cluster(2))


@pytest.fixture(scope="module")
def pentamer():
    return relax(water_cluster(5))


def _distorted(atoms, seed=0, scale=0.03):
    out = atoms.copy()
    out.positions += scale * np.random.default_rng(seed).standard_normal(out.positions.shape)
    return out


# ------------------------------------------------------------------ field labels


def test_field_energy_derivative_is_minus_dipole(monomer):
    atoms = _distorted(monomer)
    field = np.array([0.05, -0.03, 0.08])  # V/Å
    ref = label(atoms, field=field, accuracy=1e-6)
    h = 1e-3
    grad = np.zeros(3)
    for a in range(3):
        step = np.zeros(3)
        step[a] = h
        plus = label(atoms, field=field + step, accuracy=1e-6)["energy"]
        minus = label(atoms, field=field - step, accuracy=1e-6)["energy"]
        grad[a] = (plus - minus) / (2 * h)
    assert np.abs(ref["dipole"]).max() > 0.3  # water: ~0.45 e·Å
    np.testing.assert_allclose(grad, -ref["dipole"], atol=1e-6, rtol=0)
    # the field costs energy -E.mu relative to no field, to first order
    zero = label(atoms, accuracy=1e-6)
    expected = -field @ zero["dipole"]
    assert abs(ref["energy"] - zero["energy"] - expected) < 0.05 * abs(expected)


def test_field_forces_match_finite_difference_and_sum_to_q_e(monomer):
    field = np.array([0.3, -0.2, 0.5])  # large, so the field force is sizeable
    for charge in (0.0, 1.0):
        atoms = _distorted(monomer, seed=1)
        ref = label(atoms, field=field, charge=charge)
        h = 1e-4
        fd = np.zeros((3, 3))
        for i in range(3):
            for k in range(3):
                e = []
                for sign in (1.0, -1.0):
                    moved = atoms.copy()
                    moved.positions[i, k] += sign * h
                    e.append(label(moved, field=field, charge=charge)["energy"])
                fd[i, k] = -(e[0] - e[1]) / (2 * h)
        np.testing.assert_allclose(ref["forces"], fd, atol=1e-5, rtol=0)
        np.testing.assert_allclose(ref["forces"].sum(axis=0), charge * field, atol=1e-8)
        no_field = label(atoms, charge=charge)
        assert np.abs(ref["forces"] - no_field["forces"]).max() > 0.05


def test_field_from_info_and_label_frames(monomer):
    field = np.array([0.0, 0.07, -0.02])
    explicit = label(monomer, field=field)
    tagged = monomer.copy()
    tagged.info["field"] = field
    from_info = label(tagged)
    assert from_info["energy"] == explicit["energy"]
    np.testing.assert_array_equal(from_info["dipole"], explicit["dipole"])
    # the argument overrides info; a zero field is no field
    np.testing.assert_allclose(
        label(tagged, field=[0, 0, 0])["forces"], label(monomer)["forces"], rtol=0, atol=1e-12
    )

    stale = monomer.copy()
    stale.arrays["REF_born_charges"] = np.ones((3, 9))
    frames = label_frames([tagged, stale], response=True)
    np.testing.assert_array_equal(frames[0].info["field"], field)
    assert "field" not in frames[1].info
    assert frames[0].info["REF_energy"] == explicit["energy"]
    for frame in frames:
        assert frame.arrays["REF_born_charges"].shape == (3, 9)
        assert frame.info["REF_polarizability"].shape == (9,)
    z = born_charges(tagged)
    np.testing.assert_array_equal(frames[0].arrays["REF_born_charges"], z.reshape(3, 9))
    alpha = polarizability(monomer)
    np.testing.assert_array_equal(frames[1].info["REF_polarizability"], alpha.reshape(9))
    forced = label_frames([monomer], field=field)[0]  # a field given here is recorded
    np.testing.assert_array_equal(forced.info["field"], field)
    assert forced.info["REF_energy"] == explicit["energy"]


# ------------------------------------------------------------------ Born charges


@pytest.mark.parametrize("n", [1, 2, 5])
def test_born_charge_routes_agree(n, monomer, dimer, pentamer):
    # Maxwell relation d mu_a / d R_ib = d F_ib / d E_a, two independent routes.
    atoms = _distorted({1: monomer, 2: dimer, 5: pentamer}[n], seed=n, scale=0.02)
    z_dipole = born_charges(atoms, route="dipole")
    z_forces = born_charges(atoms, route="forces")
    assert z_dipole.shape == z_forces.shape == (3 * n, 3, 3)
    np.testing.assert_allclose(z_dipole, z_forces, atol=1e-4, rtol=0)  # seen: <= 1.1e-6
    for z in (z_dipole, z_forces):  # acoustic sum rule of a neutral molecule
        np.testing.assert_allclose(z.sum(axis=0), 0.0, atol=1e-4)
    # chemistry: O negative, H positive (isotropic parts)
    iso = np.trace(z_dipole, axis1=1, axis2=2) / 3
    assert (iso[0::3] < -0.3).all() and (iso[1::3] > 0.1).all() and (iso[2::3] > 0.1).all()


def test_born_charges_under_field_and_charged():
    # H3O+ (pyramidal) in a field: routes agree and sum_i Z_i = Q I.
    h3o = Atoms(
        "OHHH",
        positions=[[0, 0, 0.1], [0.95, 0, -0.2], [-0.47, 0.82, -0.22], [-0.48, -0.8, -0.2]],
    )
    field = np.array([0.04, -0.06, 0.05])
    z_dipole = born_charges(h3o, charge=1.0, field=field)
    z_forces = born_charges(h3o, charge=1.0, field=field, route="forces")
    np.testing.assert_allclose(z_dipole, z_forces, atol=1e-4, rtol=0)
    np.testing.assert_allclose(z_dipole.sum(axis=0), np.eye(3), atol=1e-4)
    # the field changes Z (slightly): the derivative is taken at that field
    assert np.abs(born_charges(h3o, charge=1.0) - z_dipole).max() > 1e-5


def test_born_charge_steps_and_accuracy_matter(monomer):
    atoms = _distorted(monomer, seed=3)
    reference = born_charges(atoms)
    # a 10x larger position step: O(h^2) truncation error ~1e-4 e, still small
    coarse = born_charges(atoms, delta=1e-2)
    assert 1e-6 < np.abs(coarse - reference).max() < 1e-3
    # tblite's default SCC accuracy is too loose for finite differences
    loose = born_charges(atoms, accuracy=1.0)
    assert np.abs(loose - reference).max() > 1e-3


# ------------------------------------------------------------------ polarizability


def test_polarizability_symmetric_positive_and_covariant(monomer, dimer):
    alpha = polarizability(monomer)
    assert alpha.shape == (3, 3)
    np.testing.assert_allclose(alpha, alpha.T, atol=1e-3 * np.abs(alpha).max())
    # monomer in the xy plane, bisector along y: diagonal in these axes
    np.testing.assert_allclose(np.diag(alpha), [0.0542, 0.0208, 3.2e-5], rtol=0.02)
    assert np.linalg.eigvalsh(0.5 * (alpha + alpha.T)).min() > 0

    atoms = _distorted(dimer, seed=4)
    alpha = polarizability(atoms)
    np.testing.assert_allclose(alpha, alpha.T, atol=1e-3 * np.abs(alpha).max())
    assert np.linalg.eigvalsh(0.5 * (alpha + alpha.T)).min() > 0.01
    # independent route: alpha_aa = -d^2 energy / d E_a^2
    h = 0.02
    e0 = label(atoms, accuracy=1e-7)["energy"]
    for a in range(3):
        step = np.zeros(3)
        step[a] = h
        ep = label(atoms, field=step, accuracy=1e-7)["energy"]
        em = label(atoms, field=-step, accuracy=1e-7)["energy"]
        assert abs(-(ep - 2 * e0 + em) / h**2 - alpha[a, a]) < 1e-3 * alpha[a, a]
    # a rotated molecule has the rotated tensor, R alpha R^T
    rot = np.linalg.qr(np.random.default_rng(5).standard_normal((3, 3)))[0]
    turned = atoms.copy()
    turned.positions = atoms.positions @ rot.T
    np.testing.assert_allclose(polarizability(turned), rot @ alpha @ rot.T, atol=1e-6)


# ------------------------------------------------------------------ dataset


@pytest.fixture(scope="module")
def water_images():
    import ase.io

    return ase.io.read(datasets.path("water_clusters"), index=":", format="extxyz")


def test_water_clusters_file(water_images):
    file = datasets.path("water_clusters")
    with gzip.open(file, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    record = datasets.manifest()["water_clusters"]
    assert digest == record["sha256"] == datasets.checksum(file)
    assert record["settings"] == datasets.SETTINGS["water_clusters"]
    s = datasets.SETTINGS["water_clusters"]
    assert len(water_images) == record["n_frames"] == sum(s["n_frames"]) == 200
    sizes = [len(a) for a in water_images]
    assert [sizes.count(3 * n) for n in s["systems"]] == s["n_frames"]
    with_field = [a for a in water_images if "field" in a.info]
    assert len(with_field) == 40
    for a in with_field:
        assert 0.05 <= np.linalg.norm(a.info["field"]) <= 0.1
    for a in water_images:
        n = len(a)
        assert a.get_chemical_symbols() == ["O", "H", "H"] * (n // 3)
        assert a.info["gen_dataset"] == "water_clusters" and a.info["gen_seed"] == s["seed"]
        assert a.info["charge"] == 0.0
        assert a.arrays["REF_forces"].shape == (n, 3)
        assert abs(a.arrays["REF_charges"].sum()) < 1e-6
        z = a.arrays["REF_born_charges"]
        assert z.shape == (n, 9)
        np.testing.assert_allclose(z.reshape(n, 3, 3).sum(axis=0), 0.0, atol=1e-4)
        alpha = np.reshape(a.info["REF_polarizability"], (3, 3))
        np.testing.assert_allclose(alpha, alpha.T, atol=1e-3 * np.abs(alpha).max())
        assert np.linalg.eigvalsh(0.5 * (alpha + alpha.T)).min() > 0
    # the package reader takes the file (it ignores keys it does not know)
    frames = datasets.load("water_clusters")
    assert len(frames) == 200 and sum(f.field is not None for f in frames) == 40


@pytest.mark.parametrize("index", [0, 95, 199])
def test_water_clusters_labels_recompute(water_images, index):
    # stored labels vs a fresh computation; Born charges by the other route (Maxwell)
    atoms = water_images[index]
    s = datasets.SETTINGS["water_clusters"]
    ref = label(atoms, accuracy=s["accuracy"])  # at atoms.info["field"], if any
    assert abs(ref["energy"] - atoms.info["REF_energy"]) < 1e-6
    np.testing.assert_allclose(ref["forces"], atoms.arrays["REF_forces"], atol=1e-5)
    np.testing.assert_allclose(ref["dipole"], atoms.info["REF_dipole"], atol=1e-6)
    z = born_charges(atoms, route="forces", delta=s["field_delta"], accuracy=s["accuracy"])
    stored = atoms.arrays["REF_born_charges"].reshape(-1, 3, 3)
    np.testing.assert_allclose(z, stored, atol=1e-4, rtol=0)
    alpha = polarizability(atoms, delta=s["field_delta"], accuracy=s["accuracy"])
    np.testing.assert_allclose(alpha.reshape(9), atoms.info["REF_polarizability"], atol=1e-6)


def test_water_clusters_frames_with_field_include_it(water_images):
    # a frame labelled under a field differs from the zero-field labels of its geometry
    atoms = next(a for a in water_images if "field" in a.info and len(a) == 15)
    plain = atoms.copy()
    del plain.info["field"]
    ref = label(plain, accuracy=1e-5)
    assert np.abs(ref["dipole"] - atoms.info["REF_dipole"]).max() > 1e-3
    np.testing.assert_allclose(atoms.arrays["REF_forces"].sum(axis=0), 0.0, atol=1e-6)


# Bit-for-bit regeneration of water_clusters (23 s) is left to
# `python -m jaxlr.data.datasets generate water_clusters`; the suite regenerates
# nacl_path and ag3_charge_states, which run through the same generator machinery.


# ------------------------------------------------------------------ bad input


def test_bad_field_and_response_arguments(monomer):
    with pytest.raises(ValueError, match="field"):
        label(monomer, field=[0.1, 0.2])
    with pytest.raises(ValueError, match="field"):
        label(monomer, field=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="field"):
        label(monomer, field=[0.1, np.nan, 0.0])
    with pytest.raises(ValueError, match="field"):
        label(monomer, field="up")
    tagged = monomer.copy()
    tagged.info["field"] = [1.0, 2.0]
    with pytest.raises(ValueError, match=r'field \(from atoms.info\["field"\]\)'):
        label(tagged)
    with pytest.raises(ValueError, match="field"):
        born_charges(monomer, field=[0.1])
    with pytest.raises(ValueError, match="field"):
        label_frames([monomer], field=[0.0, 1.0])

    h = 2.82  # primitive rock-salt NaCl cell
    cell = [[0, h, h], [h, 0, h], [h, h, 0]]
    crystal = Atoms("NaCl", positions=[[0, 0, 0], [h, 0, 0]], cell=cell, pbc=True)
    with pytest.raises(ValueError, match="field is nonzero but the structure is periodic"):
        label(crystal, field=[0.0, 0.0, 0.1])
    label(crystal, field=[0.0, 0.0, 0.0])  # a zero field is fine
    with pytest.raises(ValueError, match="periodic"):
        born_charges(crystal)
    with pytest.raises(ValueError, match="periodic"):
        polarizability(crystal)

    with pytest.raises(ValueError, match="route"):
        born_charges(monomer, route="energy")
    with pytest.raises(ValueError, match="delta"):
        born_charges(monomer, delta=0.0)
    with pytest.raises(ValueError, match="delta"):
        polarizability(monomer, delta=-1e-3)
    with pytest.raises(ValueError, match="accuracy"):
        polarizability(monomer, accuracy=0.0)
    with pytest.raises(ValueError, match="n must be"):
        water_cluster(0)
    with pytest.raises(ValueError, match="non-periodic"):
        relax(crystal)
    with pytest.raises(ValueError, match="unknown keyword"):
        label_frames([monomer], delta=1e-3)


def test_water_cluster_geometries():
    for n in range(1, 7):
        atoms = water_cluster(n)
        assert len(atoms) == 3 * n and atoms.info["charge"] == 0.0
        d = atoms.get_all_distances()
        for k in range(n):
            np.testing.assert_allclose(d[3 * k, 3 * k + 1 : 3 * k + 3], 0.96, atol=1e-9)
        np.fill_diagonal(d, np.inf)
        assert d.min() > 0.9
        if n > 1:  # every water donates or accepts an H-bond: an H within 2 Å of another O
            o = np.arange(0, 3 * n, 3)
            h = np.setdiff1d(np.arange(3 * n), o)
            same = (h[:, None] // 3) == (o[None, :] // 3)
            dist = np.where(same, np.inf, d[np.ix_(h, o)])
            assert (dist < 2.0).sum() >= n - 1
    relaxed = relax(water_cluster(3))
    assert np.abs(label(relaxed)["forces"]).max() < 0.02
