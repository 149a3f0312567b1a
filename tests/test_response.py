"""Finite-field responses: polarization branches, Born charges (sum rule, images,
rotations, finite differences, Maxwell relation) and the QEq polarizability."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlr import models, qeq, response
from jaxlr.data import Frame
from jaxlr.models import Electrostatics, electrostatics_for, pair_cutoff
from jaxlr.models._potentials import predict
from jaxlr.neighbors import all_pairs, neighbor_pairs
from tests.structures import random_rotation


def nacl_cell(seed=0):
    """A rattled, strained 8-atom rock-salt cell (neutral)."""
    rng = np.random.default_rng(seed)
    a = 5.64
    frac = np.array(
        [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
        + [[0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]]
    )
    cell = a * (np.eye(3) + 0.03 * rng.normal(size=(3, 3)))
    pos = frac @ cell + 0.15 * rng.normal(size=(8, 3))
    return pos, np.array([11] * 4 + [17] * 4), cell


def molecule(seed=0, n=7):
    rng = np.random.default_rng(seed)
    pos = rng.normal(size=(n, 3)) * 1.6
    return pos, rng.choice([1, 8, 11, 17], n)


@pytest.fixture(scope="module")
def charge_model():
    """Explicit and latent models share the charge path (a network head, shifted to
    the total charge); the slower latent compile is exercised by the sum-rule test."""
    return models.build("explicit", seed=3, features=16)


class Setup:
    def __init__(self, model, pos, numbers, cell=None, charge=0.0):
        self.model, self.numbers, self.cell, self.charge = model, numbers, cell, charge
        self.mask = jnp.ones(len(numbers), bool)
        if cell is None:
            self.el = Electrostatics("molecule")
            self.cut = None
        else:
            f = Frame(pos, numbers, cell, (True,) * 3, charge)
            self.cut = pair_cutoff(model, [f])
            self.el = electrostatics_for([f], "periodic", sigma=model.sigma, cutoff=self.cut)

    def pairs(self, pos):
        if self.cell is None:
            return all_pairs(len(self.numbers), half=False)
        return neighbor_pairs(np.asarray(pos), self.cut, self.cell, half=False)

    def args(self, pos):
        cell = None if self.cell is None else jnp.asarray(self.cell)
        return (
            jnp.asarray(self.numbers),
            self.mask,
            self.pairs(pos),
            cell,
            self.charge,
            self.el,
        )

    def born(self, pos):
        args = self.args(pos)
        fn = jax.jit(lambda r: response.model_born_charges(self.model, r, *args))
        return fn(jnp.asarray(pos))

    def dipole(self, pos):
        fn = jax.jit(lambda r: response.model_dipole_fn(self.model, *self.args(pos))(r)[0])
        return fn(jnp.asarray(pos))


@pytest.mark.parametrize("name", ["explicit", "latent", "qeq"])
def test_acoustic_sum_rule_is_exact_for_untrained_models(name):
    charge_model = models.build(name, seed=3, features=16)
    pos, numbers, cell = nacl_cell()
    z = Setup(charge_model, pos, numbers, cell).born(pos)
    assert float(jnp.abs(z).max()) > 1e-3  # non-trivial tensors
    assert response.acoustic_sum_rule_violation(z) < 1e-10
    pos, numbers = molecule()
    z = Setup(charge_model, pos, numbers).born(pos)
    assert response.acoustic_sum_rule_violation(z) < 1e-10
    # a charged molecule: sum_i Z_i = Q I
    z = Setup(charge_model, pos, numbers, charge=1.0).born(pos)
    assert response.acoustic_sum_rule_violation(z, 1.0) < 1e-10
    assert response.acoustic_sum_rule_violation(z) > 0.99


@pytest.mark.parametrize("periodic", [False, True])
def test_born_charges_are_finite_differences_of_the_dipole(charge_model, periodic):
    if periodic:
        pos, numbers, cell = nacl_cell(1)
        s = Setup(charge_model, pos, numbers, cell)
    else:
        pos, numbers = molecule(1)
        s = Setup(charge_model, pos, numbers)
    z = np.asarray(s.born(pos))
    h = 1e-5
    for i, b in [(0, 0), (3, 1), (6, 2)]:
        up, down = pos.copy(), pos.copy()
        up[i, b] += h
        down[i, b] -= h
        fd = (np.asarray(s.dipole(up)) - np.asarray(s.dipole(down))) / (2 * h)
        np.testing.assert_allclose(z[i, :, b], fd, atol=1e-8)


def test_born_charges_do_not_depend_on_periodic_images(charge_model):
    pos, numbers, cell = nacl_cell(2)
    s = Setup(charge_model, pos, numbers, cell)
    z = np.asarray(s.born(pos))
    moved = pos.copy()
    moved[2] += cell[0] - 2 * cell[2]
    moved[5] -= cell[1]
    np.testing.assert_allclose(np.asarray(s.born(moved)), z, atol=1e-12)

    # the raw (unanchored) dipole does depend on them for a charge-transfer model
    def raw(p, pairs):
        out = charge_model(p, jnp.asarray(numbers), s.mask, pairs, jnp.asarray(cell), 0.0, s.el)
        return jnp.sum(out["charges"][:, None] * p, axis=0)

    def z_raw(p):
        pairs = s.pairs(p)
        return jax.jit(lambda r: response.born_charges(raw, r, pairs))(jnp.asarray(p))

    z_raw, z_raw_moved = z_raw(pos), z_raw(moved)
    assert float(jnp.abs(z_raw - z_raw_moved).max()) > 1e-4


def test_born_charges_rotate_as_tensors(charge_model):
    pos, numbers = molecule(3)
    s = Setup(charge_model, pos, numbers)
    rot = random_rotation(np.random.default_rng(5))
    z = np.asarray(s.born(pos))
    z_rot = np.asarray(s.born(pos @ rot.T + 0.7))
    np.testing.assert_allclose(z_rot, np.einsum("ab,nbc,dc->nad", rot, z, rot), atol=1e-10)


@pytest.mark.parametrize("periodic", [False, True])
def test_maxwell_relation_forces_under_field(charge_model, periodic):
    """d F_ib / d field_a (forces of the electric enthalpy) = d mu_a / d R_ib."""
    if periodic:
        pos, numbers, cell = nacl_cell(4)
        s = Setup(charge_model, pos, numbers, cell)
    else:
        pos, numbers = molecule(4)
        s = Setup(charge_model, pos, numbers)
    args = s.args(pos)
    field = jnp.asarray([0.02, -0.01, 0.03])
    run = jax.jit(lambda e: predict(charge_model, jnp.asarray(pos), *args, e, True))
    out = run(field)
    z = np.asarray(s.born(pos))
    np.testing.assert_allclose(np.asarray(out["born_charges"]), z, atol=1e-8)
    # and against finite differences of the enthalpy's forces in the field
    h = 1e-4
    for a in range(3):
        e = np.zeros(3)
        e[a] = h
        fp, fm = run(field + e)["forces"], run(field - e)["forces"]
        np.testing.assert_allclose(np.asarray(fp - fm) / (2 * h), z[:, a, :], atol=1e-8)
    # the enthalpy's field derivative is minus the dipole
    enthalpy = response.electric_enthalpy(charge_model, *args)
    g = jax.jit(jax.grad(lambda e: enthalpy(jnp.asarray(pos), e)[0]))(field)
    np.testing.assert_allclose(np.asarray(-g), np.asarray(out["dipole"]), atol=1e-12)
    if not periodic:  # the stand-alone helper (same function, molecule only to save time)
        resp = jax.jit(lambda e: response.model_response(charge_model, jnp.asarray(pos), *args, e))
        resp = resp(field)
        np.testing.assert_allclose(
            np.asarray(resp["forces"]), np.asarray(out["forces"]), atol=1e-12
        )
        np.testing.assert_allclose(np.asarray(resp["born_charges"]), z, atol=1e-8)


def test_polarization_changes_by_one_quantum_when_an_ion_crosses_the_cell():
    rng = np.random.default_rng(0)
    cell = np.array([[6.0, 0.3, 0.0], [0.2, 5.5, 0.4], [0.0, -0.3, 7.0]])
    frac = rng.uniform(0, 1, (6, 3))
    q = np.array([1.0, -1.0, 1.0, -1.0, 2.0, -2.0])
    # ion 0 (+1) moves across the cell along a_1, wrapped back into the cell each frame
    steps = np.linspace(0, 1, 41)
    path = []
    for t in steps:
        f = frac.copy()
        f[0, 0] = (frac[0, 0] + t) % 1.0
        path.append(f @ cell)
    p = response.polarization_path(np.array(path), q, cell)
    quantum = np.asarray(response.polarization_quantum(cell))
    np.testing.assert_allclose(p[-1] - p[0], quantum[0], atol=1e-12)
    # continuous: each step moves P by 1/40 of a quantum, never a jump
    jumps = np.linalg.norm(np.diff(p, axis=0), axis=1)
    np.testing.assert_allclose(jumps, np.linalg.norm(quantum[0]) / 40, rtol=1e-9)
    # the single-frame value is on the branch nearest zero and equal modulo quanta
    single = np.asarray(response.polarization(path[-1], q, cell))
    f_single = single * np.linalg.det(cell) @ np.linalg.inv(cell)
    assert np.all(np.abs(f_single) <= 0.5 + 1e-12)
    diff = (single - p[-1]) * np.linalg.det(cell) @ np.linalg.inv(cell)
    np.testing.assert_allclose(diff, np.round(diff), atol=1e-10)
    # gradient of P is q_i / V whatever the branch
    g = jax.jacrev(lambda r: response.polarization(r, q, cell))(jnp.asarray(path[-1]))
    np.testing.assert_allclose(
        np.asarray(g[:, 4, :]), q[4] / np.linalg.det(cell) * np.eye(3), atol=1e-14
    )


def test_qeq_polarizability_matches_finite_differences_and_is_symmetric():
    rng = np.random.default_rng(1)
    pos = rng.uniform(0, 5, (8, 3))
    chi = rng.normal(size=8)
    hard = rng.uniform(8, 12, 8)
    sig = rng.uniform(0.6, 1.0, 8)

    def mu(field):
        chi_e = response.field_electronegativity(chi, jnp.asarray(pos), field)
        q = qeq.solve(jnp.asarray(pos), chi_e, hard, sig, total_charge=0.0)
        return response.dipole(jnp.asarray(pos), q)

    alpha = np.asarray(response.polarizability(mu))
    h = 1e-4
    for b in range(3):
        e = np.zeros(3)
        e[b] = h
        fd = (np.asarray(mu(jnp.asarray(e))) - np.asarray(mu(jnp.asarray(-e)))) / (2 * h)
        np.testing.assert_allclose(alpha[:, b], fd, atol=1e-9)
    np.testing.assert_allclose(alpha, alpha.T, atol=1e-12)
    assert np.all(np.linalg.eigvalsh(alpha) > 0)
    # the field polarizes the charges along it: mu(E) - mu(0) = alpha E for this linear model
    e = jnp.asarray([0.05, -0.02, 0.01])
    np.testing.assert_allclose(
        np.asarray(mu(e) - mu(jnp.zeros(3))), alpha @ np.asarray(e), atol=1e-10
    )


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="charges"):
        response.dipole(np.zeros((3, 3)), np.zeros(2))
    with pytest.raises(ValueError, match="cell"):
        response.polarization(np.zeros((2, 3)), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="field"):
        response.polarizability(lambda e: e, np.zeros(2))
    with pytest.raises(ValueError, match="Z"):
        response.acoustic_sum_rule_violation(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="no charges"):
        response.model_dipole_fn(models.build("short_range"), None, None, None, None, 0, None)
