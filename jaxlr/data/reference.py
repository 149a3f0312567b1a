"""Reference labels from GFN2-xTB (tblite) and small sampling helpers.

This module produces training/validation data for jaxlr models: it labels
structures with the tight-binding method GFN2-xTB through ``tblite``'s Python
interface (optionally under a uniform external electric field), computes Born
effective charges and polarizabilities by finite differences, runs short Langevin
molecular dynamics to sample configurations, relaxes small molecules, and builds
small rock-salt NaCl clusters and hydrogen-bonded water clusters.

Units follow jaxlr: Å, e, eV, forces in eV/Å, stress in eV/Å^3 (ASE sign
convention, ``sigma = (1/V) dE/d(strain)`` as a (3, 3) array), dipole in e·Å,
fields in V/Å, Born charges in e, polarizability in e·Å^2/V. tblite works in atomic
units (Bohr, Hartree, fields in Hartree/(e·Bohr)); the conversions use
``ase.units.Bohr`` and ``ase.units.Hartree`` (1 V/Å = ``Bohr / Hartree`` a.u.,
:data:`FIELD_AU`).

Field convention: a field E (V/Å) adds ``-E . mu`` to the energy (mu the dipole of
nuclei and electrons about the coordinate origin), so ``d energy / d E = -mu`` and a
charge q feels the force ``q E``. Hence the two independent routes to the Born
charges, ``Z[i, a, b] = d mu_a / d R_ib = d F_ib / d E_a`` (Maxwell relation), both
checked in ``tests/test_water_reference.py``.

Labels are stored on :class:`ase.Atoms` under these names:

=========================== ============ ========== ==================================
 key                         where        shape      unit
=========================== ============ ========== ==================================
 ``REF_energy``              ``info``     scalar     eV
 ``REF_forces``              ``arrays``   (N, 3)     eV/Å
 ``REF_charges``             ``arrays``   (N,)       e (Mulliken)
 ``REF_dipole``              ``info``     (3,)       e·Å
 ``REF_stress``              ``info``     (3, 3)     eV/Å^3 (periodic frames only)
 ``REF_born_charges``        ``arrays``   (N, 9)     e; row-major ``Z[i]`` (3, 3),
                                                     ``Z[i, a, b] = d mu_a / d R_ib``
                                                     (molecules only)
 ``REF_polarizability``      ``info``     (9,)       e·Å^2/V; row-major (3, 3),
                                                     ``alpha[a, b] = d mu_a / d E_b``
                                                     (molecules only)
 ``charge``                  ``info``     scalar     e (total charge)
 ``field``                   ``info``     (3,)       V/Å (external field; absent = 0);
                                                     all labels are at this field
=========================== ============ ========== ==================================

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

__all__ = [
    "label",
    "label_frames",
    "born_charges",
    "polarizability",
    "sample",
    "relax",
    "nacl_cluster",
    "water_cluster",
]

_METHODS = ("GFN2-xTB", "GFN1-xTB", "IPEA1-xTB")
_REF_INFO_KEYS = ("REF_energy", "REF_dipole", "REF_stress", "REF_polarizability")
_REF_ARRAY_KEYS = ("REF_forces", "REF_charges", "REF_born_charges")
_ROUTES = ("dipole", "forces")

#: 1 V/Å in tblite's field unit Hartree/(e·Bohr) (about 1/51.42).
FIELD_AU = Bohr / Hartree

#: Langevin friction used by :func:`sample`, in 1/fs.
FRICTION_PER_FS = 0.01
#: Rock-salt lattice constant of NaCl used by :func:`nacl_cluster`, in Å.
NACL_LATTICE_CONSTANT = 5.64
#: O-H bond length (Å), H-O-H angle (degrees) and hydrogen-bonded O...O distance (Å)
#: of the starting geometries of :func:`water_cluster`.
WATER_OH, WATER_HOH, WATER_OO = 0.96, 104.5, 2.8
#: default tblite accuracy of :func:`born_charges` and :func:`polarizability`. With
#: tblite's default (1.0) the two Born-charge routes differ by ~3e-2 e for water; with
#: 1e-3 by ~1e-4 e, with 1e-5 by ~1e-6 e (monomer, dimer, pentamer), at a few percent
#: more SCC iterations.
RESPONSE_ACCURACY = 1e-5
#: default position step of ``born_charges(route="dipole")``, in Å: central-difference
#: truncation error ~1e-4 e at 1e-2 Å, ~1e-5 e at 3e-3 Å, so ~1e-6 e here, and SCC
#: noise below that (water clusters, accuracy 1e-5).
BORN_DELTA_DIPOLE = 1e-3
#: default field step of ``born_charges(route="forces")`` and :func:`polarizability`,
#: in V/Å: truncation error ~4e-5 e at 0.1 V/Å and ~3e-6 e at 0.03 V/Å (so ~1e-7 e
#: here); SCC noise grows below 1e-3 V/Å (~1e-5 e at 1e-4 V/Å).
BORN_DELTA_FORCES = 5e-3
#: default field step of :func:`polarizability`, in V/Å (see ``BORN_DELTA_FORCES``).
POLARIZABILITY_DELTA = 5e-3


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


def _external_field(atoms: Atoms, field) -> np.ndarray:
    """The external field (3,) in V/Å: ``field``, else ``atoms.info["field"]``, else zero.

    A nonzero field on a periodic structure is refused: tblite's field term is the
    molecular ``-mu . E`` (position operator), which is not defined under periodic
    boundary conditions.
    """
    name = "field"
    if field is None:
        field = atoms.info.get("field")
        name = 'field (from atoms.info["field"])'
        if field is None:
            return np.zeros(3)
    try:
        value = np.array(field, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{name} must be a (3,) electric field vector in V/Å, got {field!r}"
        ) from err
    if value.shape != (3,):
        raise ValueError(
            f"{name} must be a (3,) electric field vector in V/Å, got shape {value.shape}"
        )
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{name} must be finite, got {value.tolist()}")
    if value.any() and atoms.pbc.any():
        raise ValueError(
            f"{name} is nonzero but the structure is periodic (pbc={atoms.pbc.tolist()}): "
            "an external electric field is supported for non-periodic structures "
            "(molecules, clusters) only"
        )
    return value


def _make_calculator(
    atoms: Atoms,
    charge: float,
    method: str,
    accuracy: float,
    max_iter: int,
    field: np.ndarray | None = None,
    electronic_temperature: float | None = None,
):
    """A quiet tblite calculator for ``atoms`` (positions/cell converted to Bohr), with
    tblite's uniform electric-field interaction when ``field`` (V/Å) is nonzero and
    the Fermi smearing at ``electronic_temperature`` (K; None keeps tblite's 300 K)."""
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
    if electronic_temperature is not None:
        calc.set("temperature", float(electronic_temperature) * kB / Hartree)  # Hartree
    if field is not None and np.any(field):
        # tblite 0.8's cffi wrapper wants a C double pointer (or a list, which cffi turns
        # into a temporary array); tblite copies the three values.
        calc.add("electric-field", [float(x) * FIELD_AU for x in field])
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
    field=None,
    electronic_temperature: float | None = None,
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
        field: uniform external electric field, (3,) in V/Å; defaults to
            ``atoms.info.get("field")`` and to no field when neither is given.
            Applied through tblite's ``"electric-field"`` interaction, which adds
            ``-E . mu`` (mu the dipole of the nuclei and the electrons, in the
            coordinate origin's frame) to the energy: the energy satisfies
            ``d energy / d field = -dipole`` and the forces include the field's
            force (they sum to ``charge * field``). Non-periodic structures only.
        electronic_temperature: temperature of the Fermi smearing of the orbital
            occupations, in K (default None: tblite's 300 K). Raising it (e.g. to
            2000 K) makes the SCC converge, to a unique solution, for systems with
            near-degenerate frontier orbitals (Ag3- near D3h); the energy is then the
            Mermin free energy, which the forces remain the exact gradient of.

    Returns:
        dict with

        - ``"energy"``: float, total energy in eV (including the field term);
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
        ValueError: on invalid ``atoms``, ``charge``, ``method``, ``accuracy``,
            ``max_iterations`` or ``field`` (wrong shape, non-finite, or nonzero on a
            periodic structure).
        tblite.exceptions.TBLiteRuntimeError: if the SCC calculation fails.
    """
    _check_atoms(atoms)
    _check_settings(method, accuracy, max_iterations)
    q = _total_charge(atoms, charge)
    efield = _external_field(atoms, field)
    if electronic_temperature is not None and not (
        _is_real(electronic_temperature)
        and np.isfinite(electronic_temperature)
        and electronic_temperature > 0
    ):
        raise ValueError(
            f"electronic_temperature must be a positive number in K, got {electronic_temperature!r}"
        )
    calc = _make_calculator(
        atoms, q, method, accuracy, max_iterations, efield, electronic_temperature
    )
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


def label_frames(
    frames: Iterable[Atoms],
    *,
    response: bool = False,
    born_delta: float | None = None,
    field_delta: float | None = None,
    **kw,
) -> list[Atoms]:
    """Label a sequence of structures with :func:`label`.

    Args:
        frames: iterable of :class:`ase.Atoms` (each may carry its own total
            charge in ``info["charge"]`` and external field in ``info["field"]``).
        response: also store the Born charges (:func:`born_charges`, route
            ``"dipole"``) and the polarizability (:func:`polarizability`), at the
            frame's field (non-periodic frames only; 6 N + 6 extra single points).
        born_delta: position step (Å) of the Born charges (default
            :data:`BORN_DELTA_DIPOLE`); used with ``response``.
        field_delta: field step (V/Å) of the polarizability (default
            :data:`POLARIZABILITY_DELTA`); used with ``response``.
        **kw: keyword arguments forwarded to :func:`label` (``charge``,
            ``method``, ``accuracy``, ``max_iterations``, ``field``,
            ``electronic_temperature``; the last not with ``response``). A ``charge``
            or ``field`` given here overrides every frame's ``info["charge"]`` or
            ``info["field"]``. With ``response``, ``method``, ``accuracy`` and
            ``max_iterations`` are forwarded to the response functions too (their
            default accuracy is :data:`RESPONSE_ACCURACY` when none is given).

    Returns:
        list of copies of the frames (inputs are not modified) with
        ``info["REF_energy"]`` (eV), ``arrays["REF_forces"]`` ((N, 3), eV/Å),
        ``arrays["REF_charges"]`` ((N,), e), ``info["REF_dipole"]`` ((3,), e·Å),
        ``info["REF_stress"]`` ((3, 3), eV/Å^3; periodic frames only),
        ``info["charge"]`` (the total charge used, e), ``info["field"]`` ((3,), V/Å;
        when a field was given here), and with ``response``
        ``arrays["REF_born_charges"]`` ((N, 9), e; row-major ``Z[i]``) and
        ``info["REF_polarizability"]`` ((9,), e·Å^2/V; row-major). Stale ``REF_``
        labels of the inputs are removed first.
    """
    known = {"charge", "method", "accuracy", "max_iterations", "field", "electronic_temperature"}
    unknown = set(kw) - known
    if unknown:
        raise ValueError(f"label_frames got unknown keyword argument(s): {sorted(unknown)}")
    if response and kw.get("electronic_temperature") is not None:
        raise ValueError(
            "label_frames: electronic_temperature is not supported with response=True "
            "(the response functions run at tblite's default temperature)"
        )
    if isinstance(frames, Atoms):
        raise ValueError("frames must be a sequence of ase.Atoms, not a single ase.Atoms")
    response_kw = {k: kw[k] for k in ("method", "accuracy", "max_iterations") if k in kw}
    out = []
    for i, frame in enumerate(frames):
        _check_atoms(frame, name=f"frames[{i}]")
        q = _total_charge(frame, kw.get("charge"))
        efield = _external_field(frame, kw.get("field"))
        with _single_openmp_thread():  # bitwise reproducible labels
            labels = label(frame, **{**kw, "charge": q, "field": efield})
            if response:
                z = born_charges(frame, charge=q, field=efield, delta=born_delta, **response_kw)
                alpha = polarizability(
                    frame, charge=q, field=efield, delta=field_delta, **response_kw
                )
        new = _strip_labels(frame)
        new.info["charge"] = q
        if kw.get("field") is not None:
            new.info["field"] = efield
        new.info["REF_energy"] = labels["energy"]
        new.arrays["REF_forces"] = labels["forces"]
        new.arrays["REF_charges"] = labels["charges"]
        new.info["REF_dipole"] = labels["dipole"]
        if "stress" in labels:
            new.info["REF_stress"] = labels["stress"]
        if response:
            new.arrays["REF_born_charges"] = z.reshape(len(frame), 9)
            new.info["REF_polarizability"] = alpha.reshape(9)
        out.append(new)
    return out


# ------------------------------------------------------------- response properties


class _Points:
    """Single points of one structure at displaced positions and/or fields.

    Every single point starts from the converged wavefunction of the undisplaced
    structure at the base field (the same guess for the + and - step of a central
    difference), and one tblite calculator is kept per distinct field (tblite's
    field interaction cannot be changed once added).
    """

    def __init__(self, atoms, charge, method, accuracy, max_iterations, field):
        self.atoms = atoms
        self.args = (charge, method, accuracy, int(max_iterations))
        self.field = np.asarray(field, dtype=float)
        self.calcs = {}
        self.guess = self._calc(self.field).singlepoint()

    def _calc(self, field):
        key = tuple(float(x) for x in field)
        if key not in self.calcs:
            charge, method, accuracy, max_iterations = self.args
            self.calcs[key] = _make_calculator(
                self.atoms, charge, method, accuracy, max_iterations, np.asarray(key)
            )
        return self.calcs[key]

    def __call__(self, positions=None, dfield=None) -> dict:
        field = self.field if dfield is None else self.field + dfield
        calc = self._calc(field)
        pos = self.atoms.positions if positions is None else positions
        calc.update(positions=np.asarray(pos, dtype=float) / Bohr)
        return _results(calc.singlepoint(self.guess, copy=True), self.atoms)


def _response_setup(atoms, charge, method, accuracy, max_iterations, field, delta, name):
    _check_atoms(atoms)
    if atoms.pbc.any():
        raise ValueError(
            f"atoms is periodic (pbc={atoms.pbc.tolist()}): {name} uses the molecular "
            "dipole and the molecular field term, defined for non-periodic structures only"
        )
    _check_settings(method, accuracy, max_iterations)
    if not (_is_real(delta) and np.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be a positive number, got {delta!r}")
    q = _total_charge(atoms, charge)
    efield = _external_field(atoms, field)
    return _Points(atoms, q, method, accuracy, max_iterations, efield)


def born_charges(
    atoms: Atoms,
    *,
    charge: float | None = None,
    method: str = "GFN2-xTB",
    route: str = "dipole",
    delta: float | None = None,
    field=None,
    accuracy: float | None = None,
    max_iterations: int = 250,
) -> np.ndarray:
    """Born effective charges of a molecule by finite differences of tblite results.

    ``Z[i, a, b] = d mu_a / d R_ib`` (e), mu the dipole in e·Å (jaxlr's convention),
    evaluated at the external field ``field``. Two independent routes:

    - ``route="dipole"``: central differences of the dipole over the 6 N
      displacements ``R_ib +- delta`` (``delta`` in Å, default
      :data:`BORN_DELTA_DIPOLE`);
    - ``route="forces"``: the Maxwell relation ``Z[i, a, b] = d F_ib / d E_a``
      (since ``d energy / d E = -mu``), central differences of the forces over the
      6 fields ``E +- delta e_a`` (``delta`` in V/Å, default
      :data:`BORN_DELTA_FORCES`).

    Both need a tight SCC (default ``accuracy`` :data:`RESPONSE_ACCURACY`); with the
    defaults they agree to ~1e-6 e for water clusters (monomer to pentamer). For a
    neutral molecule ``sum_i Z[i] = 0`` (acoustic sum rule); for total charge Q it
    is ``Q I`` (the dipole is taken about the coordinate origin). tblite runs on one
    OpenMP thread.

    Args:
        atoms: non-periodic structure with N atoms (Å).
        charge: total charge in e; defaults to ``atoms.info.get("charge", 0.0)``.
        method: tblite parametrisation (see :func:`label`).
        route: ``"dipole"`` or ``"forces"``.
        delta: finite-difference step, Å (route ``"dipole"``) or V/Å (``"forces"``).
        field: external field (3,) in V/Å at which Z is evaluated; defaults to
            ``atoms.info.get("field")``, else zero.
        accuracy: tblite accuracy (default :data:`RESPONSE_ACCURACY`).
        max_iterations: maximum number of SCC iterations.

    Returns:
        (N, 3, 3) array in e.

    Raises:
        ImportError: if tblite is not installed.
        ValueError: on invalid arguments or periodic ``atoms``.
    """
    if route not in _ROUTES:
        raise ValueError(f"route must be one of {_ROUTES}, got {route!r}")
    if delta is None:
        delta = BORN_DELTA_DIPOLE if route == "dipole" else BORN_DELTA_FORCES
    if accuracy is None:
        accuracy = RESPONSE_ACCURACY
    with _single_openmp_thread():
        points = _response_setup(
            atoms, charge, method, accuracy, max_iterations, field, delta, "born_charges"
        )
        n = len(atoms)
        z = np.zeros((n, 3, 3))
        h = float(delta)
        if route == "dipole":
            for i in range(n):
                for b in range(3):
                    mu = []
                    for sign in (1.0, -1.0):
                        pos = np.array(atoms.positions, dtype=float)
                        pos[i, b] += sign * h
                        mu.append(points(positions=pos)["dipole"])
                    z[i, :, b] = (mu[0] - mu[1]) / (2 * h)
        else:
            for a in range(3):
                forces = []
                for sign in (1.0, -1.0):
                    step = np.zeros(3)
                    step[a] = sign * h
                    forces.append(points(dfield=step)["forces"])
                z[:, a, :] = (forces[0] - forces[1]) / (2 * h)
    return z


def polarizability(
    atoms: Atoms,
    *,
    charge: float | None = None,
    method: str = "GFN2-xTB",
    delta: float | None = None,
    field=None,
    accuracy: float | None = None,
    max_iterations: int = 250,
) -> np.ndarray:
    """Electronic (clamped-nuclei) polarizability of a molecule by finite fields.

    ``alpha[a, b] = d mu_a / d E_b`` in e·Å^2/V, central differences of tblite's
    dipole under the fields ``field +- delta e_b`` (``delta`` in V/Å, default
    :data:`POLARIZABILITY_DELTA`; 6 single points). Multiplied by
    ``jaxlr.units.COULOMB`` (e^2/(4 pi eps0) in eV·Å) it becomes the polarizability
    volume ``alpha / (4 pi eps0)`` in Å^3. Symmetric up to the finite-difference
    error (~1e-6 relative for water clusters) and positive semi-definite. GFN2-xTB's
    minimal valence basis gives small values: the water monomer has ~0.054, 0.021
    and 3e-5 e·Å^2/V (0.78, 0.30 and 5e-4 Å^3) along the H-H axis, the bisector and
    the normal of the molecular plane (experiment: ~1.45 Å^3 isotropic); out-of-plane
    response needs orbitals the basis does not have.

    Args:
        atoms: non-periodic structure with N atoms (Å).
        charge: total charge in e; defaults to ``atoms.info.get("charge", 0.0)``.
        method: tblite parametrisation (see :func:`label`).
        delta: field step in V/Å.
        field: external field (3,) in V/Å at which alpha is evaluated; defaults to
            ``atoms.info.get("field")``, else zero.
        accuracy: tblite accuracy (default :data:`RESPONSE_ACCURACY`).
        max_iterations: maximum number of SCC iterations.

    Returns:
        (3, 3) array in e·Å^2/V.

    Raises:
        ImportError: if tblite is not installed.
        ValueError: on invalid arguments or periodic ``atoms``.
    """
    if delta is None:
        delta = POLARIZABILITY_DELTA
    if accuracy is None:
        accuracy = RESPONSE_ACCURACY
    with _single_openmp_thread():
        points = _response_setup(
            atoms, charge, method, accuracy, max_iterations, field, delta, "polarizability"
        )
        alpha = np.zeros((3, 3))
        h = float(delta)
        for b in range(3):
            mu = []
            for sign in (1.0, -1.0):
                step = np.zeros(3)
                step[b] = sign * h
                mu.append(points(dfield=step)["dipole"])
            alpha[:, b] = (mu[0] - mu[1]) / (2 * h)
    return alpha


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


def water_cluster(n: int) -> Atoms:
    """A hydrogen-bonded (H2O)_n starting geometry, ``n`` = 1 to 6 (unrelaxed).

    - ``n = 1``: one molecule (O-H 0.96 Å, H-O-H 104.5 degrees) in the xy plane;
    - ``n = 2``: the "linear" dimer: the donor's bonded H on the O...O axis (2.8 Å),
      the acceptor's plane tilted so that its lone-pair side faces the donor;
    - ``n >= 3``: the cyclic cluster: O atoms on a regular n-gon with O...O edges of
      2.8 Å, each molecule donating one hydrogen bond to the next one around the
      ring (H on the O...O line), its free H pointing out of the ring plane,
      alternately up and down (frustrated for odd n, as in the real trimer and
      pentamer).

    Relax it (:func:`relax`) before sampling. Atoms are ordered O, H, H per molecule.

    Args:
        n: number of water molecules.

    Returns:
        non-periodic :class:`ase.Atoms` (3 n atoms, Å) centred at the origin, with
        ``info["charge"] = 0.0``.

    Raises:
        ValueError: if ``n`` is not an integer in 1..6.
    """
    if not (_is_int(n) and 1 <= n <= 6):
        raise ValueError(f"n must be an integer from 1 to 6 (water molecules), got {n!r}")
    n = int(n)
    theta = np.deg2rad(WATER_HOH)
    if n == 1:
        half = theta / 2
        o = np.zeros(3)
        h1 = WATER_OH * np.array([np.sin(half), np.cos(half), 0.0])
        h2 = WATER_OH * np.array([-np.sin(half), np.cos(half), 0.0])
        positions = [o, h1, h2]
    elif n == 2:
        # donor: O at the origin, H1 towards the acceptor along +x, H2 in the xy plane
        h2_dir = np.array([np.cos(theta), np.sin(theta), 0.0])
        donor = [np.zeros(3), WATER_OH * np.array([1.0, 0, 0]), WATER_OH * h2_dir]
        # acceptor: O at (d, 0, 0); its bisector points away from the donor, tilted by
        # ~57 degrees so that a lone pair faces the donating H; H atoms at +-z
        tilt = np.deg2rad(57.0)
        bisector = np.array([np.cos(tilt), np.sin(tilt), 0.0])
        normal = np.array([0.0, 0.0, 1.0])
        oa = np.array([WATER_OO, 0.0, 0.0])
        acceptor = [
            oa,
            oa + WATER_OH * (np.cos(theta / 2) * bisector + np.sin(theta / 2) * normal),
            oa + WATER_OH * (np.cos(theta / 2) * bisector - np.sin(theta / 2) * normal),
        ]
        positions = donor + acceptor
    else:
        radius = WATER_OO / (2 * np.sin(np.pi / n))
        angles = 2 * np.pi * np.arange(n) / n
        oxygens = radius * np.stack([np.cos(angles), np.sin(angles), np.zeros(n)], axis=1)
        positions = []
        for k in range(n):
            o = oxygens[k]
            u = oxygens[(k + 1) % n] - o
            u /= np.linalg.norm(u)  # donated H-bond direction
            out = np.array([o[0], o[1], 0.0]) / radius  # radial, away from the ring
            up = np.array([0.0, 0.0, 1.0 if k % 2 == 0 else -1.0])
            v = out + 1.5 * up
            v -= np.dot(v, u) * u
            v /= np.linalg.norm(v)
            h1 = o + WATER_OH * u
            h2 = o + WATER_OH * (np.cos(theta) * u + np.sin(theta) * v)
            positions += [o, h1, h2]
    positions = np.array(positions)
    positions -= positions.mean(axis=0)
    atoms = Atoms("OHH" * n, positions=positions, pbc=False)
    atoms.info["charge"] = 0.0
    return atoms


def relax(
    atoms: Atoms,
    *,
    fmax: float = 0.02,
    max_steps: int = 500,
    max_move: float = 0.1,
    charge: float | None = None,
    method: str = "GFN2-xTB",
) -> Atoms:
    """Relax a non-periodic structure with tblite forces (deterministic steepest descent).

    Steps ``x += s F`` with the displacement capped at ``max_move`` Å per atom; ``s``
    grows by 1.2 after a step that lowers the energy and is halved (the step undone)
    after one that does not. Stops when the largest force is below ``fmax`` eV/Å or
    after ``max_steps`` energy evaluations. tblite runs on one OpenMP thread, so the
    result is reproducible bit for bit. Good enough for starting geometries of
    sampling, not a replacement for a quasi-Newton optimiser.

    Args:
        atoms: starting structure (Å); not modified.
        fmax: force convergence threshold in eV/Å.
        max_steps: maximum number of single points.
        max_move: largest displacement of an atom in one step, Å.
        charge: total charge in e; defaults to ``atoms.info.get("charge", 0.0)``.
        method: tblite parametrisation (see :func:`label`).

    Returns:
        a relaxed copy (``REF_`` labels removed, ``info["charge"]`` set).
    """
    _check_atoms(atoms)
    _check_settings(method, 1.0, 250)
    if atoms.pbc.any():
        raise ValueError("relax supports non-periodic atoms only")
    for name, value in (("fmax", fmax), ("max_move", max_move)):
        if not (_is_real(value) and np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not (_is_int(max_steps) and max_steps >= 1):
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    q = _total_charge(atoms, charge)
    calc = _make_calculator(atoms, q, method, 1.0, 250)
    res = None

    def evaluate(pos):
        nonlocal res
        calc.update(positions=pos / Bohr)
        res = calc.singlepoint(res)
        gradient = np.asarray(res.get("gradient"), dtype=float) * (Hartree / Bohr)
        return float(res.get("energy")) * Hartree, -gradient

    pos = np.array(atoms.positions, dtype=float)
    with _single_openmp_thread():
        energy, forces = evaluate(pos)
        scale = 0.01  # Å^2/eV
        for _ in range(int(max_steps) - 1):
            if np.abs(forces).max() < fmax:
                break
            step = scale * forces
            longest = np.linalg.norm(step, axis=1).max()
            if longest > max_move:
                step *= max_move / longest
            trial_energy, trial_forces = evaluate(pos + step)
            if trial_energy < energy:
                pos, energy, forces = pos + step, trial_energy, trial_forces
                scale *= 1.2
            else:
                scale *= 0.5
    out = _strip_labels(atoms)
    out.positions = pos
    out.info["charge"] = q
    return out
