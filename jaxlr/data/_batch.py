"""Padding ragged structures into fixed-shape batches, size buckets, and splits.

A :class:`Batch` holds ``B`` structures padded to ``n_max`` atoms: padding atoms have
atomic number 0, zero labels, ``mask`` False, and sit at the origin; padding
structures (to fill the last batch) have ``weight`` 0. A few size buckets keep the
number of distinct shapes, hence of compilations, small.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxlr.data._io import Frame

__all__ = ["Batch", "pad", "unpad", "bucket_sizes", "batches", "split"]


class Batch(NamedTuple):
    """Fixed-shape batch (numpy on the host; a pytree of arrays for jit).

    Shapes: ``positions (B, n, 3)``, ``numbers (B, n)`` (0 = padding), ``mask (B, n)``,
    ``cell (B, 3, 3)`` (zeros for a molecule), ``pbc (B, 3)``, ``charge (B,)``,
    ``weight (B,)`` (0 for padding structures), labels ``energy (B,)``, ``forces (B,
    n, 3)``, ``stress (B, 3, 3)``, ``charges (B, n)``, ``dipole (B, 3)``, ``field (B,
    3)`` and their availability ``has_energy`` ... ``has_dipole`` (B,) (0 or 1).
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
    has_energy: np.ndarray
    has_forces: np.ndarray
    has_stress: np.ndarray
    has_charges: np.ndarray
    has_dipole: np.ndarray

    @property
    def n_atoms(self):
        return self.mask.sum(axis=1)


def pad(frames: list[Frame], n_max: int, batch_size: int | None = None) -> Batch:
    """Pad ``frames`` to ``n_max`` atoms each (and with empty structures to
    ``batch_size``)."""
    b = len(frames) if batch_size is None else batch_size
    if len(frames) > b:
        raise ValueError(f"{len(frames)} frames do not fit batch_size={b}")
    too_big = [f.n_atoms for f in frames if f.n_atoms > n_max]
    if too_big:
        raise ValueError(f"a frame has {max(too_big)} atoms, more than n_max={n_max}")
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
    }
    for name in ("energy", "forces", "stress", "charges", "dipole"):
        out["has_" + name] = np.zeros(b)
    for k, f in enumerate(frames):
        n = f.n_atoms
        out["positions"][k, :n] = f.positions
        out["numbers"][k, :n] = f.numbers
        out["mask"][k, :n] = True
        if f.cell is not None:
            out["cell"][k] = f.cell
        out["pbc"][k] = f.pbc
        out["charge"][k] = f.charge
        out["weight"][k] = 1.0
        if f.field is not None:
            out["field"][k] = f.field
        for name in ("energy", "forces", "stress", "charges", "dipole"):
            value = getattr(f, name)
            if value is None:
                continue
            out["has_" + name][k] = 1.0
            if name in ("forces", "charges"):
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
        for name in ("energy", "forces", "stress", "charges", "dipole"):
            if getattr(batch, "has_" + name)[k]:
                value = getattr(batch, name)[k]
                labels[name] = value[:n] if name in ("forces", "charges") else value
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


def batches(frames, batch_size, sizes=None, *, shuffle=False, seed=0):
    """Yield fixed-shape :class:`Batch` es: each frame goes to the smallest bucket
    that fits it; batches never mix buckets; the last batch of a bucket is filled
    with empty structures (weight 0). With ``shuffle``, the order within and across
    buckets is drawn from ``seed`` (reproducible)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if sizes is None:
        sizes = bucket_sizes([f.n_atoms for f in frames])
    sizes = tuple(sorted(sizes))
    groups = {s: [] for s in sizes}
    for i, f in enumerate(frames):
        fit = [s for s in sizes if s >= f.n_atoms]
        if not fit:
            raise ValueError(f"frame {i} has {f.n_atoms} atoms, more than the largest bucket")
        groups[fit[0]].append(i)
    rng = np.random.default_rng(seed)
    chunks = []
    for s in sizes:
        idx = np.asarray(groups[s])
        if shuffle:
            idx = rng.permutation(idx)
        chunks += [(s, idx[k : k + batch_size]) for k in range(0, len(idx), batch_size)]
    order = rng.permutation(len(chunks)) if shuffle else np.arange(len(chunks))
    for c in order:
        s, idx = chunks[c]
        yield pad([frames[i] for i in idx], s, batch_size)


def split(n, fractions=(0.8, 0.1, 0.1), seed=0):
    """Reproducible random split of ``range(n)`` into index arrays by ``fractions``."""
    f = np.asarray(fractions, np.float64)
    if np.any(f < 0) or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    perm = np.random.default_rng(seed).permutation(n)
    edges = np.round(np.cumsum(f) * n).astype(int)
    return tuple(np.sort(part) for part in np.split(perm, edges[:-1]))
