"""Padding ragged structures into fixed-shape batches, size buckets, and splits.

A :class:`Batch` holds ``B`` structures padded to ``n_max`` atoms: padding atoms have
atomic number 0, zero labels, ``mask`` False, and sit at the origin; padding
structures (to fill the last batch) have ``weight`` 0. With a ``cutoff``, each
structure also carries its host-built FULL neighbour list (each ordered pair once,
integer cell shifts) padded to a fixed ``capacity``. A few size buckets keep the
number of distinct shapes, hence of compilations, small; batches never mix
molecules, 3D-periodic cells and slabs (models pick their electrostatics per kind).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxlr.data._io import Frame

__all__ = [
    "Batch",
    "Buckets",
    "kind",
    "pair_counts",
    "make_buckets",
    "pad",
    "unpad",
    "bucket_sizes",
    "batches",
    "split",
]

KINDS = ("molecule", "periodic", "slab")


def kind(frame: Frame) -> str:
    """``"molecule"``, ``"periodic"`` (3D) or ``"slab"``."""
    if not any(frame.pbc):
        return "molecule"
    return "periodic" if all(frame.pbc) else "slab"


def _frame_pairs(frame: Frame, cutoff: float):
    from jaxlr.neighbors import _host_pairs

    cell = frame.cell if frame.periodic else None
    return _host_pairs(frame.positions, float(cutoff), cell, tuple(frame.pbc), False)


def pair_counts(frames, cutoff) -> np.ndarray:
    """Number of ordered pairs within ``cutoff`` of each frame (host)."""
    return np.array([len(_frame_pairs(f, cutoff)[0]) for f in frames], np.int64)


_LABELS = (
    "energy",
    "forces",
    "stress",
    "charges",
    "dipole",
    "polarization",
    "born_charges",
    "wannier_centres",
)
_PER_ATOM = ("forces", "charges", "born_charges", "wannier_centres")


class Batch(NamedTuple):
    """Fixed-shape batch (numpy on the host; a pytree of arrays for jit).

    Shapes: ``positions (B, n, 3)``, ``numbers (B, n)`` (0 = padding), ``mask (B, n)``,
    ``cell (B, 3, 3)`` (zeros for a molecule), ``pbc (B, 3)``, ``charge (B,)``,
    ``weight (B,)`` (0 for padding structures), labels ``energy (B,)``, ``forces (B,
    n, 3)``, ``stress (B, 3, 3)``, ``charges (B, n)``, ``dipole (B, 3)``, ``field (B,
    3)``, ``polarization (B, 3)``, ``born_charges (B, n, 3, 3)``, ``wannier_centres (B,
    n, 3)`` (Å; zero on padding atoms) and their availability ``has_energy`` ...
    ``has_born_charges``, ``has_wannier_centres`` (B,) (0 or 1). Fragment constraints:
    ``fragment (B, n)`` (0 without fragments) and ``fragment_charge (B, K)`` (each
    fragment's total; ``[charge, 0, ...]`` for a structure without fragments; ``K = 1``
    when no frame has fragment charges).
    """

    positions: np.ndarray
    numbers: np.ndarray
    mask: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    charge: np.ndarray
    weight: np.ndarray
    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray
    charges: np.ndarray
    dipole: np.ndarray
    field: np.ndarray
    polarization: np.ndarray
    born_charges: np.ndarray
    wannier_centres: np.ndarray
    has_energy: np.ndarray
    has_forces: np.ndarray
    has_stress: np.ndarray
    has_charges: np.ndarray
    has_dipole: np.ndarray
    has_polarization: np.ndarray
    has_born_charges: np.ndarray
    has_wannier_centres: np.ndarray
    fragment: np.ndarray | None = None
    fragment_charge: np.ndarray | None = None
    pair_i: np.ndarray | None = None
    pair_j: np.ndarray | None = None
    pair_shifts: np.ndarray | None = None
    pair_mask: np.ndarray | None = None

    @property
    def n_atoms(self):
        return self.mask.sum(axis=1)

    @property
    def kind(self) -> str:
        """The structures' kind (a batch holds one): molecule, periodic or slab."""
        real = np.asarray(self.weight) > 0
        pbc = np.asarray(self.pbc)[real] if real.any() else np.asarray(self.pbc)[:1]
        if not pbc.any():
            return "molecule"
        return "periodic" if pbc.all() else "slab"


def pad(
    frames: list[Frame],
    n_max: int,
    batch_size: int | None = None,
    *,
    cutoff: float | None = None,
    capacity: int | None = None,
    n_fragments: int | None = None,
) -> Batch:
    """Pad ``frames`` to ``n_max`` atoms each (and with empty structures to
    ``batch_size``); with ``cutoff`` (Å), add full neighbour lists padded to
    ``capacity`` pairs per structure (default: the largest count among ``frames``;
    a frame with more pairs than ``capacity`` raises). ``n_fragments``: the width K
    of ``fragment_charge`` (default: the most fragments among ``frames``)."""
    b = len(frames) if batch_size is None else batch_size
    if len(frames) > b:
        raise ValueError(f"{len(frames)} frames do not fit batch_size={b}")
    too_big = [f.n_atoms for f in frames if f.n_atoms > n_max]
    if too_big:
        raise ValueError(f"a frame has {max(too_big)} atoms, more than n_max={n_max}")
    need_k = max([f.n_fragments for f in frames], default=1)
    n_k = need_k if n_fragments is None else int(n_fragments)
    if need_k > n_k:
        raise ValueError(f"a frame has {need_k} fragments, more than n_fragments={n_k}")
    out = {
        "positions": np.zeros((b, n_max, 3)),
        "numbers": np.zeros((b, n_max), np.int32),
        "mask": np.zeros((b, n_max), bool),
        "cell": np.zeros((b, 3, 3)),
        "pbc": np.zeros((b, 3), bool),
        "charge": np.zeros(b),
        "weight": np.zeros(b),
        "energy": np.zeros(b),
        "forces": np.zeros((b, n_max, 3)),
        "stress": np.zeros((b, 3, 3)),
        "charges": np.zeros((b, n_max)),
        "dipole": np.zeros((b, 3)),
        "field": np.zeros((b, 3)),
        "polarization": np.zeros((b, 3)),
        "born_charges": np.zeros((b, n_max, 3, 3)),
        "wannier_centres": np.zeros((b, n_max, 3)),
        "fragment": np.zeros((b, n_max), np.int32),
        "fragment_charge": np.zeros((b, n_k)),
    }
    for name in _LABELS:
        out["has_" + name] = np.zeros(b)
    if cutoff is not None:
        lists = [_frame_pairs(f, cutoff) for f in frames]
        need = max([len(p[0]) for p in lists], default=0)
        cap = need if capacity is None else int(capacity)
        if need > cap:
            raise ValueError(
                f"a frame has {need} pairs within cutoff={cutoff}, more than capacity={cap}"
            )
        out["pair_i"] = np.zeros((b, cap), np.int32)
        out["pair_j"] = np.zeros((b, cap), np.int32)
        out["pair_shifts"] = np.zeros((b, cap, 3), np.int32)
        out["pair_mask"] = np.zeros((b, cap), bool)
        for k, (i, j, shifts) in enumerate(lists):
            p = len(i)
            out["pair_i"][k, :p], out["pair_j"][k, :p] = i, j
            out["pair_shifts"][k, :p], out["pair_mask"][k, :p] = shifts, True
    if frames and frames[0].cell is not None:  # empty structures get a valid cell
        out["cell"][len(frames) :] = frames[0].cell
        out["pbc"][len(frames) :] = frames[0].pbc
    for k, f in enumerate(frames):
        n = f.n_atoms
        out["positions"][k, :n] = f.positions
        out["numbers"][k, :n] = f.numbers
        out["mask"][k, :n] = True
        if f.cell is not None:
            out["cell"][k] = f.cell
        out["pbc"][k] = f.pbc
        out["charge"][k] = f.charge
        if f.fragment_charges is None:
            out["fragment_charge"][k, 0] = f.charge
        else:
            out["fragment"][k, :n] = f.fragments
            out["fragment_charge"][k, : f.n_fragments] = f.fragment_charges
        out["weight"][k] = 1.0
        if f.field is not None:
            out["field"][k] = f.field
        for name in _LABELS:
            value = getattr(f, name)
            if value is None:
                continue
            out["has_" + name][k] = 1.0
            if name in _PER_ATOM:
                out[name][k, :n] = value
            else:
                out[name][k] = value
    return Batch(**out)


def unpad(batch: Batch) -> list[Frame]:
    """The real structures of a batch back as frames (labels where present)."""
    frames = []
    for k in range(len(batch.weight)):
        if batch.weight[k] == 0:
            continue
        n = int(batch.mask[k].sum())
        periodic = bool(batch.pbc[k].any())
        labels = {}
        frag = batch.fragment
        if frag is not None and batch.fragment_charge.shape[1] > 1:
            ids = frag[k, :n].astype(np.int64)
            if ids.max() > 0:  # a structure with fragment charges
                labels["fragments"] = ids
                labels["fragment_charges"] = batch.fragment_charge[k, : ids.max() + 1].copy()
        for name in _LABELS:
            if getattr(batch, "has_" + name)[k]:
                value = getattr(batch, name)[k]
                labels[name] = value[:n] if name in _PER_ATOM else value
                if name == "energy":
                    labels[name] = float(value)
        frames.append(
            Frame(
                batch.positions[k, :n].copy(),
                batch.numbers[k, :n].astype(np.int64),
                batch.cell[k].copy() if periodic else None,
                tuple(bool(x) for x in batch.pbc[k]),
                float(batch.charge[k]),
                field=batch.field[k].copy() if np.any(batch.field[k]) else None,
                **labels,
            )
        )
    return frames


def bucket_sizes(n_atoms, n_buckets=3, multiple=4):
    """Host: up to ``n_buckets`` padded sizes covering ``n_atoms`` (quantiles of the
    sizes, rounded up to a multiple of ``multiple``); the largest covers all."""
    n = np.asarray(n_atoms)
    if n.size == 0:
        raise ValueError("no structures to bucket")
    qs = np.quantile(n, np.linspace(0, 1, n_buckets + 1)[1:], method="higher")
    sizes = sorted({int(-(-q // multiple) * multiple) for q in qs})
    return tuple(sizes)


class Buckets(NamedTuple):
    """Static padding plan: atom counts ``sizes``, the neighbour ``cutoff`` (or None)
    and the pair ``capacities`` per ``(kind, size)``."""

    sizes: tuple
    cutoff: float | None = None
    capacities: dict | None = None

    def key(self, frame: Frame, index: int = 0):
        fit = [s for s in self.sizes if s >= frame.n_atoms]
        if not fit:
            raise ValueError(
                f"frame {index} has {frame.n_atoms} atoms, more than the largest bucket "
                f"({max(self.sizes)})"
            )
        return kind(frame), fit[0]


def make_buckets(frames, cutoff=None, n_buckets=3, multiple=4, pair_multiple=32) -> Buckets:
    """Host: sizes by :func:`bucket_sizes` and, with ``cutoff``, the pair capacity of
    each ``(kind, size)`` bucket (its largest count, rounded up to ``pair_multiple``)."""
    sizes = bucket_sizes([f.n_atoms for f in frames], n_buckets, multiple)
    if cutoff is None:
        return Buckets(sizes)
    plan = Buckets(sizes, float(cutoff), {})
    counts = pair_counts(frames, cutoff)
    caps = {}
    for i, f in enumerate(frames):
        key = plan.key(f, i)
        caps[key] = max(caps.get(key, 0), int(counts[i]))
    caps = {k: max(pair_multiple, -(-v // pair_multiple) * pair_multiple) for k, v in caps.items()}
    return Buckets(sizes, float(cutoff), caps)


def batches(frames, batch_size, sizes=None, *, shuffle=False, seed=0):
    """Yield fixed-shape :class:`Batch` es: each frame goes to the smallest bucket
    that fits it (``sizes`` a tuple of atom counts or a :class:`Buckets` plan, which
    also adds neighbour lists); batches never mix buckets nor kinds (molecule,
    periodic, slab); the last batch of a bucket is filled with empty structures
    (weight 0). With ``shuffle``, the order within and across buckets is drawn from
    ``seed`` (reproducible)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if sizes is None:
        sizes = bucket_sizes([f.n_atoms for f in frames])
    plan = sizes if isinstance(sizes, Buckets) else Buckets(tuple(sorted(sizes)))
    plan = plan._replace(sizes=tuple(sorted(plan.sizes)))
    groups = {}
    for i, f in enumerate(frames):
        groups.setdefault(plan.key(f, i), []).append(i)
    n_fragments = max([f.n_fragments for f in frames], default=1)
    rng = np.random.default_rng(seed)
    chunks = []
    for key in sorted(groups, key=lambda k: (KINDS.index(k[0]), k[1])):
        idx = np.asarray(groups[key])
        if shuffle:
            idx = rng.permutation(idx)
        chunks += [(key, idx[k : k + batch_size]) for k in range(0, len(idx), batch_size)]
    order = rng.permutation(len(chunks)) if shuffle else np.arange(len(chunks))
    for c in order:
        key, idx = chunks[c]
        capacity = None
        if plan.cutoff is not None:
            capacity = (plan.capacities or {}).get(key)
            if capacity is None:  # a bucket the plan never saw: size it from this batch
                capacity = int(pair_counts([frames[i] for i in idx], plan.cutoff).max())
        yield pad(
            [frames[i] for i in idx],
            key[1],
            batch_size,
            cutoff=plan.cutoff,
            capacity=capacity,
            n_fragments=n_fragments,
        )


def split(n, fractions=(0.8, 0.1, 0.1), seed=0):
    """Reproducible random split of ``range(n)`` into index arrays by ``fractions``."""
    f = np.asarray(fractions, np.float64)
    if np.any(f < 0) or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    perm = np.random.default_rng(seed).permutation(n)
    edges = np.round(np.cumsum(f) * n).astype(int)
    return tuple(np.sort(part) for part in np.split(perm, edges[:-1]))
