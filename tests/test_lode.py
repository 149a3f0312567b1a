"""LODE spherical expansion (jaxlr.lode)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlr
from jaxlr.kernels.lode import (
    LodeConfig,
    lode_free,
    radial_basis,
    real_spherical_harmonics,
    spherical_bessel,
)
from tests.structures import random_rotation

try:
    import featomic
except ImportError:  # pragma: no cover
    featomic = None

needs_featomic = pytest.mark.skipif(featomic is None, reason="featomic is not installed")


def rocksalt(rattle=0.0, seed=0):
    a = 5.64
    base = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    pos = np.r_[base, base + [0.5, 0, 0]] * a
    z = np.r_[[11] * 4, [17] * 4]
    pos = pos + np.random.default_rng(seed).normal(0, rattle, pos.shape)
    return pos, z, a * np.eye(3)


def triclinic(seed=1):
    cell = np.array([[7.1, 0.0, 0.0], [2.3, 6.6, 0.0], [-1.4, 1.9, 6.9]])
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (20, 3)) @ cell, np.r_[[8] * 10, [1] * 10], cell


def water_dimer(box):
    pos = np.array(
        [[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]
        + [[2.9, 0.1, 0.2], [3.5, 0.8, 0.1], [3.4, -0.7, 0.3]]
    )
    return pos + box / 2, np.array([8, 1, 1, 8, 1, 1]), box * np.eye(3)


def featomic_expansion(pos, z, cell, p, nmax, lmax, radius, smearing, weight, k_cutoff, grad):
    import ase

    atoms = ase.Atoms(numbers=z, positions=pos, cell=cell, pbc=True)
    calc = featomic.LodeSphericalExpansion(
        density={
            "type": "SmearedPowerLaw",
            "smearing": smearing,
            "exponent": p,
            "center_atom_weight": weight,
        },
        basis={
            "type": "TensorProduct",
            "max_angular": lmax,
            "radial": {"type": "Gto", "max_radial": nmax, "radius": radius},
            # exact radial integrals: featomic's default splines are good to ~1e-8
            "spline_accuracy": None,
        },
        k_cutoff=k_cutoff,
    )
    d = calc.compute(atoms, gradients=["positions"] if grad else None)
    types = sorted(set(z.tolist()))
    n = len(z)
    out = np.zeros((n, len(types), (lmax + 1) ** 2, nmax + 1))
    gout = np.zeros(out.shape + (n, 3)) if grad else None
    for key, block in d.items():
        l, nt = int(key["o3_lambda"]), types.index(int(key["neighbor_type"]))
        centers = block.samples.values[:, 1]
        out[centers, nt, l * l : (l + 1) ** 2, :] = block.values
        if grad:
            g = block.gradient("positions")
            for row, (sample, _, atom) in enumerate(g.samples.values):
                gout[centers[sample], nt, l * l : (l + 1) ** 2, :, atom, :] = g.values[
                    row
                ].transpose(1, 2, 0)
    return out, gout


CASES = [
    # (max_radial, max_angular, radius, smearing, center_atom_weight, k_cutoff)
    (3, 3, 4.0, 1.0, 1.0, None),
    (2, 4, 3.0, 0.8, 0.3, 4.0),
]


@needs_featomic
@pytest.mark.parametrize("p", [1, 6])
@pytest.mark.parametrize(
    "system",
    ["rocksalt", "rattled", "triclinic", "water22", "water37"],
)
def test_matches_featomic(system, p):
    """Coefficients to 1e-9, position gradients to 1e-8. Boxes and cutoffs are chosen
    with no reciprocal lattice vector on the k_cutoff sphere: jaxlr leaves such
    vectors out deterministically, featomic as its rounding falls (a 30 or 35 A box
    with the default cutoff puts dozens exactly on it)."""
    pos, z, cell = {
        "rocksalt": lambda: rocksalt(),
        "rattled": lambda: rocksalt(0.15, seed=3),
        "triclinic": triclinic,
        "water22": lambda: water_dimer(22.0),
        "water37": lambda: water_dimer(37.0),
    }[system]()
    for k, (nmax, lmax, radius, smearing, weight, kc) in enumerate(CASES):
        grad = k == 0 and system in ("rattled", "triclinic")
        ref, gref = featomic_expansion(
            pos, z, cell, p, nmax, lmax, radius, smearing, weight, kc, grad
        )
        hyp = dict(
            smearing=smearing,
            max_radial=nmax,
            max_angular=lmax,
            radius=radius,
            potential_exponent=p,
            center_atom_weight=weight,
            k_cutoff=kc,
        )
        c = jaxlr.lode.spherical_expansion(pos, z, cell, **hyp)
        np.testing.assert_allclose(np.asarray(c), ref, atol=1e-9, rtol=0)
        if grad:
            calc = jaxlr.lode.prepare(cell, species_list=(min(z), max(z)), **hyp)
            jac = jax.jacrev(lambda x: calc(x, z, cell))(jnp.asarray(pos))
            np.testing.assert_allclose(np.asarray(jac), gref, atol=1e-8, rtol=0)


def test_real_spherical_harmonics_and_bessel():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 3))
    y = np.asarray(real_spherical_harmonics(jnp.asarray(v), 4))
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    x, yy, z = u.T
    c = math.sqrt(3 / (4 * math.pi))
    np.testing.assert_allclose(y[:, 1:4], c * np.c_[yy, z, x], atol=1e-14)
    np.testing.assert_allclose(
        y[:, 8], 0.25 * math.sqrt(15 / math.pi) * (x * x - yy * yy), atol=1e-14
    )
    # orthonormal on the sphere (Lebedev-free check: Monte Carlo is too loose, so use
    # a product Gauss grid in cos(theta) and phi)
    ct, wt = np.polynomial.legendre.leggauss(20)
    ph = np.linspace(0, 2 * np.pi, 41)[:-1]
    st = np.sqrt(1 - ct**2)
    grid = np.stack(
        [np.outer(st, np.cos(ph)), np.outer(st, np.sin(ph)), np.outer(ct, np.ones_like(ph))], -1
    ).reshape(-1, 3)
    w = np.outer(wt, np.full(40, 2 * np.pi / 40)).ravel()
    yg = np.asarray(real_spherical_harmonics(jnp.asarray(grid), 4))
    np.testing.assert_allclose(yg.T @ (w[:, None] * yg), np.eye(25), atol=1e-12)
    from scipy.special import spherical_jn

    xs = np.r_[0.0, np.geomspace(1e-4, 60, 200)]
    j = np.asarray(spherical_bessel(jnp.asarray(xs), 6))
    ref = np.stack([spherical_jn(l, xs) for l in range(7)], -1)
    np.testing.assert_allclose(j, ref, atol=1e-13)


def test_radial_basis_is_orthonormal():
    from jaxlr.kernels.lode import _radial_grid

    r, w, values = _radial_grid(5, 4.0)
    gram = (values * (w * r * r)[None]) @ values.T
    np.testing.assert_allclose(gram, np.eye(6), atol=1e-12)
    s, lowdin, _ = radial_basis(5, 4.0)
    np.testing.assert_allclose(s, 4.0 * np.maximum(np.sqrt(np.arange(6)), 1) / 6)


def test_single_channel_equals_ewald_potential_and_madelung():
    """max_radial = max_angular = 0: c_000 = (4 pi s^2)^(3/4) x the Ewald potential of
    unit Gaussian charges of width sqrt(smearing^2 + s^2) (jaxlr's width convention:
    sigma_i = sqrt((smearing^2 + s^2) / 2) per atom); with charges it gives the
    rock-salt Madelung constant."""
    pos, z, cell = rocksalt(0.1, seed=2)
    smearing, s = 0.3, 0.3
    c = np.asarray(
        jaxlr.lode.spherical_expansion(
            pos, z, cell, smearing=smearing, max_radial=0, max_angular=0, radius=s, k_cutoff=25.0
        )
    )[:, :, 0, 0]
    width = math.sqrt((smearing**2 + s**2) / 2)
    scale = (4 * math.pi * s * s) ** 0.75
    for a, species in enumerate((11, 17)):
        q = (z == species).astype(float)
        phi = jaxlr.electrostatic_potential(
            pos, q, cell, sigma=width, prefactor=1.0, accuracy=1e-12
        )
        np.testing.assert_allclose(c[:, a] / scale, np.asarray(phi), atol=1e-9)
    pos, z, cell = rocksalt()
    c = (
        np.asarray(
            jaxlr.lode.spherical_expansion(
                pos,
                z,
                cell,
                smearing=smearing,
                max_radial=0,
                max_angular=0,
                radius=s,
                k_cutoff=25.0,
            )
        )[:, :, 0, 0]
        / scale
    )
    q = np.where(z == 11, 1.0, -1.0)
    phi = c @ np.array([1.0, -1.0])  # potential of the charges at each atom
    self_term = 1 / (math.sqrt(math.pi) * width)
    energy = 0.5 * np.sum(q * (phi - q * self_term))
    d = 5.64 / 2
    assert -energy * d / 4 == pytest.approx(1.747564594633, rel=1e-9)


def test_free_space_matches_quadrature_and_periodic_limit():
    """Molecule: the free-space route against a direct 3D quadrature of the
    projection, and against the periodic route in growing boxes (p = 6: the images
    add ~ L^-6)."""
    pos, z, _ = water_dimer(0.0)
    hyp = dict(smearing=1.0, max_radial=2, max_angular=2, radius=2.5, potential_exponent=6)
    free = np.asarray(jaxlr.lode.spherical_expansion(pos, z, **hyp))
    errors = []
    for box in (20.0, 30.0):
        c = jaxlr.lode.spherical_expansion(pos + box / 2, z, box * np.eye(3), k_cutoff=8.0, **hyp)
        errors.append(np.abs(np.asarray(c) - free).max())
    assert errors[1] < errors[0] / 8 and errors[1] < 2e-6
    # direct quadrature around atom 0 for the O channel: Gauss-Legendre in r, a
    # product grid on the sphere, f_6 summed over the two oxygens
    from scipy.special import gammainc

    from jaxlr.kernels.lode import _radial_values

    r, wr = np.polynomial.legendre.leggauss(80)
    r, wr = 6.0 * (r + 1), 6.0 * wr
    ct, wt = np.polynomial.legendre.leggauss(30)
    ph = np.linspace(0, 2 * np.pi, 61)[:-1]
    st = np.sqrt(1 - ct**2)
    dirs = np.stack(
        [np.outer(st, np.cos(ph)), np.outer(st, np.sin(ph)), np.outer(ct, np.ones_like(ph))], -1
    ).reshape(-1, 3)
    wd = np.outer(wt, np.full(60, 2 * np.pi / 60)).ravel()
    pts = r[:, None, None] * dirs[None]  # (R, D, 3) around atom 0
    v = 0.0
    for j in (0, 3):
        d = np.linalg.norm(pts + pos[0] - pos[j], axis=-1)
        v = v + gammainc(3.0, d * d / 2) / d**6
    y = np.asarray(real_spherical_harmonics(jnp.asarray(dirs), 2))  # (D, 9)
    radial = _radial_values(r, 2, 2.5)  # (n, R)
    ref = np.einsum("r,nr,rd,d,dm->mn", wr * r * r, radial, v, wd, y)
    np.testing.assert_allclose(free[0, 1], ref, atol=2e-7)


def test_equivariance_invariance_and_permutation():
    pos, z, cell = triclinic()
    hyp = dict(smearing=1.0, max_radial=2, max_angular=3, radius=3.0)
    c = np.asarray(jaxlr.lode.spherical_expansion(pos, z, cell, **hyp))
    rot = random_rotation(np.random.default_rng(5))
    cr = np.asarray(jaxlr.lode.spherical_expansion(pos @ rot.T, z, cell @ rot.T, **hyp))
    # each l block transforms by an orthogonal matrix D_l with Y(R v) = D_l Y(v)
    v = np.random.default_rng(6).normal(size=(40, 3))
    y0 = np.asarray(real_spherical_harmonics(jnp.asarray(v), 3))
    y1 = np.asarray(real_spherical_harmonics(jnp.asarray(v @ rot.T), 3))
    for l in range(4):
        sl = slice(l * l, (l + 1) ** 2)
        d_l = np.linalg.lstsq(y0[:, sl], y1[:, sl], rcond=None)[0]  # y1 = y0 @ D
        np.testing.assert_allclose(
            np.einsum("iamn,mk->iakn", c[:, :, sl], d_l), cr[:, :, sl], atol=1e-9
        )
    ps = np.asarray(jaxlr.lode.power_spectrum(c))
    psr = np.asarray(jaxlr.lode.power_spectrum(cr))
    np.testing.assert_allclose(psr, ps, atol=1e-10)
    perm = np.random.default_rng(7).permutation(len(z))
    cp = np.asarray(jaxlr.lode.spherical_expansion(pos[perm], z[perm], cell, **hyp))
    np.testing.assert_allclose(cp, c[perm], atol=1e-11)
    ct = np.asarray(jaxlr.lode.spherical_expansion(pos + [0.7, -1.3, 2.2], z, cell, **hyp))
    np.testing.assert_allclose(ct, c, atol=1e-10)


def test_forces_and_stress_of_a_linear_model():
    pos, z, cell = rocksalt(0.12, seed=4)
    calc = jaxlr.lode.prepare(
        cell, smearing=1.0, max_radial=2, max_angular=2, radius=3.0, species_list=(11, 17)
    )
    weights = jnp.asarray(np.random.default_rng(8).normal(size=(2, 9, 3)))

    def energy(p, c):
        return jnp.sum(calc(p, z, c) * weights[None])

    e, f, stress = jaxlr.energy_forces_stress(jax.jit(energy), jnp.asarray(pos), jnp.asarray(cell))
    h = 1e-5
    for atom, axis in ((2, 0), (5, 2)):
        plus, minus = pos.copy(), pos.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        fd = (float(energy(plus, cell)) - float(energy(minus, cell))) / (2 * h)
        assert -float(f[atom, axis]) == pytest.approx(fd, rel=1e-7, abs=1e-9)
    volume = abs(np.linalg.det(cell))
    for a, b in ((0, 0), (0, 1), (2, 1)):
        eps = np.zeros((3, 3))
        eps[a, b] = h
        ep = float(energy(pos @ (np.eye(3) + eps), cell @ (np.eye(3) + eps)))
        em = float(energy(pos @ (np.eye(3) - eps), cell @ (np.eye(3) - eps)))
        assert float(stress[a, b]) == pytest.approx(
            (ep - em) / (2 * h) / volume, rel=1e-6, abs=1e-10
        )


def test_jit_no_recompile_vmap_and_float32():
    pos, z, cell = rocksalt(0.1, seed=5)
    calc = jaxlr.lode.prepare(
        cell * 1.02, smearing=1.0, max_radial=1, max_angular=1, radius=3.0, species_list=(11, 17)
    )
    traces = []

    @jax.jit
    def f(p, c):
        traces.append(1)
        return calc(p, z, c)

    a = f(jnp.asarray(pos), jnp.asarray(cell))
    b = f(jnp.asarray(pos * 1.01), jnp.asarray(cell * 1.01))
    assert len(traces) == 1 and np.all(np.isfinite(np.asarray(b)))
    # vmap over a batch (the second structure a strained copy) equals the loop
    batch_p = jnp.stack([pos, pos * 1.01])
    batch_c = jnp.stack([cell, cell * 1.01])
    out = jax.vmap(lambda p, c: calc(p, z, c))(batch_p, batch_c)
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(a), atol=1e-12)
    np.testing.assert_allclose(np.asarray(out[1]), np.asarray(b), atol=1e-12)
    c32 = calc(jnp.asarray(pos, jnp.float32), z, jnp.asarray(cell, jnp.float32))
    assert c32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(c32), np.asarray(a), atol=1e-4 * np.abs(a).max())


def test_bad_input_names_the_argument():
    pos, z, cell = rocksalt()
    hyp = dict(smearing=1.0, max_radial=1, max_angular=1, radius=3.0)
    with pytest.raises(ValueError, match="species"):
        jaxlr.lode.spherical_expansion(pos, z[:3], cell, **hyp)
    with pytest.raises(ValueError, match="smearing"):
        jaxlr.lode.spherical_expansion(pos, z, cell, **{**hyp, "smearing": -1.0})
    with pytest.raises(ValueError, match="potential_exponent"):
        jaxlr.lode.spherical_expansion(pos, z, cell, potential_exponent=9, **hyp)
    with pytest.raises(ValueError, match=r"species \[17\] are not in species_list"):
        jaxlr.lode.spherical_expansion(pos, z, cell, species_list=(11,), **hyp)
    with pytest.raises(ValueError, match="cell"):
        jaxlr.lode.spherical_expansion(pos, z, np.zeros((3, 3)), **hyp)
    assert LodeConfig(max_radial=1, max_angular=1, radius=2.0, smearing=0.5).k_cutoff == (
        pytest.approx(1.2 * math.pi / 0.5)
    )
    assert callable(lode_free)


def test_k_cutoff_from_accuracy():
    pos, z, cell = triclinic()
    hyp = dict(smearing=1.0, max_radial=3, max_angular=3, radius=4.0)
    ref = np.asarray(jaxlr.lode.spherical_expansion(pos, z, cell, k_cutoff=12.0, **hyp))
    for accuracy in (1e-4, 1e-8):
        c = np.asarray(jaxlr.lode.spherical_expansion(pos, z, cell, accuracy=accuracy, **hyp))
        error = np.abs(c - ref).max() / np.abs(ref).max()
        assert accuracy / 30 < error < 3 * accuracy
    with pytest.raises(ValueError, match="k_cutoff or accuracy"):
        jaxlr.lode.spherical_expansion(pos, z, cell, accuracy=1e-6, k_cutoff=3.0, **hyp)
