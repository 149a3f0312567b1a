"""LODE mesh route (jaxlr.kernels.lode.lode_mesh, method="mesh" / "auto")."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlr
from jaxlr.kernels.lode import kvector_indices, mesh_kindices
from tests.test_lode import rocksalt, triclinic

HYP = dict(smearing=1.0, max_radial=3, max_angular=3, radius=4.0)


def _pair(cell, z, channel_chunk=None, **kw):
    species = tuple(sorted(set(z.tolist())))
    direct = jaxlr.lode.prepare(cell, species_list=species, method="direct", **HYP, **kw)
    mesh = jaxlr.lode.prepare(
        cell, species_list=species, method="mesh", channel_chunk=channel_chunk, **HYP, **kw
    )
    return direct, mesh


@pytest.mark.parametrize("system, p, weight", [("rattled", 1, 0.3), ("triclinic", 6, 1.0)])
def test_mesh_matches_direct(system, p, weight):
    """Default mesh_accuracy 1e-5: the error relative to the largest coefficient
    stays below it (measured 1e-6 .. 6e-6). The triclinic p = 6 case runs in
    channel chunks of 5 (128 channels: padded steps)."""
    pos, z, cell = rocksalt(0.15, seed=3) if system == "rattled" else triclinic()
    kw = dict(potential_exponent=p, center_atom_weight=weight)
    direct, mesh = _pair(cell, z, channel_chunk=5 if p == 6 else None, **kw)
    assert direct.method == "direct" and mesh.method == "mesh"
    ref = np.asarray(direct(pos, z, cell))
    scale = np.abs(ref).max()
    c = np.asarray(mesh(pos, z, cell))
    assert np.abs(c - ref).max() < 1e-5 * scale


def test_mesh_forces_and_stress_match_finite_differences():
    pos, z, cell = triclinic()
    calc = jaxlr.lode.prepare(
        cell,
        species_list=(1, 8),
        method="mesh",
        smearing=1.0,
        max_radial=2,
        max_angular=2,
        radius=3.0,
        channel_chunk=7,  # several scan steps
    )
    weights = jnp.asarray(np.random.default_rng(8).normal(size=(2, 9, 3)))

    def energy(p, c):
        return jnp.sum(calc(p, z, c) * weights[None])

    energy = jax.jit(energy)
    e, f, stress = jaxlr.energy_forces_stress(energy, jnp.asarray(pos), jnp.asarray(cell))
    h = 1e-5
    for atom, axis in ((2, 0), (13, 2)):
        plus, minus = pos.copy(), pos.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        fd = (float(energy(plus, cell)) - float(energy(minus, cell))) / (2 * h)
        assert -float(f[atom, axis]) == pytest.approx(fd, rel=1e-6, abs=1e-8)
    volume = abs(np.linalg.det(cell))
    for a, b in ((0, 0), (0, 1), (2, 1)):
        eps = np.zeros((3, 3))
        eps[a, b] = h
        ep = float(energy(pos @ (np.eye(3) + eps), cell @ (np.eye(3) + eps)))
        em = float(energy(pos @ (np.eye(3) - eps), cell @ (np.eye(3) - eps)))
        assert float(stress[a, b]) == pytest.approx(
            (ep - em) / (2 * h) / volume, rel=1e-6, abs=1e-9
        )


def test_mesh_jit_no_recompile_and_convergence():
    pos, z, cell = rocksalt(0.1, seed=5)
    kw = dict(smearing=1.0, max_radial=1, max_angular=1, radius=3.0, species_list=(11, 17))
    calc = jaxlr.lode.prepare(cell * 1.02, method="mesh", **kw)
    traces = []

    @jax.jit
    def f(p, c):
        traces.append(1)
        return calc(p, z, c)

    f(jnp.asarray(pos), jnp.asarray(cell))
    b = f(jnp.asarray(pos * 1.01), jnp.asarray(cell * 1.01))
    assert len(traces) == 1
    ref = jaxlr.lode.prepare(cell * 1.02, method="direct", **kw)(pos * 1.01, z, cell * 1.01)
    scale = np.abs(np.asarray(ref)).max()
    assert np.abs(np.asarray(b - ref)).max() < 1e-5 * scale
    # a tighter mesh accuracy converges to the direct route
    fine = jaxlr.lode.prepare(cell * 1.02, method="mesh", mesh_accuracy=1e-9, **kw)
    assert fine.mesh > calc.mesh
    assert np.abs(np.asarray(fine(pos * 1.01, z, cell * 1.01) - ref)).max() < 1e-9 * scale


def test_auto_rule_and_bad_method():
    pos, z, cell = rocksalt(0.1, seed=2)
    hyp = dict(smearing=1.0, max_radial=1, max_angular=1, radius=3.0)
    kw = dict(species_list=(11, 17), **hyp)
    assert jaxlr.lode.prepare(cell, n_atoms=8, **kw).method == "direct"
    assert jaxlr.lode.prepare(cell, n_atoms=8, mesh_threshold=8, **kw).method == "mesh"
    assert jaxlr.lode.prepare(cell, **kw).method == "direct"  # n_atoms unknown
    assert jaxlr.lode.prepare(None, n_atoms=10**5, **kw).method == "free"
    threshold = jaxlr.lode.MESH_THRESHOLD
    assert jaxlr.lode.choose_method("auto", True, threshold) == "mesh"
    assert jaxlr.lode.choose_method("auto", True, threshold - 1) == "direct"
    auto = jaxlr.lode.spherical_expansion(pos, z, cell, mesh_threshold=8, **hyp)
    mesh = jaxlr.lode.spherical_expansion(pos, z, cell, method="mesh", **hyp)
    direct = jaxlr.lode.spherical_expansion(pos, z, cell, **hyp)
    np.testing.assert_array_equal(np.asarray(auto), np.asarray(mesh))
    assert not np.array_equal(np.asarray(auto), np.asarray(direct))
    with pytest.raises(ValueError, match="method must be one of"):
        jaxlr.lode.spherical_expansion(pos, z, cell, method="pme", **hyp)
    with pytest.raises(ValueError, match="method='mesh' needs a periodic cell"):
        jaxlr.lode.spherical_expansion(pos, z, method="mesh", **hyp)
    with pytest.raises(ValueError, match="mesh_accuracy"):
        jaxlr.lode.prepare(cell, method="mesh", mesh_accuracy=2.0, **kw)


def test_kvector_indices_cover_skewed_cells():
    """Every reciprocal vector inside the sphere is in the index set, for a strongly
    skewed cell (the extent of m_a is k_c |a_a| / 2 pi, not k_c h_a / 2 pi)."""
    cell = np.array([[7.0, 0.0, 0.0], [6.0, 3.0, 0.0], [1.0, -2.5, 6.0]])
    kc = 3.77
    recip = 2 * np.pi * np.linalg.inv(cell).T
    g = np.stack(np.meshgrid(*[np.arange(-12, 13)] * 3, indexing="ij"), -1).reshape(-1, 3)
    k = np.linalg.norm(g @ recip, axis=1)
    n_inside = int(np.sum((k > 0) & (k < kc)))
    half = kvector_indices(cell, kc, margin=1.0)
    assert 2 * len(half) == n_inside
    full = mesh_kindices(cell, kc, margin=1.0)
    assert np.all(full[:, 2] >= 0) and len(np.unique(full, axis=0)) == len(full)
    assert len(full) == len(half) + int(np.sum(half[:, 2] == 0))
