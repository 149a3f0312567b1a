"""PBE0 Foster-Boys Wannier centres (jaxlr.data.qm) and the shipped water_wannier set.

Numbers seen with pyscf 2.14.0 (PBE0/aug-cc-pVDZ, density fitting, one thread):

- ``sum_A Z_A R_A - 2 sum_i <i|r|i>`` over all Boys orbitals equals pyscf's dipole to
  ~3e-9 e·Å (monomer to trimer);
- the O 1s core centroid sits ~1e-4 Å from its nucleus, so the DPLR dipole
  (O +6, H +1, centre -8) differs from REF_dipole by ``wannier_core_dipole``, up to
  ~3e-4 e·Å per O;
- an O's centre lies 0.06-0.13 Å from its nucleus (shipped set), towards the hydrogens;
- the shipped set: dipoles 0.31-3.6 D, DPLR dipole within 2.6e-4 e·Å per O of REF_dipole;
  its first 62 frames regenerate byte for byte on the generating machine.
"""

import gzip

import numpy as np
import pytest
from ase import Atoms

pytest.importorskip("pyscf")

from jaxlr.data import datasets, qm  # noqa: E402


def _water(seed=0, scale=0.03):
    """A distorted water monomer (O-H ~0.96 Å, 104.5 degrees) off the origin."""
    half = np.deg2rad(104.5) / 2
    pos = np.array(
        [
            [0, 0, 0],
            [0.96 * np.sin(half), 0.96 * np.cos(half), 0],
            [-0.96 * np.sin(half), 0.96 * np.cos(half), 0],
        ]
    )
    pos += scale * np.random.default_rng(seed).standard_normal(pos.shape) + [0.4, -0.3, 0.2]
    atoms = Atoms("OHH", positions=pos)
    atoms.info["charge"] = 0.0
    return atoms


@pytest.fixture(scope="module")
def monomer():
    atoms = _water()
    return atoms, qm.localized_centroids(atoms), qm.wannier_label(atoms)


def test_centroids_reproduce_the_dipole(monomer):
    atoms, out, labelled = monomer
    z = atoms.numbers.astype(float)
    full = (z[:, None] * atoms.positions).sum(0) - 2.0 * out["centroids"].sum(0)
    np.testing.assert_allclose(full, out["dipole"], atol=1e-6, rtol=0)
    assert out["core"].sum() == 1 and len(out["centroids"]) == 5
    # DPLR picture: O +6, H +1, one centre -8 per O, plus the recorded core term
    w = labelled.arrays["REF_wannier_centres"]
    ion = np.where(atoms.numbers == 8, 6.0, 1.0)
    dplr = (ion[:, None] * atoms.positions).sum(0) - 8.0 * w[atoms.numbers == 8].sum(0)
    core = labelled.info["wannier_core_dipole"]
    np.testing.assert_allclose(dplr - core, labelled.info["REF_dipole"], atol=1e-6, rtol=0)
    assert np.abs(core).max() < 2e-3  # the core's polarisation: tiny
    # H rows hold the H positions; the O centre sits ~0.1 Å towards the hydrogens
    np.testing.assert_array_equal(w[1:], atoms.positions[1:])
    shift = w[0] - atoms.positions[0]
    assert 0.05 < np.linalg.norm(shift) < 0.15
    assert shift @ (atoms.positions[1:].mean(0) - atoms.positions[0]) > 0
    forces = labelled.arrays["REF_forces"]
    np.testing.assert_allclose(forces.sum(0), 0.0, atol=1e-3)  # grid noise only


def test_centres_are_covariant_under_rotation_and_translation(monomer):
    atoms, _, labelled = monomer
    rot = np.linalg.qr(np.random.default_rng(3).standard_normal((3, 3)))[0]
    rot *= np.sign(np.linalg.det(rot))
    shift = np.array([1.3, -0.7, 2.1])
    moved = atoms.copy()
    moved.positions = atoms.positions @ rot.T + shift
    again = qm.wannier_label(moved)
    back = (again.arrays["REF_wannier_centres"] - shift) @ rot
    # DFT integration grids are not rotation invariant: ~1e-6 Å differences
    np.testing.assert_allclose(back, labelled.arrays["REF_wannier_centres"], atol=1e-5, rtol=0)
    assert again.info["REF_energy"] == pytest.approx(labelled.info["REF_energy"], abs=1e-5)
    # forces: no grid-response term in pyscf's gradient, ~2e-4 eV/Å
    np.testing.assert_allclose(
        again.arrays["REF_forces"] @ rot, labelled.arrays["REF_forces"], atol=1e-3, rtol=0
    )
    # the dipole of a neutral molecule does not depend on the origin
    np.testing.assert_allclose(
        again.info["REF_dipole"] @ rot, labelled.info["REF_dipole"], atol=1e-5, rtol=0
    )


def test_bad_input_is_refused(monomer):
    atoms, _, _ = monomer
    with pytest.raises(ValueError, match="frames\\[1\\]: element\\(s\\) N not supported"):
        qm.wannier_label_frames([atoms, Atoms("NH3", positions=np.eye(4)[:, :3] * 1.0)])
    with pytest.raises(ValueError, match="closed-shell"):
        qm.wannier_label(Atoms("OH", positions=[[0, 0, 0], [0.97, 0, 0]]))
    periodic = atoms.copy()
    periodic.cell, periodic.pbc = 10 * np.eye(3), True
    with pytest.raises(ValueError, match="periodic"):
        qm.wannier_label(periodic)
    with pytest.raises(ValueError, match="unknown setting"):
        qm.wannier_label(atoms, functional="PBE")
    # wrong centroid counts: an H2 molecule's bond orbital lands on the water's O
    pos = np.vstack([atoms.positions, [[2.8, 0, 0], [3.54, 0, 0]]])
    mixed = Atoms("OHHHH", positions=pos)
    with pytest.raises(ValueError, match=r"frames\[0\]: oxygen atom 0 owns 5 valence and 1 core"):
        qm.wannier_label_frames([mixed], basis="sto-3g", auxbasis=None)
    numbers, core = [8, 1, 1], [True, False, False, False]
    with pytest.raises(ValueError, match="frame 4: oxygen atom 0 owns 3 valence"):
        qm.assign_centres(numbers, atoms.positions, np.zeros((4, 3)), core, where="frame 4")
    with pytest.raises(ValueError, match="no oxygen"):
        qm.assign_centres([1, 1], np.eye(2, 3), np.zeros((1, 3)), [False])


# ------------------------------------------------------------------ dataset


def test_water_wannier_file_loads_with_its_label():
    record = datasets.manifest()["water_wannier"]
    s = datasets.SETTINGS["water_wannier"]
    assert record["settings"] == s
    frames = datasets.load("water_wannier")  # verifies the checksum
    assert len(frames) == record["n_frames"] == sum(s["n_frames"])
    sizes = [f.n_atoms for f in frames]
    assert [sizes.count(3 * n) for n in s["systems"]] == s["n_frames"]
    for f in frames:
        assert f.labels() == ["energy", "forces", "dipole", "wannier_centres"]
        o = f.numbers == 8
        np.testing.assert_array_equal(f.wannier_centres[~o], f.positions[~o])
        d = np.linalg.norm(f.wannier_centres[o] - f.positions[o], axis=1)
        assert np.all((d > 0.03) & (d < 0.2))
        ion = np.where(o, 6.0, 1.0)
        dplr = (ion[:, None] * f.positions).sum(0) - 8.0 * f.wannier_centres[o].sum(0)
        # the DPLR dipole misses only the O 1s polarisation (and the 8-decimal rounding)
        assert np.abs(dplr - f.dipole).max() < 2e-3 * o.sum()
    assert datasets.path("water_wannier").stat().st_size < 1_000_000


def test_water_wannier_regenerates(tmp_path):
    """The first two frames rebuilt from scratch (GFN2-xTB sampling, PBE0 labels).

    On the machine that generated the set, with ``OMP_NUM_THREADS=1``, the text is
    identical byte for byte (also checked by generating the full set twice). Another
    CPU's BLAS kernels may round differently, so the suite compares numbers: the
    sampled positions exactly (tblite is reproducible), labels to tolerances far
    above SCF noise (conv_tol 1e-10 Hartree) and far below the labels' own errors."""
    pytest.importorskip("tblite")  # the geometries are sampled with GFN2-xTB
    import ase.io

    file = datasets.generate("water_wannier", tmp_path, limit=2)
    fresh = ase.io.read(file, index=":", format="extxyz")
    shipped = ase.io.read(datasets.path("water_wannier"), index=":2", format="extxyz")
    assert len(fresh) == 2
    for a, b in zip(fresh, shipped):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.info["REF_energy"] == pytest.approx(b.info["REF_energy"], abs=1e-6)
        np.testing.assert_allclose(a.arrays["REF_forces"], b.arrays["REF_forces"], atol=1e-5)
        np.testing.assert_allclose(a.info["REF_dipole"], b.info["REF_dipole"], atol=1e-7)
        np.testing.assert_allclose(
            a.arrays["REF_wannier_centres"], b.arrays["REF_wannier_centres"], atol=1e-7
        )
    with gzip.open(file, "rt") as handle:
        text = handle.read()
    assert text.count("Properties=") == 2
    with pytest.raises(ValueError, match="limit is supported"):
        datasets.generate("nacl_path", tmp_path, limit=2)
    with pytest.raises(ValueError, match="jobs is supported"):
        datasets.generate("nacl_path", tmp_path, jobs=2)
    with pytest.raises(ValueError, match="limit needs out"):
        datasets.generate("water_wannier", limit=2)
