"""The ASE calculator: derivatives, caching, compilations, errors."""

import numpy as np
import pytest
from ase.calculators.fd import FiniteDifferenceCalculator

from jaxlr import models
from jaxlr.calculator import Calculator
from jaxlr.data import datasets, to_atoms

SMALL = {"features": 8, "n_layers": 1, "n_basis": 6, "hidden": 8}


@pytest.fixture(scope="module")
def cell_atoms():
    atoms = to_atoms(datasets.load("random_charges")[0])
    atoms.info.pop("REF_energy", None)
    return atoms


def test_forces_and_stress_equal_finite_differences(cell_atoms):
    model = models.build("latent", **SMALL, seed=2)
    calc = Calculator(model, species=[11, 17])
    atoms = cell_atoms.copy()
    atoms.calc = calc
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert forces.dtype == np.float64 and stress.shape == (6,)
    fd = FiniteDifferenceCalculator(Calculator(model), eps_disp=1e-5, eps_strain=1e-6)
    ref = atoms.copy()
    ref.calc = fd
    np.testing.assert_allclose(forces, ref.get_forces(), atol=2e-7)
    np.testing.assert_allclose(stress, ref.get_stress(), atol=2e-8)
    assert abs(atoms.get_charges().sum()) < 1e-12


def test_charged_molecule_conserves_charge_and_gives_a_dipole():
    frame = next(f for f in datasets.load("nacl_path"))
    atoms = to_atoms(frame)
    atoms.calc = Calculator(models.build("explicit", **SMALL))
    q = atoms.get_charges()
    assert abs(q.sum() - 1.0) < 1e-12
    np.testing.assert_allclose(atoms.get_dipole_moment(), q @ atoms.positions, atol=1e-12)


def test_fragment_charges_reach_the_model():
    """info["fragment_charges"] holds each fragment at its total, as predict_frames."""
    from jaxlr import train
    from jaxlr.data import Frame

    frame = datasets.load("nacl_path")[3]
    frag = (np.arange(frame.n_atoms) >= 9).astype(int)
    split = Frame(
        frame.positions,
        frame.numbers,
        charge=1.0,
        fragments=frag,
        fragment_charges=np.array([2.0, -1.0]),
    )
    model = models.build("latent", **SMALL, seed=4)
    atoms = to_atoms(split)
    atoms.calc = Calculator(model)
    q = atoms.get_charges()
    np.testing.assert_allclose([q[:9].sum(), q[9:].sum()], [2.0, -1.0], atol=1e-12)
    ref = train.predict_frames(model, [split])[0]
    np.testing.assert_allclose(q, ref["charges"], atol=1e-12)
    assert atoms.get_potential_energy() == pytest.approx(ref["energy"], abs=1e-9)
    bad = atoms.copy()
    bad.info["fragment_charges"] = np.array([2.0, -2.0])
    bad.calc = Calculator(model)
    with pytest.raises(ValueError, match="fragment_charges' sum to 0"):
        bad.get_charges()


def test_field_born_charges_and_polarization(cell_atoms):
    """Forces under info['field'] are the enthalpy's; Born charges are d F / d field
    (finite differences through the calculator) with an exact sum rule; cells get a
    polarization on the branch nearest zero."""
    from jaxlr import response

    model = models.build("latent", **SMALL, seed=4)
    atoms = to_atoms(datasets.load("water_clusters")[60])
    atoms.info.pop("field", None)
    atoms.calc = Calculator(model)
    z = atoms.calc.get_property("born_effective_charges", atoms)
    assert z.shape == (len(atoms), 3, 3) and response.acoustic_sum_rule_violation(z) < 1e-10
    h = 1e-4
    for a in range(3):
        e = np.zeros(3)
        e[a] = h
        f = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.info["field"] = sign * e
            moved.calc = Calculator(model)
            f.append(moved.get_forces())
        np.testing.assert_allclose((f[0] - f[1]) / (2 * h), z[:, a, :], atol=1e-8)
    # the enthalpy: E(field) = U - mu . field
    fielded = atoms.copy()
    fielded.info["field"] = np.array([0.0, 0.05, 0.02])
    fielded.calc = Calculator(model)
    assert fielded.get_potential_energy() == pytest.approx(
        atoms.get_potential_energy() - atoms.get_dipole_moment() @ fielded.info["field"],
        abs=1e-10,
    )
    cell = cell_atoms.copy()
    cell.calc = Calculator(model)
    p = cell.calc.get_property("polarization", cell)
    frac = p * cell.get_volume() @ np.linalg.inv(cell.cell.array)
    assert p.shape == (3,) and np.all(np.abs(frac) <= 0.5)
    np.testing.assert_allclose(
        p * cell.get_volume(),
        cell.get_dipole_moment() - np.round(frac) @ cell.cell.array,
        atol=1e-10,
    )
    with pytest.raises(ValueError, match="field"):
        Calculator(models.build("short_range", **SMALL), field=[0, 0, 0.1])


def test_md_compiles_once_per_bucket_and_caches_results(cell_atoms):
    from ase import units
    from ase.md.verlet import VelocityVerlet

    model = models.build("short_range", **SMALL)
    calc = Calculator(model, skin=0.3)
    atoms = cell_atoms.copy()
    atoms.calc = calc
    atoms.set_momenta(np.random.default_rng(0).normal(0, 0.5, (len(atoms), 3)))
    calls = []
    original = calc._evaluate
    calc._evaluate = lambda *a: calls.append(a[4].shape[0]) or original(*a)
    buckets = set()
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    for _ in range(50):
        dyn.run(1)
        buckets.add((len(atoms), calls[-1]))
    assert calc.compilations == len(set(calls)) <= 3
    assert calc._list is not None
    n = len(calls)
    atoms.get_potential_energy()
    atoms.get_forces()
    assert len(calls) == n  # unchanged atoms: nothing recomputed
    atoms.positions[0, 0] += 0.01
    atoms.get_potential_energy()
    assert len(calls) == n + 1


def test_bad_atoms_raise_clearly(cell_atoms):
    calc = Calculator(models.build("latent", **SMALL), species=[11, 17])
    atoms = cell_atoms.copy()
    atoms.numbers[0] = 19
    atoms.calc = calc
    with pytest.raises(ValueError, match=r"atomic number\(s\) \[19\]"):
        atoms.get_potential_energy()
    slab = cell_atoms.copy()
    slab.pbc = (True, True, False)
    slab.calc = calc
    with pytest.raises(ValueError, match="charge models take molecules or 3D cells"):
        slab.get_potential_energy()
    bad = cell_atoms.copy()
    bad.info["charge"] = "plus one"
    bad.calc = calc
    with pytest.raises(ValueError, match="charge"):
        bad.get_potential_energy()
