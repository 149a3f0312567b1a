"""Tests of the tblite (GFN2-xTB) reference labelling in jaxlr.data.reference.

Systems are tiny (NaCl dimer, Na2Cl2, Na2Cl+, a 2-atom periodic rock-salt cell) so the
whole module runs in a few seconds. Numbers seen with tblite 0.8.0 (GFN2-xTB, accuracy 1):

- forces vs central finite difference (h = 1e-4 Å) of Na2Cl2: max error 7e-6 eV/Å
  for forces up to 0.45 eV/Å;
- stress vs finite strain (h = 1e-4) of a distorted primitive cell: max error ~4e-7 eV/Å^3
  for entries up to 0.049 eV/Å^3; tblite's virial is +V * sigma (ASE convention);
- NaCl dimer at 2.4 Å: Mulliken charges +-0.654 e, dipole 1.549 e·Å (7.4 D) pointing from
  Cl to Na (gas-phase NaCl: 9.0 D at 2.36 Å).
"""

import sys

import numpy as np
import pytest
from ase import Atoms

pytest.importorskip("tblite")

from jaxlr.data.reference import label, label_frames, nacl_cluster, sample  # noqa: E402

A_NACL = 5.64


def _dimer(d=2.4):
    return Atoms("NaCl", positions=[[0.0, 0.0, 0.0], [d, 0.0, 0.0]])


def _na2cl2():
    # A distorted rhombus, away from equilibrium so that forces are sizeable.
    return Atoms(
        "NaClNaCl",
        positions=[[0.0, 0.0, 0.0], [2.6, 0.2, 0.1], [2.9, 2.7, -0.2], [0.1, 2.5, 0.3]],
    )


def _rocksalt_cell():
    # Primitive rock-salt cell, distorted (cell and positions) so that the stress has
    # off-diagonal components and the atoms feel forces.
    h = A_NACL / 2
    cell = [[0.1, h, h], [h, -0.05, h], [h, h, 0.2]]
    return Atoms("NaCl", positions=[[0.1, 0.05, -0.08], [h, 0.1, 0.0]], cell=cell, pbc=True)


def test_forces_match_finite_difference():
    atoms = _na2cl2()
    ref = label(atoms)
    assert ref["forces"].shape == (4, 3)
    assert np.abs(ref["forces"]).max() > 0.05  # a meaningful check, not near equilibrium
    h = 1e-4
    fd = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for k in range(3):
            e = []
            for sign in (1.0, -1.0):
                moved = atoms.copy()
                moved.positions[i, k] += sign * h
                e.append(label(moved)["energy"])
            fd[i, k] = -(e[0] - e[1]) / (2 * h)
    np.testing.assert_allclose(ref["forces"], fd, atol=1e-4, rtol=0)
    # Net force of an isolated system vanishes.
    np.testing.assert_allclose(ref["forces"].sum(axis=0), 0.0, atol=1e-6)


def test_stress_matches_finite_strain():
    # sigma_ij = (1/V) dE/d(eps_ij) with cell -> cell @ (I + eps), positions carried along.
    # Tolerance: central differences with h = 1e-4 have O(h^2) truncation error and SCC
    # noise ~1e-9 eV / (2 h V) ~ 1e-7 eV/Å^3 (V ~ 45 Å^3); 5e-6 eV/Å^3 is 1e-4 of the
    # largest entry (0.049 eV/Å^3) and 10x the error seen (4e-7).
    atoms = _rocksalt_cell()
    ref = label(atoms)
    stress = ref["stress"]
    assert stress.shape == (3, 3)
    np.testing.assert_allclose(stress, stress.T, atol=1e-10)
    volume = atoms.get_volume()
    h = 1e-4
    fd = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            e = []
            for sign in (1.0, -1.0):
                strain = np.eye(3)
                strain[i, j] += sign * h
                strained = atoms.copy()
                strained.set_cell(atoms.cell.array @ strain, scale_atoms=False)
                strained.positions = atoms.positions @ strain
                e.append(label(strained)["energy"])
            fd[i, j] = (e[0] - e[1]) / (2 * h) / volume
    assert np.abs(fd).max() > 0.01
    assert np.abs(fd[0, 2]) > 1e-3  # off-diagonal entries are tested too
    np.testing.assert_allclose(stress, fd, atol=5e-6, rtol=0)


def test_no_stress_for_molecules_and_shapes():
    ref = label(_dimer())
    assert set(ref) == {"energy", "forces", "charges", "dipole"}
    assert isinstance(ref["energy"], float)
    assert ref["forces"].shape == (2, 3)
    assert ref["charges"].shape == (2,)
    assert ref["dipole"].shape == (3,)


def test_charges_sum_to_total_charge():
    neutral = label(_na2cl2())
    np.testing.assert_allclose(neutral["charges"].sum(), 0.0, atol=1e-8)

    cation = Atoms("NaClNa", positions=[[-2.5, 0.0, 0.0], [0.0, 0.3, 0.0], [2.5, 0.0, 0.0]])
    cation.info["charge"] = 1.0  # picked up from info
    from_info = label(cation)
    np.testing.assert_allclose(from_info["charges"].sum(), 1.0, atol=1e-8)
    assert (from_info["charges"][[0, 2]] > 0).all() and from_info["charges"][1] < 0

    explicit = label(cation, charge=1.0)
    np.testing.assert_allclose(explicit["energy"], from_info["energy"], rtol=0, atol=1e-8)
    # The explicit argument overrides atoms.info["charge"].
    overridden = label(cation, charge=-1.0)
    np.testing.assert_allclose(overridden["charges"].sum(), -1.0, atol=1e-8)

    periodic = label(_rocksalt_cell())
    np.testing.assert_allclose(periodic["charges"].sum(), 0.0, atol=1e-8)
    assert periodic["charges"][0] > 0.5  # Na is cationic in the crystal


def test_dimer_dipole_points_from_cl_to_na():
    # Na at the origin, Cl at +x: the dipole (from - to +) points along -x.
    # Seen: dipole = (-1.549, 0, 0) e·Å = 7.4 D, Mulliken charges +-0.654 e
    # (0.654 e * 2.4 Å = 1.57 e·Å); experiment for gas-phase NaCl: 9.0 D.
    atoms = _dimer(2.4)
    ref = label(atoms)
    mu = ref["dipole"]
    assert mu[0] < 0
    np.testing.assert_allclose(mu[1:], 0.0, atol=1e-8)
    assert 1.0 < -mu[0] < 2.4  # below the ionic limit 1 e * 2.4 Å
    q_na = ref["charges"][0]
    assert 0.4 < q_na < 1.0
    assert abs(-mu[0] - q_na * 2.4) < 0.2  # close to the point-charge estimate
    # A neutral system's dipole does not depend on the origin.
    shifted = atoms.copy()
    shifted.positions += [3.0, -2.0, 5.0]
    np.testing.assert_allclose(label(shifted)["dipole"], mu, atol=1e-6)


def test_label_frames_sets_labels_and_roundtrips_extxyz(tmp_path):
    import ase.io

    molecule = _dimer()
    molecule.info["REF_stress"] = np.ones((3, 3))  # stale label must disappear
    crystal = _rocksalt_cell()
    frames = label_frames([molecule, crystal])
    assert "REF_energy" not in molecule.info  # inputs untouched
    assert len(frames) == 2
    for frame, src in zip(frames, (molecule, crystal)):
        ref = label(src)
        assert frame.info["charge"] == 0.0
        np.testing.assert_allclose(frame.info["REF_energy"], ref["energy"], atol=1e-8)
        np.testing.assert_allclose(frame.arrays["REF_forces"], ref["forces"], atol=1e-8)
        np.testing.assert_allclose(frame.arrays["REF_charges"], ref["charges"], atol=1e-8)
        np.testing.assert_allclose(frame.info["REF_dipole"], ref["dipole"], atol=1e-8)
    assert "REF_stress" not in frames[0].info
    assert frames[1].info["REF_stress"].shape == (3, 3)

    path = tmp_path / "frames.extxyz"
    ase.io.write(path, frames, format="extxyz")
    back = ase.io.read(path, index=":", format="extxyz")
    stress = np.reshape(back[1].info["REF_stress"], (3, 3))
    np.testing.assert_allclose(stress, frames[1].info["REF_stress"], rtol=1e-6, atol=1e-12)
    # Per-atom arrays are written with 8 decimals.
    forces = back[0].arrays["REF_forces"]
    np.testing.assert_allclose(forces, frames[0].arrays["REF_forces"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(back[0].info["REF_energy"], frames[0].info["REF_energy"])


def test_sample_is_reproducible():
    start = _na2cl2()
    start.info["REF_energy"] = 1.0  # stale labels are dropped from the frames
    kw = dict(temperature=600.0, timestep=1.0, interval=2, displacement=0.05)
    a = sample(start, 3, seed=7, **kw)
    b = sample(start, 3, seed=7, **kw)
    c = sample(start, 3, seed=8, **kw)
    assert len(a) == 3
    for fa, fb in zip(a, b):
        assert fa.get_chemical_symbols() == start.get_chemical_symbols()
        assert fa.info["charge"] == 0.0
        assert "REF_energy" not in fa.info
        assert np.isfinite(fa.positions).all()
        # Bitwise equal on Linux (tblite runs on one OpenMP thread while sampling);
        # the tolerance only allows for reduction-order rounding on other platforms.
        np.testing.assert_allclose(fa.positions, fb.positions, rtol=0, atol=1e-12)
    assert not np.allclose(a[-1].positions, c[-1].positions)
    # Frames move away from the start but stay a bound cluster.
    assert np.abs(a[0].positions - start.positions).max() > 1e-3
    assert np.abs(a[-1].positions - start.positions).max() < 1.0
    np.testing.assert_array_equal(start.positions, _na2cl2().positions)  # input untouched

    # Without thermal noise and displacement, a frame is deterministic dynamics only.
    cold = sample(start, 1, temperature=0.0, interval=1, displacement=0.0, seed=1)
    cold2 = sample(start, 1, temperature=0.0, interval=1, displacement=0.0, seed=2)
    np.testing.assert_allclose(cold[0].positions, cold2[0].positions, atol=1e-12)


def test_sample_charged_and_periodic():
    cation = Atoms("NaClNa", positions=[[-2.5, 0.0, 0.0], [0.0, 0.3, 0.0], [2.5, 0.0, 0.0]])
    frames = sample(cation, 2, interval=1, charge=1.0)
    assert [f.info["charge"] for f in frames] == [1.0, 1.0]
    crystal = sample(_rocksalt_cell(), 1, interval=1)
    assert crystal[0].pbc.all()
    np.testing.assert_array_equal(crystal[0].cell.array, _rocksalt_cell().cell.array)


@pytest.mark.parametrize("n_na,n_cl", [(8, 8), (9, 8), (1, 1), (2, 1), (0, 2), (13, 14)])
def test_nacl_cluster_counts_and_charge(n_na, n_cl):
    cluster = nacl_cluster(n_na, n_cl)
    symbols = cluster.get_chemical_symbols()
    assert symbols.count("Na") == n_na and symbols.count("Cl") == n_cl
    assert cluster.info["charge"] == float(n_na - n_cl)
    assert not cluster.pbc.any()
    if len(cluster) > 1:
        d = cluster.get_all_distances()
        np.fill_diagonal(d, np.inf)
        assert d.min() > A_NACL / 2 - 1e-9  # lattice sites, no overlaps
    if n_na and n_cl:
        # Every atom has a nearest neighbour of the opposite species (compact, connected).
        is_na = np.array([s == "Na" for s in symbols])
        nn = np.isclose(d, A_NACL / 2)
        assert (nn & (is_na[:, None] != is_na[None, :])).any(axis=1).all()
    np.testing.assert_array_equal(nacl_cluster(n_na, n_cl).positions, cluster.positions)


def test_nacl_cluster_examples():
    na8cl8 = nacl_cluster(8, 8)
    assert na8cl8.get_chemical_formula() == "Cl8Na8" and na8cl8.info["charge"] == 0.0
    na9cl8 = nacl_cluster(9, 8)
    assert na9cl8.get_chemical_formula() == "Cl8Na9" and na9cl8.info["charge"] == 1.0
    # Compact: the 2x2x2 cube plus a shell, all within ~1.2 a of the centre.
    assert np.linalg.norm(na9cl8.positions, axis=1).max() < 1.2 * A_NACL


def test_invalid_arguments():
    with pytest.raises(ValueError, match="method"):
        label(_dimer(), method="GFN3")
    with pytest.raises(ValueError, match="accuracy"):
        label(_dimer(), accuracy=0.0)
    with pytest.raises(ValueError, match="max_iterations"):
        label(_dimer(), max_iterations=0)
    with pytest.raises(ValueError, match="charge"):
        label(_dimer(), charge="plus one")
    with pytest.raises(ValueError, match="atoms"):
        label(Atoms())
    with pytest.raises(ValueError, match="zero volume"):
        label(Atoms("NaCl", positions=[[0, 0, 0], [2.4, 0, 0]], pbc=True))
    with pytest.raises(ValueError, match="frames"):
        label_frames(_dimer())
    with pytest.raises(ValueError, match="n_frames"):
        sample(_dimer(), 0)
    with pytest.raises(ValueError, match="n_frames"):
        sample(_dimer(), "3")
    with pytest.raises(ValueError, match="accuracy"):
        label(_dimer(), accuracy="tight")
    with pytest.raises(ValueError, match="interval"):
        sample(_dimer(), 1, interval=0)
    with pytest.raises(ValueError, match="timestep"):
        sample(_dimer(), 1, timestep=-1.0)
    with pytest.raises(ValueError, match="n_na"):
        nacl_cluster(-1, 2)
    with pytest.raises(ValueError, match="positive"):
        nacl_cluster(0, 0)


def test_missing_tblite_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "tblite.interface", None)
    with pytest.raises(ImportError, match=r"pip install 'jaxlr\[reference\]'"):
        label(_dimer())
