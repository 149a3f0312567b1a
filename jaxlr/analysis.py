"""Observables from MD trajectories: ionic conductivity, self-diffusion, IR spectra.

Host numpy, trajectory in, numbers with error bars out. Units: positions Å (UNWRAPPED,
i.e. continuous in time: :func:`unwrap` makes them so), time fs, volume Å^3,
temperature K, charges e, Born charges e, dipoles e·Å; conductivities in S/m,
diffusion coefficients in Å^2/fs (1 Å^2/fs = 1e-5 m^2/s), wavenumbers in cm^-1.

Error bars are block averages: the trajectory is cut into ``n_blocks`` consecutive
blocks, the estimate is computed in each, and the result is the mean with the
standard error ``std(ddof=1) / sqrt(n_blocks)``.

Conductivity
------------
- Einstein-Helfand: ``sigma = lim d/dt <|M(t0 + t) - M(t0)|^2> / (6 V k_B T)`` with
  the charge displacement ``M(t) = sum_i q_i r_i(t)``. With time-dependent charges or
  Born charges ``M`` is accumulated from the polarization current,
  ``dM = sum_i Z_i . dr_i`` (trapezoidal in time), which is what a field couples to.
- Nernst-Einstein: ``sigma = sum_s N_s q_s^2 D_s / (V k_B T)`` from the species'
  self-diffusion coefficients (ignores ion-ion correlations; the two agree for
  independent ions).

Infrared spectrum
-----------------
``I(omega) ~ omega^2 C(omega)`` with ``C`` the Fourier transform of the windowed
dipole autocorrelation (the classical absorption lineshape, arbitrary units), times an
optional quantum correction: ``"harmonic"`` ``beta hbar omega / (1 - exp(-beta hbar
omega))`` (needs the temperature) or ``None``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "unwrap",
    "charge_displacement",
    "einstein_helfand_conductivity",
    "self_diffusion",
    "nernst_einstein_conductivity",
    "dipole_autocorrelation",
    "ir_spectrum",
    "plot_ir_spectrum",
]

_E = 1.602176634e-19  # C
_KB = 1.380649e-23  # J/K
_HBAR = 1.054571817e-34  # J s
_C_CM = 2.99792458e10  # speed of light, cm/s
_ANGSTROM = 1e-10
_FS = 1e-15


def _trajectory(positions, name="positions"):
    r = np.asarray(positions, np.float64)
    if r.ndim != 3 or r.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (T, N, 3), got {r.shape}")
    if len(r) < 4:
        raise ValueError(f"{name} needs at least 4 frames, got {len(r)}")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"{name} has non-finite values")
    return r


def _positive(value, name):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not (np.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return v


def unwrap(positions, cell):
    """Positions made continuous in time ((T, N, 3), Å) by undoing jumps across the
    cell ((3, 3) rows, or (T, 3, 3)): each step is taken as the minimum image of the
    raw step (steps must be below half a cell)."""
    r = _trajectory(positions)
    cells = np.broadcast_to(np.asarray(cell, np.float64), (len(r), 3, 3))
    out = np.empty_like(r)
    out[0] = r[0]
    for t in range(1, len(r)):
        inv = np.linalg.inv(cells[t])
        step = (r[t] - r[t - 1]) @ inv
        step -= np.round(step)
        out[t] = out[t - 1] + step @ cells[t]
    return out


def charge_displacement(positions, charges):
    """``M(t)`` (T, 3) e·Å: ``sum_i q_i r_i(t)`` for fixed charges (N,), else
    accumulated from ``dM = sum_i Zbar_i . dr_i`` for charges (T, N) (``Z = q I``) or
    Born charges (T, N, 3, 3) / (N, 3, 3) (trapezoidal mean of the two frames)."""
    r = _trajectory(positions)
    t, n = r.shape[:2]
    q = np.asarray(charges, np.float64)
    if q.shape == (n,):
        return np.einsum("i,tia->ta", q, r)
    if q.shape == (t, n):
        z = q[:, :, None, None] * np.eye(3)
    elif q.shape == (n, 3, 3):
        z = np.broadcast_to(q, (t, n, 3, 3))
    elif q.shape == (t, n, 3, 3):
        z = q
    else:
        raise ValueError(
            f"charges must have shape ({n},), ({t}, {n}), ({n}, 3, 3) or ({t}, {n}, 3, 3), "
            f"got {q.shape}"
        )
    zbar = 0.5 * (z[1:] + z[:-1])
    dm = np.einsum("tiab,tib->ta", zbar, np.diff(r, axis=0))
    return np.concatenate([np.zeros((1, 3)), np.cumsum(dm, axis=0)])


def _msd(x, max_lag):
    """Mean-square displacement of x (T, ...) over lags 0..max_lag, all time origins."""
    out = np.zeros(max_lag + 1)
    for lag in range(1, max_lag + 1):
        d = x[lag:] - x[:-lag]
        out[lag] = np.mean(np.sum(d.reshape(len(d), -1, 3) ** 2, axis=-1))
    return out


def _slope(msd, dt, fit_range):
    lags = np.arange(len(msd))
    lo = max(1, int(round(fit_range[0] * (len(msd) - 1))))
    hi = max(lo + 1, int(round(fit_range[1] * (len(msd) - 1))))
    return np.polyfit(lags[lo : hi + 1] * dt, msd[lo : hi + 1], 1)[0]


def _blocks(length, n_blocks):
    if not (isinstance(n_blocks, (int, np.integer)) and n_blocks >= 2):
        raise ValueError(f"n_blocks must be an integer >= 2, got {n_blocks!r}")
    size = length // n_blocks
    if size < 8:
        raise ValueError(
            f"{length} frames in n_blocks={n_blocks} leave {size} per block; need >= 8"
        )
    return [slice(k * size, (k + 1) * size) for k in range(n_blocks)]


def _check_fit_range(fit_range, max_lag_fraction):
    lo, hi = (float(x) for x in fit_range)
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"fit_range must be 0 <= lo < hi <= 1, got {fit_range!r}")
    if not 0 < max_lag_fraction <= 1:
        raise ValueError(f"max_lag_fraction must be in (0, 1], got {max_lag_fraction!r}")
    return lo, hi


def _siemens_per_metre(rate, volume, temperature):
    """``rate / (V k_B T)`` in S/m for ``rate`` in e^2 Å^2/fs, V in Å^3, T in K."""
    return rate * _E**2 * _ANGSTROM**2 / _FS / (volume * _ANGSTROM**3 * _KB * temperature)


def _mean_error(values):
    v = np.asarray(values)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v)))


def einstein_helfand_conductivity(
    positions,
    charges,
    volume,
    temperature,
    dt,
    *,
    n_blocks=5,
    max_lag_fraction=0.5,
    fit_range=(0.2, 1.0),
):
    """Ionic conductivity (S/m) by Einstein-Helfand: ``(sigma, error)``.

    Args:
      positions: (T, N, 3) unwrapped positions (Å), frames ``dt`` fs apart.
      charges: (N,) fixed, (T, N) time-dependent (latent) or (T, N, 3, 3) / (N, 3, 3)
        Born charges (e); see :func:`charge_displacement`.
      volume: Å^3. temperature: K.
      n_blocks: blocks for the error bar. max_lag_fraction: the MSD runs to this
        fraction of a block; fit_range: the fraction of those lags fitted linearly.
    """
    m = charge_displacement(positions, charges)
    volume, temperature, dt = (
        _positive(volume, "volume"),
        _positive(temperature, "temperature"),
        _positive(dt, "dt"),
    )
    fit = _check_fit_range(fit_range, max_lag_fraction)
    values = []
    for block in _blocks(len(m), n_blocks):
        x = m[block]
        max_lag = max(2, int(max_lag_fraction * (len(x) - 1)))
        slope = _slope(_msd(x[:, None, :], max_lag), dt, fit)  # e^2 Å^2 / fs
        values.append(_siemens_per_metre(slope / 6, volume, temperature))
    return _mean_error(values)


def self_diffusion(
    positions, dt, *, species=None, n_blocks=5, max_lag_fraction=0.5, fit_range=(0.2, 1.0)
):
    """Self-diffusion coefficients (Å^2/fs) from the mean-square displacement:
    ``{label: (D, error)}`` per species (``species`` (N,) labels, e.g. atomic numbers;
    default one group ``"all"``)."""
    r = _trajectory(positions)
    dt = _positive(dt, "dt")
    fit = _check_fit_range(fit_range, max_lag_fraction)
    labels = np.zeros(r.shape[1], int) if species is None else np.asarray(species)
    if labels.shape != (r.shape[1],):
        raise ValueError(f"species must have shape ({r.shape[1]},), got {labels.shape}")
    out = {}
    for s in np.unique(labels):
        sel = r[:, labels == s]
        values = []
        for block in _blocks(len(r), n_blocks):
            x = sel[block]
            max_lag = max(2, int(max_lag_fraction * (len(x) - 1)))
            values.append(_slope(_msd(x, max_lag), dt, fit) / 6)
        out["all" if species is None else s.item()] = _mean_error(values)
    return out


def nernst_einstein_conductivity(
    positions,
    charges,
    volume,
    temperature,
    dt,
    *,
    n_blocks=5,
    max_lag_fraction=0.5,
    fit_range=(0.2, 1.0),
):
    """Nernst-Einstein conductivity (S/m): ``(sigma, error)`` from the self-diffusion
    of each charge group (atoms with equal fixed charge (N,), e)."""
    r = _trajectory(positions)
    q = np.asarray(charges, np.float64)
    if q.shape != (r.shape[1],):
        raise ValueError(f"charges must have shape ({r.shape[1]},) (fixed), got {q.shape}")
    volume, temperature, dt = (
        _positive(volume, "volume"),
        _positive(temperature, "temperature"),
        _positive(dt, "dt"),
    )
    fit = _check_fit_range(fit_range, max_lag_fraction)
    values = []
    for block in _blocks(len(r), n_blocks):
        total = 0.0
        for value in np.unique(q):
            sel = r[block][:, q == value]
            max_lag = max(2, int(max_lag_fraction * (len(sel) - 1)))
            d = _slope(_msd(sel, max_lag), dt, fit) / 6  # Å^2/fs
            total += sel.shape[1] * value**2 * d
        values.append(_siemens_per_metre(total, volume, temperature))
    return _mean_error(values)


def dipole_autocorrelation(dipoles, *, max_lag=None, subtract_mean=True):
    """``C(t) = <mu(t0) . mu(t0 + t)>`` over all time origins, lags 0..max_lag
    (default half the trajectory), of dipoles (T, 3) e·Å."""
    mu = np.asarray(dipoles, np.float64)
    if mu.ndim != 2 or mu.shape[1] != 3 or len(mu) < 4:
        raise ValueError(f"dipoles must have shape (T >= 4, 3), got {mu.shape}")
    if subtract_mean:
        mu = mu - mu.mean(axis=0)
    n = len(mu)
    max_lag = n // 2 if max_lag is None else int(max_lag)
    if not 1 <= max_lag < n:
        raise ValueError(f"max_lag must be in [1, {n - 1}], got {max_lag}")
    size = 2 ** int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(mu, size, axis=0)
    acf = np.fft.irfft(np.sum(f * np.conj(f), axis=1), size)[: max_lag + 1]
    return acf / (n - np.arange(max_lag + 1))


def ir_spectrum(
    dipoles, dt, *, max_lag=None, window="hann", temperature=None, quantum_correction=None, pad=4
):
    """Infrared absorption from the dipole autocorrelation: ``(wavenumber cm^-1,
    intensity)`` (arbitrary units, ``omega^2 C(omega)`` times the quantum correction).

    Args:
      dipoles: (T, 3) e·Å, frames ``dt`` fs apart.
      max_lag: correlation length (frames; default T/2). window: ``"hann"``,
        ``"gaussian"`` or ``None`` applied to the correlation before the transform.
      quantum_correction: None or ``"harmonic"`` (needs ``temperature`` in K).
      pad: zero-padding factor of the correlation (finer frequency grid).
    """
    dt = _positive(dt, "dt")
    c = dipole_autocorrelation(dipoles, max_lag=max_lag)
    m = len(c)
    if window == "hann":
        w = 0.5 * (1 + np.cos(np.pi * np.arange(m) / m))
    elif window == "gaussian":
        w = np.exp(-0.5 * (3 * np.arange(m) / m) ** 2)
    elif window is None:
        w = np.ones(m)
    else:
        raise ValueError(f"window must be 'hann', 'gaussian' or None, got {window!r}")
    cw = c * w
    symmetric = np.concatenate([cw, np.zeros(max(0, (pad - 2) * m)), cw[:0:-1]])
    spectrum = np.fft.rfft(symmetric).real * dt
    freq_hz = np.fft.rfftfreq(len(symmetric), d=dt * _FS)
    omega = 2 * np.pi * freq_hz
    intensity = omega**2 * spectrum
    if quantum_correction == "harmonic":
        t = _positive(temperature, "temperature")
        x = _HBAR * omega / (_KB * t)
        factor = np.ones_like(x)
        nz = x > 0
        factor[nz] = x[nz] / -np.expm1(-x[nz])
        intensity = intensity * factor
    elif quantum_correction is not None:
        raise ValueError(
            f"quantum_correction must be None or 'harmonic', got {quantum_correction!r}"
        )
    intensity = intensity / max(np.max(np.abs(intensity)), 1e-300)
    return freq_hz / _C_CM, intensity


def plot_ir_spectrum(wavenumber, intensity, ax=None, *, xlim=(0, 4000), **kwargs):
    """Plot an IR spectrum (matplotlib; returns the axes)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    ax.plot(wavenumber, intensity, **kwargs)
    ax.set_xlim(*xlim)
    ax.set_xlabel("wavenumber (cm$^{-1}$)")
    ax.set_ylabel("IR intensity (arb. units)")
    return ax
