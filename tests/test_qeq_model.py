"""The charge-equilibration model: constraint, implicit gradients, Hellmann-Feynman,
charge states, derivatives, symmetries, supercells, field response, checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlr import models, response, train
from jaxlr.data import Frame, datasets
from jaxlr.models import Electrostatics, electrostatics_for, pair_cutoff, predict
from jaxlr.neighbors import all_pairs, neighbor_pairs
from tests.structures import random_rotation

SMALL = {"features": 8, "n_layers": 1, "n_basis": 6, "hidden": 8}


@pytest.fixture(scope="module")
def model():
    return models.build("qeq", **SMALL, seed=1)


def molecule_args(numbers, charge=0.0):
    n = len(numbers)
    return (
        jnp.asarray(numbers),
        jnp.ones(n, bool),
        all_pairs(n, half=False),
        None,
        charge,
        Electrostatics("molecule"),
    )


def call(model, pos, numbers, charge=0.0):
    """The model's outputs, jitted (eager dispatch of the solve is slow)."""
    args = molecule_args(numbers, charge)
    return jax.jit(lambda r: model(r, *args))(jnp.asarray(pos))


def ag3():
    return np.array([[0.0, 0.0, 0.0], [2.7, 0.0, 0.0], [1.35, 1.35 * 3**0.5, 0.0]]), [47, 47, 47]


def water_dimer():
    f = datasets.load("water_clusters")[40]
    assert f.n_atoms == 6
    return f.positions, f.numbers


def test_charges_obey_the_total_charge_and_tell_charge_states_apart(model):
    pos, numbers = ag3()
    q = {}
    for charge in (1.0, -1.0):
        out = call(model, pos, numbers, charge)
        q[charge] = np.asarray(out["charges"])
        assert abs(q[charge].sum() - charge) < 1e-12
    # symmetric Ag3: each atom carries Q/3 - a local model's shifted charges would too,
    # but the QEq energies of the two states differ by the electronegativity term
    np.testing.assert_allclose(q[1.0], 1 / 3, atol=1e-10)
    e_plus = float(call(model, pos, numbers, 1.0)["energy"])
    e_minus = float(call(model, pos, numbers, -1.0)["energy"])
    assert abs(e_plus - e_minus) > 1e-3
    # an asymmetric charged molecule: charges respond to the total charge non-uniformly
    pos_w, num_w = water_dimer()
    q0 = np.asarray(call(model, pos_w, num_w, 0.0)["charges"])
    q1 = np.asarray(call(model, pos_w, num_w, 1.0)["charges"])
    assert abs(q1.sum() - 1.0) < 1e-12 and np.ptp(q1 - q0) > 1e-3


def test_hellmann_feynman_and_implicit_gradients(model):
    pos, numbers = water_dimer()
    args = molecule_args(numbers)
    graphdef, params = nnx.split(model)

    def energy(p):
        return nnx.merge(graphdef, p)(jnp.asarray(pos), *args)["energy"]

    q = np.asarray(call(model, pos, numbers)["charges"])
    grads = jax.jit(jax.grad(energy))(params)
    # dE/dchi_Z = sum of the charges of species Z (the charges are a minimum)
    for z in (1, 8):
        assert float(grads["species_chi"][z]) == pytest.approx(q[numbers == z].sum(), abs=1e-10)

    # the constrained minimum: dE_QEq/dq_i is the same for every atom
    def solution(r):
        s = model.features(r, *args[:3], None)
        return model.equilibrate(r, *args, s)

    qs, chi, hard, a = jax.jit(solution)(jnp.asarray(pos))
    g = chi + hard * qs + models._potentials.COULOMB * (a @ qs)
    assert float(jnp.ptp(g)) < 1e-10

    # a charge loss through the solve: gradient = finite differences (hardness of O)
    def loss(p):
        out = nnx.merge(graphdef, p)(jnp.asarray(pos), *args)
        return jnp.sum((out["charges"] - 0.1) ** 2) + 0.01 * out["energy"]

    g = float(jax.jit(jax.grad(loss))(params)["species_hardness"][8])
    loss = jax.jit(loss)
    h = 1e-5
    up = jax.tree.map(lambda x: x, params)
    down = jax.tree.map(lambda x: x, params)
    up["species_hardness"] = params["species_hardness"][...].at[8].add(h)
    down["species_hardness"] = params["species_hardness"][...].at[8].add(-h)
    assert g == pytest.approx(float(loss(up) - loss(down)) / (2 * h), rel=1e-6, abs=1e-10)


def test_forces_stress_and_supercell(model):
    frame = datasets.load("nacl_bulk")[3]
    sc = Frame(
        np.concatenate([frame.positions, frame.positions + frame.cell[0]]),
        np.tile(frame.numbers, 2),
        frame.cell * np.array([[2.0], [1.0], [1.0]]),
        (True,) * 3,
        0.0,
    )
    cut = pair_cutoff(model, [sc])
    el = electrostatics_for([frame, sc], "periodic", sigma=model.sigma, cutoff=cut)

    def run(f):
        pairs = neighbor_pairs(f.positions, cut, f.cell, half=False)
        args = (jnp.asarray(f.numbers), jnp.ones(f.n_atoms, bool), pairs, jnp.asarray(f.cell))
        return jax.jit(lambda r, c: predict(model, r, *args[:3], c, 0.0, el))(
            jnp.asarray(f.positions), args[3]
        ), args

    out, args = run(frame)
    out_sc, _ = run(sc)
    assert float(out_sc["energy"]) == pytest.approx(2 * float(out["energy"]), abs=1e-8)
    np.testing.assert_allclose(
        np.asarray(out_sc["charges"][:8]), np.asarray(out["charges"]), atol=1e-9
    )

    def energy(r, c):
        return model(r, *args[:3], c, 0.0, el)["energy"]

    energy = jax.jit(energy)
    h = 1e-5
    pos, cell = jnp.asarray(frame.positions), jnp.asarray(frame.cell)
    for i, b in [(0, 0), (5, 2)]:
        d = jnp.zeros_like(pos).at[i, b].set(h)
        fd = -(energy(pos + d, cell) - energy(pos - d, cell)) / (2 * h)
        assert float(out["forces"][i, b]) == pytest.approx(float(fd), abs=1e-7)
    eps = jnp.zeros((3, 3)).at[0, 1].set(h).at[1, 0].set(h)
    from jaxlr.cell import apply_strain

    ep = energy(*apply_strain(pos, cell, eps))
    em = energy(*apply_strain(pos, cell, -eps))
    volume = abs(np.linalg.det(frame.cell))
    fd = float(ep - em) / (2 * h) / volume / 2  # the symmetric strain moves xy and yx
    assert float(out["stress"][0, 1]) == pytest.approx(fd, abs=1e-8)


def test_invariances(model):
    pos, numbers = water_dimer()
    e0 = float(call(model, pos, numbers)["energy"])
    rot = random_rotation(np.random.default_rng(2))
    e_rot = float(call(model, pos @ rot.T + 1.7, numbers)["energy"])
    perm = np.array([3, 4, 5, 0, 1, 2])
    e_perm = float(call(model, pos[perm], numbers[perm])["energy"])
    assert e_rot == pytest.approx(e0, abs=1e-10) and e_perm == pytest.approx(e0, abs=1e-10)


def test_field_response_maxwell_and_polarizability(model):
    pos, numbers = water_dimer()
    args = molecule_args(numbers)
    r = jnp.asarray(pos)
    field = jnp.asarray([0.01, -0.02, 0.015])
    out = jax.jit(lambda e: predict(model, r, *args, e, True))(field)
    assert response.acoustic_sum_rule_violation(out["born_charges"]) < 1e-10
    enthalpy = response.electric_enthalpy(model, *args)

    def mu(e):
        return enthalpy(r, e)[1]["dipole"]

    # -dF/dE is the dipole (Hellmann-Feynman), and d mu/dR at the field is the Born charge
    mu = jax.jit(mu)
    g = jax.jit(jax.grad(lambda e: enthalpy(r, e)[0]))(field)
    np.testing.assert_allclose(np.asarray(-g), np.asarray(mu(field)), atol=1e-12)
    z = jax.jit(lambda x: response.born_charges(lambda y: enthalpy(y, field)[1]["dipole"], x))(r)
    np.testing.assert_allclose(np.asarray(out["born_charges"]), np.asarray(z), atol=1e-9)
    alpha = np.asarray(jax.jit(lambda x: response.model_polarizability(model, x, *args))(r))
    h = 1e-4
    for b in range(3):
        e = jnp.zeros(3).at[b].set(h)
        fd = (np.asarray(mu(e)) - np.asarray(mu(-e))) / (2 * h)
        np.testing.assert_allclose(alpha[:, b], fd, atol=1e-8)
    np.testing.assert_allclose(alpha, alpha.T, atol=1e-12)
    assert np.all(np.linalg.eigvalsh(alpha) > 0)
    # a local charge model does not polarize at fixed nuclei
    local = models.build("explicit", **SMALL)
    alpha_local = jax.jit(lambda x: response.model_polarizability(local, x, *args))(r)
    assert np.abs(np.asarray(alpha_local)).max() < 1e-14


def test_trains_charges_first_saves_and_reloads(tmp_path):
    frames = [f for f in datasets.load("water_clusters") if f.n_atoms == 6][:10]
    cfg = {
        "model": "qeq",
        "model_args": SMALL,
        "epochs": 2,
        "charges_first_epochs": 1,
        "batch_size": 8,
        "n_buckets": 1,
    }
    # the first (charges-only) epoch: the energy head does not move, the
    # electronegativity head does
    run = train.fit(frames, cfg, tmp_path / "run", progress=False, stop_after=1)
    assert np.isfinite(run["metrics"]["energy"]["mae"]) and "charges" in run["metrics"]
    fresh = models.build("qeq", **SMALL)
    for a, b in zip(
        jax.tree.leaves(nnx.state(fresh.energy_head)),
        jax.tree.leaves(nnx.state(run["model"].energy_head)),
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    moved = [
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(
            jax.tree.leaves(nnx.state(fresh.chi_head)),
            jax.tree.leaves(nnx.state(run["model"].chi_head)),
        )
    ]
    assert max(moved) > 0
    run = train.fit(frames, None, tmp_path / "run", progress=False, resume=True)
    assert run["history"][-1]["epoch"] == 2
    with pytest.raises(ValueError, match="charges_first_epochs"):
        train.TrainConfig.from_dict({**cfg, "charges_first_epochs": 2})
    loaded = train.load(tmp_path / "run")
    a = train.predict_frames(run["model"], frames[:3])
    b = train.predict_frames(loaded, frames[:3])
    for p, q in zip(a, b):
        assert p["energy"] == pytest.approx(q["energy"], abs=1e-12)
        np.testing.assert_allclose(p["charges"], q["charges"], atol=1e-12)


def test_md_warm_starts_the_matrix_free_solve(model):
    """jaxlr.md.run with the matrix-free QEq solver, warm-started from the previous
    step's charges, follows the dense solver's trajectory."""
    from jaxlr import md
    from jaxlr.data import to_atoms

    atoms = to_atoms(datasets.load("water_clusters")[45])
    atoms.info.pop("field", None)
    free = models.build("qeq", **SMALL, seed=1, solver="matrix_free", tol=1e-12)
    nnx.update(free, nnx.state(model))
    kw = {"steps": 20, "dt": 0.5, "temperature": 300, "every": 20, "progress": False}
    dense = md.run(model, atoms, **kw)
    warm = md.run(free, atoms, warm_start=True, **kw)
    np.testing.assert_allclose(warm["atoms"].positions, dense["atoms"].positions, atol=1e-8)
    np.testing.assert_allclose(warm["log"]["total"], dense["log"]["total"], atol=1e-8)
    with pytest.raises(ValueError, match="warm_start"):
        md.run(model, atoms, warm_start=True, **kw)  # the dense solver has no guess
