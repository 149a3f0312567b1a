"""Slabs (pbc = (True, True, False)): Yeh-Berkowitz / Ballenegger-corrected Ewald and
PME against a brute-force 2D lattice sum, independence of the vacuum, derivatives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

import jaxlr
from jaxlr.kernels import ewald_energy, pme_energy, tune_ewald, tune_pme
from jaxlr.kernels.slab import slab_cell, slab_correction
from jaxlr.neighbors import neighbor_pairs

SLAB = (True, True, False)
CELL = np.array([[6.0, 0.0, 0.0], [1.5, 5.5, 0.0], [0.3, -0.2, 30.0]])  # triclinic plane


def slab_system(seed=0, n=6):
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 1, (n, 3)) * [1.0, 1.0, 0.15] @ CELL
    q = np.tile([1.0, -1.0, 0.5, -0.5, 1.0, -1.0], n // 6 + 1)[:n]
    return pos, q


def _window(r, radius):
    x = np.clip((r - radius) / radius, 0.0, 1.0)
    return 1.0 - x**3 * (10.0 - 15.0 * x + 6.0 * x * x)


def brute_force_2d(pos, q, cell, radius=300.0):
    """Direct sum over in-plane images of the (neutral) cell, smoothly windowed off
    between radius and 2 radius; the missing dipole-dipole tail, (pi/A)(p_z^2 -
    p_par^2/2) int (1 - w)/r^2 dr, is added analytically (Gaussian units)."""
    a, b = cell[0], cell[1]
    normal = np.cross(a, b)
    area = np.linalg.norm(normal)
    normal /= area
    nmax = int(2 * radius / (area / max(np.linalg.norm(a), np.linalg.norm(b)))) + 2
    n1, n2 = np.meshgrid(np.arange(-nmax, nmax + 1), np.arange(-nmax, nmax + 1), indexing="ij")
    images = n1.ravel()[:, None] * a + n2.ravel()[:, None] * b
    length = np.linalg.norm(images, axis=1)
    keep = length < 2 * radius
    images, w = images[keep], _window(length[keep], radius)
    d = pos[None, :, :] - pos[:, None, :]
    energy = 0.0
    for chunk in np.array_split(np.arange(len(images)), 20):
        r = np.linalg.norm(d[None] + images[chunk, None, None, :], axis=-1)
        r[np.all(images[chunk] == 0, axis=1)] += np.where(np.eye(len(q)), np.inf, 0.0)
        energy += 0.5 * np.einsum("t,ij,tij->", w[chunk], np.outer(q, q), 1.0 / r)
    p = q @ pos
    p_z = p @ normal
    p_par2 = p @ p - p_z**2
    tail = quad(lambda x: (1.0 - _window(x, radius)) / x**2, radius, 2 * radius)[0]
    tail += 1.0 / (2 * radius)
    return energy + np.pi / area * (p_z**2 - 0.5 * p_par2) * tail


@pytest.mark.parametrize("method", ["ewald", "pme"])
def test_neutral_slab_matches_brute_force_2d_sum(method):
    pos, q = slab_system()
    assert abs(q @ pos @ np.cross(CELL[0], CELL[1])) > 0.1  # a real dipole along z
    ref = brute_force_2d(pos, q, CELL)
    e = jaxlr.electrostatic_energy(
        pos, q, CELL, pbc=SLAB, method=method, accuracy=1e-8, prefactor=1.0
    )
    assert float(e) == pytest.approx(ref, rel=1e-6)
    # the third cell vector plays no part
    other = CELL.copy()
    other[2] = [5.0, 3.0, 12.0]
    e2 = jaxlr.electrostatic_energy(
        pos, q, other, pbc=SLAB, method=method, accuracy=1e-8, prefactor=1.0
    )
    assert float(e2) == pytest.approx(float(e), rel=1e-8)


@pytest.mark.parametrize("method", ["ewald", "pme"])
def test_charged_slab_independent_of_vacuum(method):
    """With the charged-slab terms, the energy does not move with the periodic
    length along the normal (the background's L dependence is removed)."""
    pos, q = slab_system(seed=1)
    q = q + 0.15
    sigma = 0.5
    energies, uncorrected = [], []
    for length in (25.0, 40.0, 70.0):
        periodic = np.asarray(slab_cell(jnp.asarray(CELL), length))
        if method == "ewald":
            cfg = tune_ewald(pos, q, periodic, accuracy=1e-10, sigma=sigma)
            kernel = ewald_energy
        else:
            cfg = tune_pme(pos, q, periodic, accuracy=1e-9, sigma=sigma)
            kernel = pme_energy
        pairs = neighbor_pairs(pos, cfg.r_cut, CELL, SLAB)
        args = (jnp.asarray(pos), jnp.asarray(q))
        e = kernel(*args, jnp.asarray(periodic), pairs, config=cfg, sigma=sigma, prefactor=1.0)
        dipole_only = slab_correction(*args, jnp.asarray(CELL), length, sigma)
        total = q.sum()
        normal = np.cross(CELL[0], CELL[1])
        area = np.linalg.norm(normal)
        z = pos @ normal / area
        charged_terms = (
            -2
            * np.pi
            / (area * length)
            * (total * np.sum(q * (z**2 + sigma**2)) + total**2 * length**2 / 12)
        )
        energies.append(float(e + dipole_only))
        uncorrected.append(float(e + dipole_only) - charged_terms)
    assert np.ptp(energies) < 1e-8 * abs(energies[0])
    # without the charged-slab terms the energy drifts with L
    assert np.ptp(uncorrected) > 1e-3 * abs(energies[0])


def test_slab_forces_stress_and_potential():
    pos, q = slab_system(seed=2, n=12)
    q = q + 0.05
    fn = jaxlr.prepare_energy(pos, q, CELL, pbc=SLAB, method="pme", accuracy=1e-9)
    assert fn.slab_length is not None and fn.method == "pme"
    qj = jnp.asarray(q)

    def energy(p, c):
        return fn(p, qj, c)

    e, f, stress = jax.jit(lambda p, c: jaxlr.energy_forces_stress(energy, p, c))(
        jnp.asarray(pos), jnp.asarray(CELL)
    )
    h = 1e-5
    for atom, axis in ((0, 2), (5, 0), (11, 1)):
        dp = np.zeros_like(pos)
        dp[atom, axis] = h
        fd = (float(energy(pos + dp, CELL)) - float(energy(pos - dp, CELL))) / (2 * h)
        assert float(f[atom, axis]) == pytest.approx(-fd, rel=1e-6, abs=1e-8)
    vol = abs(np.linalg.det(CELL))
    for a, b in ((0, 0), (0, 1), (1, 1)):  # in-plane strains
        eps = np.zeros((3, 3))
        eps[a, b] = h
        ep = float(energy(pos @ (np.eye(3) + eps), CELL @ (np.eye(3) + eps)))
        em = float(energy(pos @ (np.eye(3) - eps), CELL @ (np.eye(3) - eps)))
        assert float(stress[a, b]) == pytest.approx((ep - em) / (2 * h) / vol, rel=1e-6, abs=1e-9)
    phi = fn.potential(jnp.asarray(pos), qj, jnp.asarray(CELL))
    assert float(0.5 * jnp.sum(qj * phi)) == pytest.approx(float(e), rel=1e-10)
    ewald = jaxlr.electrostatic_energy(pos, q, CELL, pbc=SLAB, method="ewald", accuracy=1e-9)
    assert float(e) == pytest.approx(float(ewald), rel=1e-8)


def test_slab_input_errors():
    pos, q = slab_system()
    with pytest.raises(ValueError, match="open direction last"):
        jaxlr.electrostatic_energy(pos, q, CELL, pbc=(True, False, True))
    with pytest.raises(ValueError, match="direct"):
        jaxlr.electrostatic_energy(pos, q, CELL, pbc=SLAB, method="direct")
