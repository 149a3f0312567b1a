"""Reference labels from GFN2-xTB (tblite) and small sampling helpers.

This module produces training/validation data for jaxlr models: it labels
structures with the tight-binding method GFN2-xTB through ``tblite``'s Python
interface, runs short Langevin molecular dynamics to sample configurations, and
builds small rock-salt NaCl clusters.

Units follow jaxlr: Å, e, eV, forces in eV/Å, stress in eV/Å^3 (ASE sign
convention, ``sigma = (1/V) dE/d(strain)`` as a (3, 3) array), dipole in e·Å.
tblite works in atomic units (Bohr, Hartree); the conversions use
``ase.units.Bohr`` and ``ase.units.Hartree``.

Labels are stored on :class:`ase.Atoms` under these names:

=========================== ============ ========== ==============================
 key                         where        shape      unit
=========================== ============ ========== ==============================
 ``REF_energy``              ``info``     scalar     eV
 ``REF_forces``              ``arrays``   (N, 3)     eV/Å
 ``REF_charges``             ``arrays``   (N,)       e (Mulliken)
 ``REF_dipole``              ``info``     (3,)       e·Å
 ``REF_stress``              ``info``     (3, 3)     eV/Å^3 (periodic frames only)
 ``charge``                  ``info``     scalar     e (total charge)
=========================== ============ ========== ==============================

``REF_stress`` is stored as a (3, 3) numpy array. ASE's extxyz writer stores it
either as a JSON nested list (ASE >= 3.23) or as 9 numbers (older versions), so
readers should always apply ``np.reshape(atoms.info["REF_stress"], (3, 3))``.

tblite is an optional dependency: ``pip install 'jaxlr[reference]'``.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterable, Iterator

import numpy as np
from ase import Atoms
from ase.units import Bohr, Hartree, fs, kB

__all__ = ["label", "label_frames", "sample", "nacl_cluster"]

_METHODS = ("GFN2-xTB", "GFN1-xTB", "IPEA1-xTB")
_REF_INFO_KEYS = ("REF_energy", "REF_dipole", "REF_stress")
_REF_ARRAY_KEYS = ("REF_forces", "REF_charges")

#: Langevin friction used by :func:`sample`, in 1/fs.
FRICTION_PER_FS = 0.01
#: Rock-salt lattice constant of NaCl used by :func:`nacl_cluster`, in Å.
NACL_LATTICE_CONSTANT = 5.64


def _import_tblite():
    try:
        from tblite.interface import Calculator
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "jaxlr.data.reference needs the optional dependency 'tblite' for GFN2-xTB "
            "reference labels; install it with: pip install 'jaxlr[reference]'"
        ) from err
    return Calculator


@contextlib.contextmanager
def _single_openmp_thread() -> Iterator[None]:
    """Run tblite on one OpenMP thread (best effort), restoring the setting afterwards.

    With several threads tblite's reductions are summed in a varying order, so repeated
    runs differ at the 1e-16 level and MD trajectories drift apart. Only GNU OpenMP
    (``libgomp.so.1``, which the Linux tblite wheels load) is handled; elsewhere this
    is a no-op.
    """
    try:
        gomp = ctypes.CDLL("libgomp.so.1")
        previous = int(gomp.omp_get_max_threads())
    except (OSError, AttributeError):
        yield
        return
    gomp.omp_set_num_threads(1)
    try:
        yield
    finally:
        gomp.omp_set_num_threads(previous)


def _total_charge(atoms: Atoms, charge: float | None) -> float:
    if charge is None:
        charge = atoms.info.get("charge", 0.0)
    try:
        value = float(charge)
    except (TypeError, ValueError) as err:
        raise ValueError(f"charge must be a number (total charge in e), got {charge!r}") from err
    if not np.isfinite(value):
        raise ValueError(f"charge must be finite, got {value!r}")
    return value


def _check_atoms(atoms, name: str = "atoms") -> None:
    if not isinstance(atoms, Atoms):
        raise ValueError(f"{name} must be an ase.Atoms object, got {type(atoms).__name__}")
    if len(atoms) == 0:
        raise ValueError(f"{name} must contain at least one atom")
    if atoms.pbc.any() and abs(atoms.cell.volume) < 1e-8:
        raise ValueError(
            f"{name} is periodic (pbc={atoms.pbc.tolist()}) but its cell has zero volume; "
            "set a full 3x3 cell (the stress is normalised by the cell volume)"
        )


def _check_settings(method: str, accuracy: float, max_iterations: int) -> None:
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if not (_is_real(accuracy) and np.isfinite(accuracy) and accuracy > 0):
        raise ValueError(f"accuracy must be a positive number, got {accuracy!r}")
    if not (_is_int(max_iterations) and max_iterations >= 1):
        raise ValueError(f"max_iterations must be a positive integer, got {max_iterations!r}")


def _is_real(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _is_int(x) -> bool:
    return _is_real(x) and float(x).is_integer()


def _make_calculator(atoms: Atoms, charge: float, method: str, accuracy: float, max_iter: int):
    """A quiet tblite calculator for ``atoms`` (positions/cell converted to Bohr)."""
    Calculator = _import_tblite()
    kwargs = {}
    if atoms.pbc.any():
        kwargs["lattice"] = np.asarray(atoms.cell.array, dtype=float) / Bohr
        kwargs["periodic"] = np.asarray(atoms.pbc, dtype=bool)
    calc = Calculator(
        method,
        np.asarray(atoms.numbers, dtype=np.int32),
        np.asarray(atoms.positions, dtype=float) / Bohr,
        charge=charge,
        **kwargs,
    )
    calc.set("verbosity", 0)
    calc.set("accuracy", float(accuracy))
    calc.set("max-iter", int(max_iter))
    return calc


def _results(res, atoms: Atoms) -> dict:
    """Convert a tblite ``Result`` (atomic units) to jaxlr units."""
    out = {
        "energy": float(res.get("energy")) * Hartree,
        "forces": -np.asarray(res.get("gradient"), dtype=float) * (Hartree / Bohr),
        "charges": np.asarray(res.get("charges"), dtype=float).copy(),
        "dipole": np.asarray(res.get("dipole"), dtype=float) * Bohr,
    }
    if atoms.pbc.any():
        # tblite's "virial" (Hartree) is dE/d(strain), i.e. V * sigma in ASE's convention;
        # checked against a finite-strain difference of the energy in tests/test_reference.py.
        virial = np.asarray(res.get("virial"), dtype=float).reshape(3, 3)
        out["stress"] = virial * Hartree / atoms.get_volume()
    return out


def label(
    atoms: Atoms,
    *,
    charge: float | None = None,
    method: str = "GFN2-xTB",
    accuracy: float = 1.0,
    max_iterations: int = 250,
) -> dict:
    """Single-point tight-binding reference labels for one structure.

    Runs ``tblite.interface.Calculator`` (quiet) on ``atoms`` and converts the
    results from atomic units to jaxlr units.

    Args:
        atoms: structure with N atoms; positions in Å. If ``atoms.pbc.any()``, the
            cell (rows are lattice vectors, Å) and the periodic directions are
            passed to tblite and a stress is returned.
        charge: total charge in e; defaults to ``atoms.info.get("charge", 0.0)``.
        method: tblite parametrisation, ``"GFN2-xTB"`` (default), ``"GFN1-xTB"``
            or ``"IPEA1-xTB"``.
        accuracy: tblite accuracy (SCC convergence thresholds scale with it;
            smaller is tighter).
        max_iterations: maximum number of SCC iterations.

    Returns:
        dict with

        - ``"energy"``: float, total energy in eV;
        - ``"forces"``: (N, 3) array, eV/Å (minus the energy gradient);
        - ``"charges"``: (N,) array, Mulliken partial charges in e (they sum
            to the total charge);
        - ``"dipole"``: (3,) array, tblite's molecular dipole in e·Å, taken
            about the coordinate origin (origin-dependent for charged systems,
            and not a well-defined bulk quantity for periodic ones);
        - ``"stress"``: (3, 3) array in eV/Å^3, ASE sign convention
            ``sigma = (1/V) dE/d(strain)``; present only when ``atoms.pbc.any()``.

    Raises:
        ImportError: if tblite is not installed.
        ValueError: on invalid ``atoms``, ``charge``, ``method``, ``accuracy`` or
            ``max_iterations``.
        tblite.exceptions.TBLiteRuntimeError: if the SCC calculation fails.
    """
    _check_atoms(atoms)
    _check_settings(method, accuracy, max_iterations)
    q = _total_charge(atoms, charge)
    calc = _make_calculator(atoms, q, method, accuracy, max_iterations)
    return _results(calc.singlepoint(), atoms)


def _strip_labels(atoms: Atoms) -> Atoms:
    out = atoms.copy()
    out.calc = None
    for key in _REF_INFO_KEYS:
        out.info.pop(key, None)
    for key in _REF_ARRAY_KEYS:
        if key in out.arrays:
            del out.arrays[key]
    return out


def label_frames(frames: Iterable[Atoms], **kw) -> list[Atoms]:
    """Label a sequence of structures with :func:`label`.

    Args:
        frames: iterable of :class:`ase.Atoms` (each may carry its own total
            charge in ``info["charge"]``).
        **kw: keyword arguments forwarded to :func:`label` (``charge``,
            ``method``, ``accuracy``, ``max_iterations``). A ``charge`` given here
            overrides every frame's ``info["charge"]``.

    Returns:
        list of copies of the frames (inputs are not modified) with
        ``info["REF_energy"]`` (eV), ``arrays["REF_forces"]`` ((N, 3), eV/Å),
        ``arrays["REF_charges"]`` ((N,), e), ``info["REF_dipole"]`` ((3,), e·Å),
        ``info["REF_stress"]`` ((3, 3), eV/Å^3; periodic frames only) and
        ``info["charge"]`` (the total charge used, e). Stale ``REF_`` labels of
        the inputs are removed first.
    """
    unknown = set(kw) - {"charge", "method", "accuracy", "max_iterations"}
    if unknown:
        raise ValueError(f"label_frames got unknown keyword argument(s): {sorted(unknown)}")
    if isinstance(frames, Atoms):
        raise ValueError("frames must be a sequence of ase.Atoms, not a single ase.Atoms")
    out = []
    for i, frame in enumerate(frames):
        _check_atoms(frame, name=f"frames[{i}]")
        q = _total_charge(frame, kw.get("charge"))
        with _single_openmp_thread():  # bitwise reproducible labels
            labels = label(frame, **{**kw, "charge": q})
        new = _strip_labels(frame)
        new.info["charge"] = q
        new.info["REF_energy"] = labels["energy"]
        new.arrays["REF_forces"] = labels["forces"]
        new.arrays["REF_charges"] = labels["charges"]
        new.info["REF_dipole"] = labels["dipole"]
        if "stress" in labels:
            new.info["REF_stress"] = labels["stress"]
        out.append(new)
    return out


def sample(
    atoms: Atoms,
    n_frames: int,
    *,
    temperature: float = 600.0,
    timestep: float = 1.0,
    interval: int = 10,
    displacement: float = 0.05,
    seed: int = 0,
    charge: float | None = None,
    max_iterations: int = 250,
) -> list[Atoms]:
    """Sample configurations by short GFN2-xTB Langevin dynamics.

    Integrates Langevin dynamics with the BAOAB splitting (friction
    ``FRICTION_PER_FS`` = 0.01 / fs), starting from Maxwell-Boltzmann velocities
    at ``temperature`` with the centre-of-mass momentum removed. Forces come from
    tblite GFN2-xTB (default accuracy). A frame is taken every ``interval`` steps
    (``n_frames * interval`` steps in total); each taken frame then gets an
    independent Gaussian displacement of standard deviation ``displacement`` Å
    per Cartesian component (this does not feed back into the dynamics). The
    result is deterministic for a given ``seed``: tblite is run on a single
    OpenMP thread during sampling, because with several threads its reductions
    are summed in a varying order and trajectories drift apart from 1e-16 on
    (bitwise reproducible with GNU OpenMP on Linux; elsewhere reproducible up to
    that rounding).

    Args:
        atoms: starting structure (N atoms, Å; periodic cells are supported and
            kept fixed; positions are not wrapped).
        n_frames: number of frames to return (>= 1).
        temperature: thermostat temperature in K (>= 0).
        timestep: MD time step in fs (> 0).
        interval: MD steps between taken frames (>= 1).
        displacement: standard deviation of the extra Gaussian displacement in Å
            (>= 0; 0 disables it).
        seed: seed of the numpy random Generator.
        charge: total charge in e; defaults to ``atoms.info.get("charge", 0.0)``.
        max_iterations: SCC iterations allowed per force call.

    Returns:
        list of ``n_frames`` unlabelled :class:`ase.Atoms` copies (same species,
        cell and pbc as ``atoms``; ``info["charge"]`` set to the total charge;
        any ``REF_`` labels removed). Label them with :func:`label_frames`.

    Raises:
        ImportError: if tblite is not installed.
        ValueError: on invalid arguments.
    """
    _check_atoms(atoms)
    if not (_is_int(n_frames) and n_frames >= 1):
        raise ValueError(f"n_frames must be a positive integer, got {n_frames!r}")
    if not (_is_int(interval) and interval >= 1):
        raise ValueError(f"interval must be a positive integer, got {interval!r}")
    if not (_is_real(temperature) and np.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a non-negative number in K, got {temperature!r}")
    if not (_is_real(timestep) and np.isfinite(timestep) and timestep > 0):
        raise ValueError(f"timestep must be a positive number in fs, got {timestep!r}")
    if not (_is_real(displacement) and np.isfinite(displacement) and displacement >= 0):
        raise ValueError(f"displacement must be a non-negative number in Å, got {displacement!r}")
    q = _total_charge(atoms, charge)

    md_seed, disp_seed = np.random.SeedSequence(int(seed)).spawn(2)
    rng_md = np.random.default_rng(md_seed)
    rng_disp = np.random.default_rng(disp_seed)

    _check_settings("GFN2-xTB", 1.0, max_iterations)
    calc = _make_calculator(atoms, q, "GFN2-xTB", 1.0, int(max_iterations))
    lattice = np.asarray(atoms.cell.array, dtype=float) / Bohr if atoms.pbc.any() else None
    res = None

    def forces(pos):
        nonlocal res
        calc.update(positions=pos / Bohr, lattice=lattice)
        res = calc.singlepoint(res)  # previous wavefunction as the SCC guess
        return -np.asarray(res.get("gradient"), dtype=float) * (Hartree / Bohr)

    # ASE units: Å, eV, amu; time in ASE units (fs = ase.units.fs).
    masses = atoms.get_masses()[:, None]
    kt = kB * float(temperature)
    dt = float(timestep) * fs
    c1 = np.exp(-FRICTION_PER_FS * float(timestep))
    c2 = np.sqrt(1.0 - c1 * c1)
    sigma_v = np.sqrt(kt / masses)

    pos = np.array(atoms.positions, dtype=float)
    vel = sigma_v * rng_md.standard_normal(pos.shape)
    if len(atoms) > 1:
        vel -= (masses * vel).sum(axis=0) / masses.sum()

    template = _strip_labels(atoms)
    template.info["charge"] = q
    frames = []
    with _single_openmp_thread():
        f = forces(pos)
        for step in range(1, int(n_frames) * int(interval) + 1):
            vel += 0.5 * dt * f / masses  # B
            pos += 0.5 * dt * vel  # A
            vel = c1 * vel + c2 * sigma_v * rng_md.standard_normal(pos.shape)  # O
            pos += 0.5 * dt * vel  # A
            f = forces(pos)
            vel += 0.5 * dt * f / masses  # B
            if step % interval == 0:
                frame = template.copy()
                frame.positions = pos + displacement * rng_disp.standard_normal(pos.shape)
                frames.append(frame)
    return frames


def nacl_cluster(n_na: int, n_cl: int, seed: int = 0) -> Atoms:
    """A compact rock-salt NaCl cluster with ``n_na`` Na and ``n_cl`` Cl atoms.

    Sites are cut from a rock-salt lattice (``a`` = 5.64 Å, nearest-neighbour
    distance 2.82 Å; Na on the sites with ``i + j + k`` even, Cl on the odd
    ones). The centre is the centre of a Na4Cl4 cube, so both species see the
    same shells. Sites are added greedily, closest to the centre first, among the
    species whose count is not reached yet; ties in distance go to the site with
    most already-chosen nearest neighbours (keeps the cluster compact), remaining
    ties are broken by a random permutation drawn from ``seed``.

    Args:
        n_na: number of Na atoms (>= 0).
        n_cl: number of Cl atoms (>= 0); ``n_na + n_cl`` must be positive.
        seed: seed for breaking ties between equivalent sites (deterministic).

    Returns:
        non-periodic :class:`ase.Atoms`, Na first then Cl, positions in Å with
        the cube centre at the origin, and ``info["charge"] = float(n_na - n_cl)``
        (in e). Examples: ``nacl_cluster(8, 8)`` is neutral Na8Cl8,
        ``nacl_cluster(9, 8)`` is Na9Cl8 with charge +1.

    Raises:
        ValueError: if ``n_na`` or ``n_cl`` is negative or not an integer, or both
            are zero.
    """
    for name, n in (("n_na", n_na), ("n_cl", n_cl)):
        if not (_is_int(n) and n >= 0):
            raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
    n_na, n_cl = int(n_na), int(n_cl)
    if n_na + n_cl == 0:
        raise ValueError("n_na + n_cl must be positive (got an empty cluster)")

    half = NACL_LATTICE_CONSTANT / 2.0
    m = int(np.ceil((2 * max(n_na, n_cl)) ** (1.0 / 3.0) / 2.0)) + 2
    r = np.arange(-m, m + 2)
    ijk = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)
    parity = ijk.sum(axis=1) % 2  # 0: Na, 1: Cl
    rel = ijk - 0.5  # lattice units, relative to the cube centre
    dist2 = np.round((rel**2).sum(axis=1) * 4).astype(int)  # exact integers
    tie = np.random.default_rng(seed).permutation(len(ijk))

    remaining = [n_na, n_cl]
    n_neigh = np.zeros(len(ijk), dtype=int)
    free = np.ones(len(ijk), dtype=bool)
    chosen = []
    while remaining[0] + remaining[1] > 0:
        ok = free & np.array([remaining[0] > 0, remaining[1] > 0])[parity]
        idx = np.flatnonzero(ok)
        best = idx[np.lexsort((tie[idx], -n_neigh[idx], dist2[idx]))[0]]
        chosen.append(best)
        free[best] = False
        remaining[parity[best]] -= 1
        n_neigh[np.abs(ijk - ijk[best]).sum(axis=1) == 1] += 1

    chosen = np.array(chosen)
    chosen = np.concatenate([chosen[parity[chosen] == 0], chosen[parity[chosen] == 1]])
    symbols = ["Na"] * n_na + ["Cl"] * n_cl
    cluster = Atoms(symbols, positions=rel[chosen] * half, pbc=False)
    cluster.info["charge"] = float(n_na - n_cl)
    return cluster
