"""Structures and reference labels: extxyz through ASE, with DESIGN's ``REF_`` names.

A :class:`Frame` is one structure on the host (numpy): positions, atomic numbers, an
optional cell with its ``pbc``, the total charge, and whichever reference labels it
carries (``REF_energy``, ``REF_forces``, ``REF_stress``, ``REF_charges``,
``REF_dipole``, ``REF_polarization``, ``REF_born_charges`` (per atom, 9 numbers,
row-major ``Z[i, a, b] = d mu_a / d R_ib``), ``REF_polarizability`` (9 numbers,
``alpha[a, b] = d mu_a / d field_b``), ``REF_wannier_centres`` (per atom, 3 numbers, Å:
the Wannier centroid carried by each atom, see :attr:`Frame.wannier_centres`); an
external field in ``info["field"]``). Periodic, slab and non-periodic structures mix
freely in one list.

Fragment constraints: ``info["fragment_charges"]`` (K,) e with a fragment index per
atom in ``arrays["fragment"]`` (0 to K - 1, every fragment non-empty, the totals
summing to the structure's charge) fix each fragment's total charge (an ion pair
NH4+ ... BF4- at any separation); charge models that honour them (explicit, latent,
QEq) constrain each fragment's charges to its total. Without ``fragment_charges`` a
``fragment`` array is only descriptive and is ignored.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

import numpy as np

__all__ = ["Frame", "read", "write", "from_atoms", "to_atoms", "LABELS"]

#: label name -> (extxyz key, where it lives, per-atom trailing shape or global shape)
LABELS = {
    "energy": ("REF_energy", "info", ()),
    "forces": ("REF_forces", "arrays", (3,)),
    "stress": ("REF_stress", "info", (3, 3)),
    "charges": ("REF_charges", "arrays", ()),
    "dipole": ("REF_dipole", "info", (3,)),
    "polarization": ("REF_polarization", "info", (3,)),
    "born_charges": ("REF_born_charges", "arrays", (3, 3)),
    "polarizability": ("REF_polarizability", "info", (3, 3)),
    "wannier_centres": ("REF_wannier_centres", "arrays", (3,)),
}


@dataclasses.dataclass
class Frame:
    """One structure and its labels (host arrays; labels None when absent).

    Attributes:
      positions: (N, 3) Å. numbers: (N,) atomic numbers.
      cell: (3, 3) lattice rows in Å, or None (non-periodic).
      pbc: (3,) bools (all False without a cell; (True, True, False) is a slab).
      charge: total charge (e).
      energy: eV. forces: (N, 3) eV/Å. stress: (3, 3) eV/Å^3 (ASE's sign).
      charges: (N,) e. dipole: (3,) e·Å. field: (3,) V/Å external field or None.
      polarization: (3,) e/Å^2 (periodic; compared modulo its quantum).
      born_charges: (N, 3, 3) e, ``Z[i, a, b] = d mu_a / d R_ib``.
      polarizability: (3, 3) e·Å^2/V, ``alpha[a, b] = d mu_a / d field_b``.
      wannier_centres: (N, 3) Å, one row per atom: for an oxygen the centroid of its
        valence localized (Wannier / Foster-Boys) orbitals, for a hydrogen its own
        position (it carries none); see :func:`jaxlr.data.qm.wannier_label`.
      fragments: (N,) fragment index of each atom, or None (one fragment: the
        structure). fragment_charges: (K,) e, each fragment's total charge (sums to
        ``charge``), or None.
    """

    positions: np.ndarray
    numbers: np.ndarray
    cell: np.ndarray | None = None
    pbc: tuple = (False, False, False)
    charge: float = 0.0
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    charges: np.ndarray | None = None
    dipole: np.ndarray | None = None
    field: np.ndarray | None = None
    polarization: np.ndarray | None = None
    born_charges: np.ndarray | None = None
    polarizability: np.ndarray | None = None
    wannier_centres: np.ndarray | None = None
    fragments: np.ndarray | None = None
    fragment_charges: np.ndarray | None = None

    def __post_init__(self):
        if (self.fragments is None) != (self.fragment_charges is None):
            raise ValueError("fragments and fragment_charges go together (both or neither)")
        if self.fragments is not None:
            self.fragments, self.fragment_charges = _check_fragments(
                self.fragments, self.fragment_charges, len(self.numbers), self.charge, "frame"
            )

    @property
    def n_fragments(self) -> int:
        """Number of charge-constrained fragments (1 without fragment charges)."""
        return 1 if self.fragment_charges is None else len(self.fragment_charges)

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def periodic(self) -> bool:
        return any(self.pbc)

    def labels(self):
        """Names of the reference labels present."""
        return [name for name in LABELS if getattr(self, name) is not None]


def _check_fragments(fragments, totals, n, charge, where):
    """Validated ``(fragments (N,) int64, totals (K,) float64)``."""
    totals = np.atleast_1d(np.asarray(totals, np.float64))
    raw = np.asarray(fragments)
    if raw.shape != (n,):
        raise ValueError(f"{where}: 'fragment' has shape {raw.shape}, expected ({n},)")
    frag = raw.astype(np.int64)
    if totals.ndim != 1 or len(totals) == 0 or not np.all(np.isfinite(totals)):
        raise ValueError(f"{where}: 'fragment_charges' must be a non-empty finite vector")
    if np.any(frag != raw) or frag.min() < 0 or frag.max() >= len(totals):
        raise ValueError(
            f"{where}: 'fragment' must hold integers 0 to {len(totals) - 1} "
            f"(one per entry of 'fragment_charges')"
        )
    empty = sorted(set(range(len(totals))) - set(frag.tolist()))
    if empty:
        raise ValueError(f"{where}: fragments {empty} of 'fragment_charges' have no atoms")
    if abs(totals.sum() - charge) > 1e-6:
        raise ValueError(
            f"{where}: 'fragment_charges' sum to {totals.sum():.6g} but info['charge'] is "
            f"{charge:.6g}"
        )
    return frag, totals


def _where(source, index):
    return f"{source}: frame {index}" if source else f"frame {index}"


def from_atoms(atoms, *, source=None, index=0) -> Frame:
    """:class:`Frame` from an ``ase.Atoms``, validated; errors name the file, the frame
    and the key (``source`` and ``index`` only label the messages)."""
    where = _where(source, index)
    n = len(atoms)
    if n == 0:
        raise ValueError(f"{where}: no atoms")
    positions = np.asarray(atoms.get_positions(), np.float64)
    if not np.all(np.isfinite(positions)):
        raise ValueError(f"{where}: positions have non-finite values")
    numbers = np.asarray(atoms.get_atomic_numbers(), np.int64)
    pbc = tuple(bool(x) for x in atoms.pbc)
    cell = None
    if any(pbc):
        cell = np.asarray(atoms.cell.array, np.float64)
        if abs(np.linalg.det(cell)) < 1e-9:
            raise ValueError(f"{where}: pbc={pbc} but the cell is singular")
        if not all(pbc) and pbc != (True, True, False):
            raise ValueError(
                f"{where}: pbc={pbc}; a slab must be periodic along the first two cell "
                "vectors, pbc=(True, True, False)"
            )
    values = {}
    for name, (key, place, shape) in LABELS.items():
        store = atoms.info if place == "info" else atoms.arrays
        if key not in store:
            continue
        value = np.asarray(store[key], np.float64)
        expected = (n,) + shape if place == "arrays" else shape
        if name == "stress" and value.shape in ((9,), (6,)):
            value = _stress_matrix(value)
        if name == "born_charges" and value.shape == (n, 9):
            value = value.reshape(n, 3, 3)
        if name == "polarizability" and value.shape == (9,):
            value = value.reshape(3, 3)
        if value.shape != expected:
            raise ValueError(f"{where}: key {key!r} has shape {value.shape}, expected {expected}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{where}: key {key!r} has non-finite values")
        values[name] = float(value) if shape == () and place == "info" else value
    for name in ("stress", "polarization"):
        if name in values and not any(pbc):
            raise ValueError(f"{where}: key 'REF_{name}' on a non-periodic structure")
    charge = atoms.info.get("charge", 0.0)
    try:
        charge = float(charge)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: info['charge'] must be a number, got {charge!r}") from None
    field = atoms.info.get("field")
    if field is not None:
        field = np.asarray(field, np.float64)
        if field.shape != (3,):
            raise ValueError(f"{where}: info['field'] has shape {field.shape}, expected (3,)")
    if "charges" in values and abs(values["charges"].sum() - charge) > 1e-6 * max(1, n):
        raise ValueError(
            f"{where}: REF_charges sum to {values['charges'].sum():.6g} but info['charge'] "
            f"is {charge:.6g}"
        )
    if "fragment_charges" in atoms.info:
        if "fragment" not in atoms.arrays:
            raise ValueError(f"{where}: info['fragment_charges'] without arrays['fragment']")
        if "charge" not in atoms.info:  # the fragments fix the total
            charge = float(np.sum(atoms.info["fragment_charges"]))
        values["fragments"], values["fragment_charges"] = _check_fragments(
            atoms.arrays["fragment"], atoms.info["fragment_charges"], n, charge, where
        )
    return Frame(positions, numbers, cell, pbc, charge, field=field, **values)


def _stress_matrix(value):
    if value.shape == (9,):
        return value.reshape(3, 3)
    xx, yy, zz, yz, xz, xy = value  # Voigt, ASE's order
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def to_atoms(frame: Frame):
    """``ase.Atoms`` with the labels under their ``REF_`` names."""
    import ase

    atoms = ase.Atoms(
        numbers=frame.numbers,
        positions=frame.positions,
        cell=np.zeros((3, 3)) if frame.cell is None else frame.cell,
        pbc=frame.pbc,
    )
    atoms.info["charge"] = float(frame.charge)
    if frame.field is not None:
        atoms.info["field"] = np.asarray(frame.field, np.float64)
    if frame.fragment_charges is not None:
        atoms.arrays["fragment"] = np.asarray(frame.fragments, np.int64)
        atoms.info["fragment_charges"] = np.asarray(frame.fragment_charges, np.float64)
    for name, (key, place, _) in LABELS.items():
        value = getattr(frame, name)
        if value is None:
            continue
        if place == "info":
            flat = name in ("stress", "polarizability")
            atoms.info[key] = np.asarray(value).reshape(-1) if flat else value
        else:
            value = np.asarray(value, np.float64)
            atoms.arrays[key] = value.reshape(len(value), -1) if value.ndim > 2 else value
    return atoms


def read(path, index=":") -> list[Frame]:
    """Frames of an extxyz file (``index`` as ASE's), validated."""
    import ase.io

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such dataset file: {path}")
    try:
        images = ase.io.read(path, index=index, format="extxyz")
    except Exception as err:  # ASE raises many types on malformed files
        raise ValueError(f"{path}: not a readable extxyz file ({err})") from err
    if not isinstance(images, list):
        images = [images]
    return [from_atoms(a, source=path, index=i) for i, a in enumerate(images)]


def write(path, frames) -> None:
    """Write frames to extxyz atomically (a temporary file renamed over ``path``).

    ASE writes per-atom columns (positions, forces, charges) with 8 decimals: the
    round trip keeps them to 5e-9 absolute."""
    import ase.io

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".extxyz", dir=folder)
    try:
        with os.fdopen(fd, "w") as handle:
            ase.io.write(handle, [to_atoms(f) for f in frames], format="extxyz")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
