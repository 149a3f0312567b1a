import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlr
from tests.structures import crystal


def test_public_names():
    for name in jaxlr.__all__:
        assert getattr(jaxlr, name) is not None
    for mod in (jaxlr.kernels, jaxlr.neighbors, jaxlr.cell, jaxlr.units, jaxlr.qeq):
        for name in mod.__all__:
            assert getattr(mod, name) is not None
    assert jaxlr.units.COULOMB == 14.399645478425668


def ionic_box(rng, n, density=0.1):
    side = (n / density) ** (1 / 3)
    pos = rng.uniform(0, side, (n, 3))
    q = np.tile([1.0, -1.0], n // 2)
    return pos, q, side * np.eye(3)


def test_jit_does_not_recompile_for_new_positions_charges_cell():
    rng = np.random.default_rng(0)
    pos, q, cell = ionic_box(rng, 64)
    fn = jaxlr.prepare_energy(pos, q, cell, accuracy=1e-6)
    traces = []

    @jax.jit
    def energy(p, q, c):
        traces.append(1)
        return fn(p, q, c)

    e1 = energy(jnp.asarray(pos), jnp.asarray(q), jnp.asarray(cell))
    pos2 = pos + rng.normal(scale=0.1, size=pos.shape)
    e2 = energy(jnp.asarray(pos2), jnp.asarray(-q), jnp.asarray(cell * 1.01))
    energy(jnp.asarray(pos2 * 0.99), jnp.asarray(q * 0.5), jnp.asarray(cell * 0.995))
    assert len(traces) == 1
    ref = jaxlr.electrostatic_energy(pos2, -q, cell * 1.01, accuracy=1e-10)
    assert float(e2) == pytest.approx(float(ref), rel=1e-5)
    assert float(e1) != float(e2)


def test_vmap_over_padded_batch_equals_loop():
    rng = np.random.default_rng(1)
    n_max = 40
    cell = 8.0 * np.eye(3)
    batch_pos, batch_q, refs = [], [], []
    for n in (40, 30, 24):
        pos = rng.uniform(0, 8, (n, 3))
        q = rng.normal(size=n)
        q -= q.mean()
        refs.append(float(jaxlr.electrostatic_energy(pos, q, cell, accuracy=1e-12)))
        pad = n_max - n  # padding atoms: zero charge, anywhere in the cell
        batch_pos.append(np.concatenate([pos, rng.uniform(0, 8, (pad, 3))]))
        batch_q.append(np.concatenate([q, np.zeros(pad)]))
    fn = jaxlr.prepare_energy(
        batch_pos[0], batch_q[0], cell, accuracy=1e-12, capacity_multiplier=2.0
    )
    cells = jnp.asarray(np.stack([cell] * 3))
    out = jax.jit(jax.vmap(fn))(
        jnp.asarray(np.stack(batch_pos)), jnp.asarray(np.stack(batch_q)), cells
    )
    np.testing.assert_allclose(np.asarray(out), refs, rtol=1e-9)
    forces = jax.vmap(jax.grad(fn))(
        jnp.asarray(np.stack(batch_pos)), jnp.asarray(np.stack(batch_q)), cells
    )
    assert np.all(np.isfinite(np.asarray(forces)))


@pytest.mark.parametrize("periodic", [False, True])
def test_float32_in_float32_out(periodic):
    rng = np.random.default_rng(2)
    pos, q, cell = ionic_box(rng, 32)
    cell = cell if periodic else None
    fn = jaxlr.prepare_energy(pos, q, cell, accuracy=1e-5)
    c32 = None if cell is None else jnp.asarray(cell, jnp.float32)
    e32, f32, s32 = jaxlr.energy_forces_stress(
        lambda p, c: fn(p, jnp.asarray(q, jnp.float32), c), jnp.asarray(pos, jnp.float32), c32
    )
    assert e32.dtype == jnp.float32 and f32.dtype == jnp.float32
    if periodic:
        assert s32.dtype == jnp.float32
    e64 = fn(jnp.asarray(pos), jnp.asarray(q), None if cell is None else jnp.asarray(cell))
    assert float(e32) == pytest.approx(float(e64), rel=1e-4)


def test_energy_forces_stress_molecule_and_crystal():
    pos, q, cell, _ = crystal("rocksalt")
    fn = jaxlr.prepare_energy(pos, q, cell, accuracy=1e-10)
    e, f, s = jaxlr.energy_forces_stress(
        lambda p, c: fn(p, jnp.asarray(q), c), jnp.asarray(pos), jnp.asarray(cell)
    )
    # rock salt: forces vanish by symmetry; E ~ 1/L makes the stress isotropic, -E / (3 V)
    np.testing.assert_allclose(np.asarray(f), 0.0, atol=1e-9)
    volume = abs(np.linalg.det(cell))
    np.testing.assert_allclose(
        np.asarray(s), -float(e) / (3 * volume) * np.eye(3), rtol=1e-8, atol=1e-8
    )
    mol = jaxlr.prepare_energy(pos[:2], q[:2])
    e, f, s = jaxlr.energy_forces_stress(
        lambda p, c: mol(p, jnp.asarray(q[:2]), c), jnp.asarray(pos[:2]), None
    )
    assert s is None
    np.testing.assert_allclose(np.asarray(f.sum(0)), 0.0, atol=1e-12)


def test_overflow_is_an_error_not_a_truncation():
    rng = np.random.default_rng(3)
    pos, q, cell = ionic_box(rng, 64)
    fn = jaxlr.prepare_energy(pos, q, cell, accuracy=1e-6, capacity_multiplier=1.0)
    crowded = pos.copy()
    crowded[:32] *= 0.3
    with pytest.raises(Exception, match="capacity overflow"):
        jax.block_until_ready(jax.jit(fn)(jnp.asarray(crowded), jnp.asarray(q), jnp.asarray(cell)))
    e, overflow = jax.jit(fn.energy_and_overflow)(
        jnp.asarray(crowded), jnp.asarray(q), jnp.asarray(cell)
    )
    assert bool(overflow)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(positions=np.full((2, 3), np.nan)), "positions"),
        (dict(cell=np.zeros((3, 3))), "singular"),
        (dict(charges=np.ones(3)), "charges"),
        (dict(sigma=-0.5), "sigma"),
        (dict(method="direct", charges=np.array([1.0, 0.0])), "direct"),
        (dict(method="pppm"), "method"),
        (dict(accuracy=2.0), "accuracy"),
        (dict(pbc=(True, False, True)), "pbc"),
        (dict(cell=None, method="ewald"), "ewald"),
    ],
)
def test_bad_input(kwargs, match):
    args = dict(
        positions=np.array([[0.0, 0, 0], [1.0, 1, 1]]),
        charges=np.array([1.0, -1.0]),
        cell=4.0 * np.eye(3),
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        jaxlr.electrostatic_energy(
            args.pop("positions"), args.pop("charges"), args.pop("cell"), **args
        )


def test_cli_energy(tmp_path, capsys):
    from ase import Atoms

    from jaxlr.cli import main

    pos, q, cell, d = crystal("rocksalt")
    atoms = Atoms("Na4Cl4", positions=pos * 2.82, cell=cell * 2.82, pbc=True)
    atoms.set_initial_charges(q)
    path = tmp_path / "nacl.extxyz"
    atoms.write(path)
    assert main(["energy", str(path), "--json", "--accuracy", "1e-8"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = -4 * 1.747564594633 * jaxlr.units.COULOMB / 2.82
    assert out["energy"] == pytest.approx(expected, rel=1e-8)
    assert out["parameters"]["method"] == "ewald"
    assert out["max_force"] < 1e-8
    assert main(["energy", str(path)]) == 0
    assert "energy" in capsys.readouterr().out
    atoms.arrays["my_q"] = 0.5 * q
    atoms.write(path)
    assert main(["energy", str(path), "--json", "--charges-from", "my_q"]) == 0
    assert json.loads(capsys.readouterr().out)["energy"] == pytest.approx(expected / 4, rel=1e-5)
    with pytest.raises(SystemExit, match="not a per-atom array"):
        main(["energy", str(path), "--charges-from", "nope"])


@pytest.mark.parametrize("method", ["ewald", "pme"])
def test_spatially_sorted_evaluation_matches(monkeypatch, method):
    """Large structures are evaluated in a spatial order inside jit; energy, forces
    and the (un-permuted) potential are those of the plain order."""
    import jaxlr._api as api

    rng = np.random.default_rng(4)
    pos, q, cell = ionic_box(rng, 60)
    sigma = rng.uniform(0.3, 0.6, 60)
    fn = jaxlr.prepare_energy(pos, q, cell, method=method, accuracy=1e-6, sigma=sigma)
    args = (jnp.asarray(pos), jnp.asarray(q), jnp.asarray(cell))

    def evaluate():
        e, g = jax.value_and_grad(lambda p: fn(p, args[1], args[2]))(args[0])
        return e, g, fn.potential(*args)

    plain = evaluate()
    monkeypatch.setattr(api, "SORT_MIN_ATOMS", 10)
    ordered = evaluate()
    for a, b in zip(plain, ordered):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-10, atol=1e-12)
