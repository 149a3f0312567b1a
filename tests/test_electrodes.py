"""Constant-potential electrodes (jaxlr.qeq.constant_potential)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

import jaxlr
import jaxlr.qeq as qeq
from jaxlr.kernels import coulomb_energy
from jaxlr.units import COULOMB


def numpy_coulomb(pos, sig):
    """Free-space Coulomb matrix of mixed point (sigma 0) and Gaussian charges; the
    point charges' (infinite) self terms are left out (0 on the diagonal)."""
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    s2 = sig[:, None] ** 2 + sig[None] ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(s2 > 0, erf(d / np.sqrt(2 * np.where(s2 > 0, s2, 1))), 1.0) / d
    diag = np.where(sig > 0, 1 / (np.sqrt(np.pi) * np.where(sig > 0, sig, 1)), 0.0)
    a[np.diag_indices(len(pos))] = diag
    return a


def cell_with_ions(seed=0):
    """Two 3x3 electrode patches (groups 0, 1) facing each other and 5 point ions."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(np.arange(3), np.arange(3), indexing="ij"), -1).reshape(-1, 2)
    lo = np.c_[1.5 * g, np.zeros(9)]
    hi = np.c_[1.5 * g + 0.2, np.full(9, 6.0)]
    ions = rng.uniform([0, 0, 2], [3, 3, 4], (5, 3))
    pos = np.r_[lo, hi, ions]
    group = np.r_[np.zeros(9, int), np.ones(9, int), -np.ones(5, int)]
    q = np.r_[np.zeros(18), rng.choice([-1.0, 1.0], 5)]
    return pos, group, q


def numpy_electrodes(pos, group, q, psi, sigma, neutral):
    sig = np.where(group >= 0, sigma, 0.0)
    a = numpy_coulomb(pos, sig)
    w = group >= 0
    chi = COULOMB * a[w][:, ~w] @ q[~w] - psi[group[w]]
    h = COULOMB * a[w][:, w]
    m = int(w.sum())
    if neutral:
        kkt = np.block([[h, np.ones((m, 1))], [np.ones((1, m)), np.zeros((1, 1))]])
        qw = np.linalg.solve(kkt, np.r_[-chi, 0.0])[:m]
    else:
        qw = np.linalg.solve(h, -chi)
    full = q.copy()
    full[w] = qw
    omega = 0.5 * COULOMB * full @ a @ full - psi[group[w]] @ qw
    return full, omega


@pytest.mark.parametrize("neutral", [True, False])
def test_molecule_matches_numpy(neutral):
    pos, group, q = cell_with_ions()
    psi = np.array([-0.7, 0.5])
    ref, omega = numpy_electrodes(pos, group, q, psi, 0.6, neutral)
    r = qeq.constant_potential(pos, q, group, psi, 0.6, neutral=neutral)
    np.testing.assert_allclose(np.asarray(r.charges), ref, atol=1e-11)
    assert float(r.energy) == pytest.approx(omega, rel=1e-11)
    assert bool(r.ok)
    if neutral:
        assert float(jnp.sum(r.charges[:18])) == pytest.approx(0.0, abs=1e-12)
        # every electrode atom sits at its group's potential plus the common shift
        phi = np.asarray(
            jaxlr.electrostatic_potential(pos, r.charges, sigma=np.where(group >= 0, 0.6, 0))
        )
        np.testing.assert_allclose(phi[:18], psi[group[:18]] + float(r.shift), atol=1e-9)
    free = qeq.constant_potential(
        pos, q, group, psi, 0.6, neutral=neutral, method="matrix_free", tol=1e-12
    )
    np.testing.assert_allclose(np.asarray(free.charges), ref, atol=1e-9)


def test_forces_at_constant_potential():
    """dOmega/dR by implicit differentiation: matches finite differences, and equals
    the electrostatic force at fixed charges (Hellmann-Feynman)."""
    pos, group, q = cell_with_ions(1)
    psi = np.array([0.3, -0.4])
    sig = np.where(group >= 0, 0.6, 0.0)

    def omega(p):
        return qeq.constant_potential(p, q, group, psi, 0.6).energy

    grad = np.asarray(jax.grad(omega)(jnp.asarray(pos)))
    h = 1e-5
    for atom, axis in ((20, 2), (3, 0), (12, 1)):
        plus, minus = pos.copy(), pos.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        fd = (float(omega(plus)) - float(omega(minus))) / (2 * h)
        assert grad[atom, axis] == pytest.approx(fd, rel=1e-6, abs=1e-9)
    charges = qeq.constant_potential(pos, q, group, psi, 0.6).charges
    fixed = jax.grad(lambda p: coulomb_energy(p, charges, sigma=jnp.asarray(sig)))(jnp.asarray(pos))
    np.testing.assert_allclose(grad, np.asarray(fixed), atol=1e-9)


def plates(a=1.6, m=4, d=10.0, length=30.0):
    g = np.stack(np.meshgrid(np.arange(m), np.arange(m), indexing="ij"), -1).reshape(-1, 2) * a
    lo = np.c_[g, np.full(len(g), 5.0)]
    hi = np.c_[g + 0.5 * a, np.full(len(g), 5.0 + d)]
    group = np.r_[np.zeros(len(g), int), np.ones(len(g), int)]
    return np.r_[lo, hi], group, np.diag([m * a, m * a, length])


@pytest.mark.parametrize("pbc", [(True, True, False), None])
def test_parallel_plate_capacitor(pbc):
    """Two planar electrodes of Gaussian atoms (width s) at potential difference dV:
    charge per area = dV / (4 pi COULOMB d_eff) (Gaussian units, eps0 = 1/(4 pi)).

    d_eff follows from the exact 1D potential of Gaussian sheets: the potential of an
    electrode atom is its charge distribution's average, so each sheet is seen
    through two Gaussians (width sqrt(2) s), which lowers d by 2 s / sqrt(pi). In a
    slab d_eff = d - 2 s/sqrt(pi). In a 3D-periodic cell (tin-foil, zero mean field)
    the two gaps d and L - d act in series' complement: d_eff = d (L - d) / L -
    2 s/sqrt(pi). The in-plane lattice (a = 1.6 A, s = 1 A) adds terms ~ exp(-(2 pi
    s / a)^2) ~ 2e-7 relative, and the Ewald sums are tuned to 1e-8, so the charge
    must match to 1e-6."""
    pos, group, cell = plates()
    s, d, length = 1.0, 10.0, 30.0
    area = cell[0, 0] * cell[1, 1]
    d_eff = (d if pbc else d * (length - d) / length) - 2 * s / np.sqrt(np.pi)
    for dv in (2.0, -1.0):
        r = qeq.constant_potential(
            pos, np.zeros(len(pos)), group, np.array([0.0, dv]), s, cell, pbc=pbc
        )
        q = np.asarray(r.charges)
        expected = dv / (4 * np.pi * COULOMB * d_eff)
        assert q[group == 1].sum() / area == pytest.approx(expected, rel=1e-6)
        assert q.sum() == pytest.approx(0.0, abs=1e-12)
        # the common shift puts the plates symmetrically about 0 (neutral pair)
        assert float(r.shift) == pytest.approx(-dv / 2, rel=1e-6)


def test_slab_electrolyte_matrix_free_and_warm_start():
    """A slab with ions between the plates: matrix-free (PME) and dense (Ewald)
    agree; a warm start from the solution converges at once."""
    pos, group, cell = plates(a=2.5, m=3, d=8.0, length=20.0)
    rng = np.random.default_rng(3)
    ions = rng.uniform([0, 0, 7], [7.5, 7.5, 11], (6, 3))
    pos = np.r_[pos, ions]
    group = np.r_[group, -np.ones(6, int)]
    q = np.r_[np.zeros(18), [1.0, -1.0] * 3]
    psi = np.array([0.5, -0.5])
    slab = (True, True, False)
    dense = qeq.constant_potential(pos, q, group, psi, 0.5, cell, pbc=slab, accuracy=1e-9)
    solver = qeq.prepare_constant_potential(
        pos, q, group, 0.5, cell, pbc=slab, accuracy=1e-9, kernel="pme"
    )
    run = jax.jit(lambda p, c: solver.solve(p, c, psi, cell, method="matrix_free", tol=1e-10))
    free = run(jnp.asarray(pos), jnp.asarray(q))
    assert bool(free.ok) and int(free.iterations) > 3
    np.testing.assert_allclose(np.asarray(free.charges), np.asarray(dense.charges), atol=1e-7)
    assert float(free.energy) == pytest.approx(float(dense.energy), rel=1e-7)
    warm = run(jnp.asarray(pos), free.charges)
    assert int(warm.iterations) <= 1


def test_bad_input_names_the_argument():
    pos, group, q = cell_with_ions()
    psi = np.array([0.0, 1.0])
    with pytest.raises(ValueError, match="electrode"):
        qeq.constant_potential(pos, q, group[:-1], psi, 0.6)
    with pytest.raises(ValueError, match="electrode"):
        qeq.constant_potential(pos, q, np.where(group == 0, 2, group), psi, 0.6)
    with pytest.raises(ValueError, match="potential"):
        qeq.constant_potential(pos, q, group, np.zeros(3), 0.6)
    with pytest.raises(ValueError, match="sigma"):
        qeq.constant_potential(pos, q, group, psi, np.zeros(len(q)))
    with pytest.raises(ValueError, match="charges"):
        qeq.constant_potential(pos, q[:3], group, psi, 0.6)
