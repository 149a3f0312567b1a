"""MD observables: conductivity (Einstein-Helfand and Nernst-Einstein) on synthetic
random walkers with a known answer, unwrapping, and IR peak positions."""

import numpy as np
import pytest

from jaxlr import analysis

E, KB = 1.602176634e-19, 1.380649e-23


def walkers(n=64, steps=3000, d=0.01, dt=1.0, seed=0):
    rng = np.random.default_rng(seed)
    jumps = rng.normal(scale=np.sqrt(2 * d * dt), size=(steps, n, 3))
    return np.cumsum(jumps, axis=0) + rng.uniform(0, 10, (1, n, 3))


def test_conductivity_of_independent_walkers_recovers_n_q2_d_over_kt():
    d, volume, temperature, dt = 0.01, 1000.0, 300.0, 1.0
    r = walkers(d=d)
    q = np.repeat([1.0, -1.0], 32)
    exact = 64 * d * 1e-5 * E**2 / (volume * 1e-30 * KB * temperature)  # S/m
    eh, eh_err = analysis.einstein_helfand_conductivity(r, q, volume, temperature, dt)
    ne, ne_err = analysis.nernst_einstein_conductivity(r, q, volume, temperature, dt)
    assert abs(eh - exact) < 3 * eh_err and eh_err < 0.5 * exact
    assert abs(ne - exact) < 3 * ne_err and ne_err < 0.1 * exact
    # the same from time-dependent charges and from Born charges q I
    z = q[:, None, None] * np.eye(3)
    m_fixed = analysis.charge_displacement(r, q)
    m_born = analysis.charge_displacement(r, z)
    m_time = analysis.charge_displacement(r, np.broadcast_to(q, r.shape[:2]))
    np.testing.assert_allclose(m_born - m_born[0], m_fixed - m_fixed[0], atol=1e-9)
    np.testing.assert_allclose(m_time, m_born, atol=1e-12)
    diff = analysis.self_diffusion(r, dt, species=np.repeat([11, 17], 32))
    for value, err in diff.values():
        assert abs(value - d) < 3 * err and err < 0.2 * d


def test_unwrap_undoes_the_periodic_wrap():
    cell = np.array([[8.0, 0.5, 0.0], [0.0, 7.0, 0.3], [0.2, 0.0, 9.0]])
    r = walkers(n=10, steps=400, d=0.05)
    frac = r @ np.linalg.inv(cell)
    wrapped = (frac - np.floor(frac)) @ cell
    u = analysis.unwrap(wrapped, cell)
    np.testing.assert_allclose(u - u[0], r - r[0], atol=1e-10)


@pytest.mark.parametrize("correction", [None, "harmonic"])
def test_ir_spectrum_peaks_at_the_dipole_frequencies(correction):
    dt, steps = 1.0, 8000
    t = np.arange(steps) * dt * 1e-15
    c = 2.99792458e10
    rng = np.random.default_rng(1)
    mu = np.zeros((steps, 3))
    mu[:, 0] = 0.3 * np.cos(2 * np.pi * 1600 * c * t)
    mu[:, 1] = 0.1 * np.cos(2 * np.pi * 3400 * c * t + 0.4)
    mu += 0.001 * rng.normal(size=mu.shape)
    wn, inten = analysis.ir_spectrum(mu, dt, temperature=300, quantum_correction=correction)
    peaks = [
        wn[np.argmax(np.where((wn > lo) & (wn < hi), inten, 0))]
        for lo, hi in [(1000, 2500), (2500, 4000)]
    ]
    resolution = 1 / (steps / 2 * dt * 1e-15 * c)
    np.testing.assert_allclose(peaks, [1600, 3400], atol=2 * resolution)
    assert inten.max() == pytest.approx(1.0)


def test_bad_input_names_the_argument():
    r = walkers(n=4, steps=100)
    with pytest.raises(ValueError, match="charges"):
        analysis.einstein_helfand_conductivity(r, np.ones(3), 10.0, 300.0, 1.0)
    with pytest.raises(ValueError, match="volume"):
        analysis.einstein_helfand_conductivity(r, np.ones(4), -1.0, 300.0, 1.0)
    with pytest.raises(ValueError, match="n_blocks"):
        analysis.einstein_helfand_conductivity(r, np.ones(4), 10.0, 300.0, 1.0, n_blocks=50)
    with pytest.raises(ValueError, match="positions"):
        analysis.self_diffusion(np.zeros((10, 3)), 1.0)
    with pytest.raises(ValueError, match="quantum_correction"):
        analysis.ir_spectrum(np.zeros((20, 3)), 1.0, quantum_correction="x")
    with pytest.raises(ValueError, match="temperature"):
        analysis.ir_spectrum(np.ones((20, 3)), 1.0, quantum_correction="harmonic")
