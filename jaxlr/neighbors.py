"""Exact neighbour pairs for molecules, slabs and any triclinic cell.

A pair list is the pytree :class:`Pairs` ``(i, j, shifts, mask)`` of fixed capacity.
``shifts`` are integer cell images and the pair vector is rebuilt inside the graph,
``r_ij = R[j] - R[i] + shifts @ cell`` (:func:`pair_vectors`), so gradients reach
positions and cell. Pairs are exact for any cutoff, longer than the cell included
(several images of one atom, and an atom with its own images).

Two builders share one cell-list algorithm, O(N) for a fixed density:

* :func:`neighbor_pairs` runs on the host (numpy) for data preparation and returns a
  compact list, optionally padded to a capacity (an overflow raises).
* :func:`neighbor_list` prepares, on the host, a jit builder of fixed capacity with a
  skin for MD: ``nl.build(positions, cell)`` and ``nl.update(state, positions, cell)``
  are pure and report capacity overflow in a flag, never truncating silently.

Half lists hold each unordered pair once: atom ``i`` owns the pairs found in the
lexicographically forward half of the neighbouring bins, and inside its own bin
those with ``(i < j) == (i + j even)``. Every atom so owns about half of its
neighbours, which keeps the per-atom capacity of the jit builder balanced. Which
orientation of a pair is kept is an implementation detail: compare half lists as
unordered sets.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr.cell import heights as cell_heights
from jaxlr.cell import host_heights, validate_cell, validate_positions

__all__ = [
    "Pairs",
    "pair_vectors",
    "neighbor_pairs",
    "CellListConfig",
    "NeighborList",
    "NeighborListFns",
    "neighbor_list",
    "all_pairs",
]


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["i", "j", "shifts", "mask"],
    meta_fields=["cutoff", "half"],
)
@dataclasses.dataclass(frozen=True)
class Pairs:
    """A fixed-capacity pair list.

    Attributes:
      i, j: (P,) int32 atom indices; padded slots have ``i == j`` and ``mask`` False.
      shifts: (P, 3) int32 cell images of ``j``.
      mask: (P,) bool, True for real pairs.
      cutoff: the cutoff (Å) the list was built for (static).
      half: True if each unordered pair appears once (static).
    """

    i: jax.Array
    j: jax.Array
    shifts: jax.Array
    mask: jax.Array
    cutoff: float
    half: bool

    @property
    def capacity(self) -> int:
        return self.i.shape[0]

    @property
    def count(self):
        """Number of real pairs."""
        return jnp.sum(self.mask)


def pair_vectors(positions, pairs: Pairs, cell=None):
    """(P, 3) pair vectors ``R[j] - R[i] + shifts @ cell`` in Å (zero-safe for padding)."""
    r = positions[pairs.j] - positions[pairs.i]
    if cell is not None:
        r = r + pairs.shifts.astype(cell.dtype) @ cell
    return r


def _same_bin_half(i, j):
    """Half-list rule inside one bin: keep (i, j) iff (i < j) == (i + j even)."""
    return (i < j) == ((i + j) % 2 == 0)


def _offsets(n_search, half):
    """Bin offsets to search; a half list takes the lexicographically forward half."""
    d = np.array(list(itertools.product(*[range(-k, k + 1) for k in n_search])), np.int64)
    if half:
        d = d[[tuple(x) >= (0, 0, 0) for x in d]]
    return d


# --------------------------------------------------------------------------- grid


@dataclasses.dataclass(frozen=True)
class CellListConfig:
    """Static description of a cell-list grid and the capacities of a jit builder.

    Attributes:
      cutoff: pair cutoff in Å (the interaction cutoff plus the skin).
      pbc: periodicity per axis.
      n_bins: bins per axis.
      n_search: bins searched on each side per axis.
      bin_capacity: atoms per bin (jit builder).
      neighbor_capacity: pairs per atom during the build (jit builder).
      pair_capacity: slots of the returned flat list (jit builder).
      half: half or full list.
      periodic_cell: False for a molecule (``cell=None``).
    """

    cutoff: float
    pbc: tuple[bool, bool, bool]
    n_bins: tuple[int, int, int]
    n_search: tuple[int, int, int]
    bin_capacity: int = 0
    neighbor_capacity: int = 0
    pair_capacity: int = 0
    half: bool = True
    periodic_cell: bool = True

    @property
    def offsets(self) -> np.ndarray:
        return _offsets(self.n_search, self.half).astype(np.int32)


def _frame(positions, cell, pbc):
    """Fractional coordinates, lattice heights and the matrix to Cartesian."""
    if cell is None:
        return positions, np.ones(3), np.eye(3)
    inv = np.linalg.inv(cell)
    s = positions @ inv
    return s, host_heights(cell), cell


def _grid(positions, cell, pbc, cutoff, bin_size=None):
    """Choose bins per axis (bins of about ``bin_size``) and the search range."""
    s, heights, _ = _frame(positions, cell, pbc)
    bin_size = cutoff if bin_size is None else bin_size
    n_bins, n_search = [], []
    for a in range(3):
        if pbc[a]:
            length = heights[a]
        else:
            length = (s[:, a].max() - s[:, a].min()) * heights[a] if len(s) else 0.0
        n = max(1, int(length // bin_size))
        if not pbc[a]:
            n = min(n, 1 << 10)
        d = max(1, math.ceil(cutoff * n / length - 1e-12)) if pbc[a] else 1
        if not pbc[a]:
            d = max(1, math.ceil(cutoff / max(length / n, bin_size) - 1e-12))
        n_bins.append(n)
        n_search.append(d)
    return tuple(n_bins), tuple(n_search)


def _bins_numpy(positions, cell, pbc, cutoff, n_bins, n_search):
    s, heights, _ = _frame(positions, cell, pbc)
    pbc_arr = np.asarray(pbc)
    offset = np.where(pbc_arr, np.floor(s), 0.0)
    sw = s - offset
    b = np.zeros_like(sw, dtype=np.int64)
    for a in range(3):
        n = n_bins[a]
        if pbc[a]:
            b[:, a] = np.clip(np.floor(sw[:, a] * n), 0, n - 1)
        else:
            lo = sw[:, a].min() if len(sw) else 0.0
            width = max(
                np.ptp(sw[:, a]) / n if len(sw) else 0.0, cutoff / (n_search[a] * heights[a])
            )
            b[:, a] = np.clip(np.floor((sw[:, a] - lo) / width), 0, n - 1)
    return sw, offset.astype(np.int64), b


def neighbor_pairs(
    positions,
    cutoff,
    cell=None,
    pbc=None,
    *,
    half=True,
    capacity=None,
    bin_size=None,
    backend="auto",
) -> Pairs:
    """All pairs closer than ``cutoff``, built on the host with cell lists.

    Args:
      positions: (N, 3) positions in Å (need not be wrapped).
      cutoff: cutoff in Å; any value, longer than the cell included.
      cell: (3, 3) lattice vectors as rows in Å, or None for a molecule.
      pbc: periodic axes (3 bools); default all True with a cell.
      half: keep each unordered pair once.
      capacity: pad the list to this many slots; None for the exact count.
      bin_size: cell-list bin size in Å for the numpy search (default: cutoff / 2).
      backend: "numpy" (jaxlr's cell lists), "vesin" (C++, if installed; periodic or
        slab cells), or "auto" (vesin when installed and a cell is given).

    Returns:
      :class:`Pairs` as numpy-backed jax arrays, sorted by ``(i, j)``.

    Raises:
      ValueError: bad positions, cell, cutoff, or more pairs than ``capacity``.
    """
    positions = validate_positions(positions)
    cell, pbc = validate_cell(cell, pbc)
    if not (np.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"cutoff must be a positive number, got {cutoff}")
    i, j, S = _host_pairs(positions, float(cutoff), cell, pbc, half, bin_size, backend)
    n = len(i)
    if capacity is None:
        capacity = n
    if n > capacity:
        raise ValueError(
            f"capacity overflow: {n} pairs within cutoff {cutoff} but capacity={capacity}"
        )
    pad = capacity - n
    mask = np.concatenate([np.ones(n, bool), np.zeros(pad, bool)])
    i = np.concatenate([i, np.zeros(pad, np.int32)])
    j = np.concatenate([j, np.zeros(pad, np.int32)])
    S = np.concatenate([S, np.zeros((pad, 3), np.int32)])
    return Pairs(
        jnp.asarray(i), jnp.asarray(j), jnp.asarray(S), jnp.asarray(mask), float(cutoff), bool(half)
    )


class _HalfRule:
    """Which oriented pairs a half list keeps: the jit builder's rule on its grid.

    The bin offset d of a pair (forward if lexicographically > 0) is packed into one
    integer, D = A[j] - A[i] + S . c, linear in per-atom terms, so the rule costs two
    gathers and a small product per pair."""

    def __init__(self, positions, cell, pbc, cutoff):
        n_bins, n_search = _grid(positions, cell, pbc, cutoff)
        _, offset, b = _bins_numpy(positions, cell, pbc, cutoff, n_bins, n_search)
        nb = np.asarray(n_bins, np.int64)
        reach = int(max(max(n_search) + 2, nb.max()))
        width = 2 * reach + 1
        place = np.array([width * width, width, 1], np.int64)
        self.c = np.where(np.asarray(pbc), nb, 0) * place
        self.a = b @ place + offset @ self.c

    def __call__(self, i, j, S):
        d = self.a[j] - self.a[i] + S @ self.c
        return (d > 0) | ((d == 0) & _same_bin_half(i, j))


def _host_chunks(positions, cutoff, cell, pbc, half, bin_size=None, centers=None):
    """Yield ``(i, j, shifts)`` chunks of all pairs within ``cutoff`` (one per bin
    offset): a full search over fine bins (default cutoff / 2), then the half rule.
    ``centers`` restricts ``i`` to those atoms."""
    n_atoms = len(positions)
    if n_atoms == 0:
        return
    bin_size = 0.5 * cutoff if bin_size is None else bin_size
    n_bins, n_search = _grid(positions, cell, pbc, cutoff, bin_size)
    sw, offset, b = _bins_numpy(positions, cell, pbc, cutoff, n_bins, n_search)
    _, _, to_cart = _frame(positions, cell, pbc)
    rule = _HalfRule(positions, cell, pbc, cutoff) if half else None
    w = sw @ to_cart
    nb = np.asarray(n_bins)
    flat = (b[:, 0] * nb[1] + b[:, 1]) * nb[2] + b[:, 2]
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat, minlength=int(np.prod(nb)))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    atoms = np.arange(n_atoms) if centers is None else np.asarray(centers)
    b_c = b[atoms]
    cutoff2 = cutoff * cutoff
    pbc_arr = np.asarray(pbc)
    for d in _offsets(n_search, False):
        t = b_c + d
        shift = np.where(pbc_arr, np.floor_divide(t, nb), 0)
        t = np.where(pbc_arr, t - shift * nb, t)
        ok = np.all((t >= 0) & (t < nb), axis=1)
        tf = (t[:, 0] * nb[1] + t[:, 1]) * nb[2] + t[:, 2]
        cnt = np.where(ok, counts[np.where(ok, tf, 0)], 0)
        total = int(cnt.sum())
        if total == 0:
            continue
        loc = np.repeat(np.arange(len(atoms)), cnt)
        ii = atoms[loc]
        first = np.repeat(np.cumsum(cnt) - cnt, cnt)
        jj = order[starts[tf[loc]] + np.arange(total) - first]
        origin = w[atoms] - shift.astype(np.float64) @ to_cart  # R_i minus the image shift
        rij = w[jj] - origin[loc]
        keep = np.einsum("pk,pk->p", rij, rij) < cutoff2
        if not d.any():
            keep &= ii != jj
        ii, jj, loc = ii[keep], jj[keep], loc[keep]
        # shifts for the unwrapped input positions: R_j - R_i + S' cell
        sh = shift[loc] + offset[ii] - offset[jj]
        if rule is not None:
            k = rule(ii, jj, sh)
            ii, jj, sh = ii[k], jj[k], sh[k]
        yield ii, jj, sh


def _vesin_chunks(positions, cutoff, cell, pbc, half):
    """The same pairs from vesin (C++), when it is installed: one chunk."""
    import vesin

    positions = np.asarray(positions, np.float64)
    cell = np.asarray(cell, np.float64)  # vesin wants one dtype for both
    s = positions @ np.linalg.inv(cell)
    offset = np.where(np.asarray(pbc), np.floor(s), 0.0).astype(np.int64)
    wrapped = (s - offset) @ cell
    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, S = nl.compute(wrapped, cell, list(pbc), quantities="ijS")
    i, j = i.astype(np.int64), j.astype(np.int64)
    S = S.astype(np.int64) + offset[i] - offset[j]
    if half:
        k = _HalfRule(positions, cell, pbc, cutoff)(i, j, S)
        i, j, S = i[k], j[k], S[k]
    yield i, j, S


def _use_vesin(cell, backend):
    if backend not in ("auto", "numpy", "vesin"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'vesin', got {backend!r}")
    if backend == "numpy" or cell is None:
        return False
    try:
        import vesin  # noqa: F401
    except ImportError:
        if backend == "vesin":
            raise
        return False
    return True


def _host_pairs(positions, cutoff, cell, pbc, half, bin_size=None, backend="auto"):
    """Sorted ``(i, j, shifts)`` numpy arrays of all pairs within ``cutoff``."""
    if _use_vesin(cell, backend) and bin_size is None:
        chunks = list(_vesin_chunks(positions, cutoff, cell, pbc, half))
    else:
        chunks = list(_host_chunks(positions, cutoff, cell, pbc, half, bin_size))
    if not chunks:
        return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros((0, 3), np.int32)
    i = np.concatenate([c[0] for c in chunks])
    j = np.concatenate([c[1] for c in chunks])
    S = np.concatenate([c[2] for c in chunks])
    # deterministic order: by (i, j), then the shifts (one stable sort on a packed key)
    n = len(positions)
    span = int(np.abs(S).max(initial=0)) + 1
    key = ((i * n + j) * (2 * span + 1) + S[:, 0] + span) * (2 * span + 1) + S[:, 1] + span
    key = key * (2 * span + 1) + S[:, 2] + span
    perm = np.argsort(key, kind="stable")
    return i[perm].astype(np.int32), j[perm].astype(np.int32), S[perm].astype(np.int32)


def _host_counts(positions, cutoff, cell, pbc, half):
    """Pairs per atom (as ``i``) without building the list."""
    count = np.zeros(len(positions), np.int64)
    if _use_vesin(cell, "auto"):
        chunks = _vesin_chunks(positions, cutoff, cell, pbc, half)
    else:
        chunks = _host_chunks(positions, cutoff, cell, pbc, half)
    for ii, _, _ in chunks:
        count += np.bincount(ii, minlength=len(positions))
    return count


def all_pairs(n_atoms: int, *, half=True) -> Pairs:
    """Every pair of a molecule (no cutoff, no images): what direct Coulomb uses."""
    if half:
        i, j = np.triu_indices(n_atoms, k=1)
    else:
        i, j = np.nonzero(~np.eye(n_atoms, dtype=bool))
    p = len(i)
    return Pairs(
        jnp.asarray(i, jnp.int32),
        jnp.asarray(j, jnp.int32),
        jnp.zeros((p, 3), jnp.int32),
        jnp.ones(p, bool),
        math.inf,
        half,
    )


# ---------------------------------------------------------------- jit builder


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["pairs", "reference_positions", "reference_cell", "overflow"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class NeighborList:
    """State of a jit neighbour list: pairs, where they were built, and overflow.

    ``overflow`` is a bool scalar: True when a capacity (atoms per bin, pairs per
    atom) was exceeded or the cell shrank below the bin grid; then ``pairs`` is
    incomplete and the host must call ``allocate`` again.
    """

    pairs: Pairs
    reference_positions: jax.Array
    reference_cell: jax.Array
    overflow: jax.Array


class NeighborListFns(NamedTuple):
    """Functions of a prepared jit neighbour list (see :func:`neighbor_list`)."""

    config: CellListConfig
    build: callable  # (positions, cell) -> (Pairs, overflow)
    allocate: callable  # (positions, cell) -> NeighborList, host; raises on overflow
    update: callable  # (state, positions, cell) -> NeighborList, pure


def _bin_capacity(positions, cell, pbc, cutoff, n_bins, n_search):
    _, _, b = _bins_numpy(positions, cell, pbc, cutoff, n_bins, n_search)
    nb = np.asarray(n_bins)
    flat = (b[:, 0] * nb[1] + b[:, 1]) * nb[2] + b[:, 2]
    return int(np.bincount(flat, minlength=int(np.prod(nb))).max()) if len(flat) else 1


def neighbor_list(
    positions, cutoff, cell=None, pbc=None, *, skin=0.0, half=True, capacity_multiplier=1.25
) -> NeighborListFns:
    """Prepare a jit-compatible neighbour list of fixed capacity (host, once).

    The grid and capacities are sized from this example (times
    ``capacity_multiplier``). ``build(positions, cell)`` is pure, O(N), and returns
    ``(Pairs, overflow)``; ``update(state, positions, cell)`` rebuilds only when an
    atom moved more than ``skin / 2`` or the cell changed. Pairs hold everything
    within ``cutoff + skin``; kernels apply their own cutoff.

    Args:
      positions: (N, 3) example positions in Å.
      cutoff: interaction cutoff in Å.
      cell: (3, 3) lattice vectors as rows, or None.
      pbc: periodic axes.
      skin: extra distance in Å for Verlet-style reuse.
      half: half or full lists.
      capacity_multiplier: head room (>= 1) on bin and per-atom capacities.

    Returns:
      :class:`NeighborListFns` ``(config, build, allocate, update)``.
    """
    positions = validate_positions(positions)
    cell_np, pbc = validate_cell(cell, pbc)
    if not (np.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"cutoff must be a positive number, got {cutoff}")
    if skin < 0:
        raise ValueError(f"skin must be >= 0, got {skin}")
    if capacity_multiplier < 1:
        raise ValueError(f"capacity_multiplier must be >= 1, got {capacity_multiplier}")
    r_list = float(cutoff + skin)
    config = _size_config(positions, cell_np, pbc, r_list, half, capacity_multiplier)

    def build(positions, cell=None):
        return _jit_build(positions, cell, config)

    def allocate(positions, cell=None):
        positions = jnp.asarray(positions)
        cell = None if cell is None else jnp.asarray(cell)
        pairs, overflow = _jit_build(positions, cell, config)
        if bool(overflow):
            raise ValueError(
                "capacity overflow: these positions exceed the capacities sized from the "
                "example; call neighbor_list(...) again with them"
            )
        ref_cell = jnp.zeros((3, 3), positions.dtype) if cell is None else cell
        return NeighborList(pairs, positions, ref_cell, overflow)

    def update(state: NeighborList, positions, cell=None):
        ref_cell = state.reference_cell
        cell_arr = jnp.zeros_like(ref_cell) if cell is None else cell
        disp = positions - state.reference_positions
        moved = jnp.max(jnp.sum(disp * disp, axis=-1)) > (0.5 * skin) ** 2
        stale = moved | jnp.any(cell_arr != ref_cell)

        def rebuild(_):
            pairs, overflow = _jit_build(positions, cell, config)
            return NeighborList(pairs, positions, cell_arr, overflow | state.overflow)

        def keep(_):
            return state

        return jax.lax.cond(stale, rebuild, keep, None)

    return NeighborListFns(config, build, allocate, update)


def _size_config(positions, cell, pbc, r_list, half, mult):
    n_bins, n_search = _grid(positions, cell, pbc, r_list)
    cap_bin = _bin_capacity(positions, cell, pbc, r_list, n_bins, n_search)
    counts = _host_counts(positions, r_list, cell, pbc, half)
    per_atom = int(counts.max()) if len(counts) else 0
    return CellListConfig(
        cutoff=r_list,
        pbc=pbc,
        n_bins=n_bins,
        n_search=n_search,
        bin_capacity=max(1, int(math.ceil(cap_bin * mult))),
        neighbor_capacity=max(1, int(math.ceil(per_atom * mult))),
        pair_capacity=max(1, int(math.ceil(counts.sum() * mult))),
        half=half,
        periodic_cell=cell is not None,
    )


def _jit_build(positions, cell, config: CellListConfig):
    """Cell-list pair build inside jit (see :func:`neighbor_list`)."""
    if config.periodic_cell != (cell is not None):
        need = "a (3, 3) cell" if config.periodic_cell else "cell=None"
        raise ValueError(f"this neighbour list was prepared for {need}; got cell={cell!r:.40}")
    n_atoms = positions.shape[0]
    dtype = positions.dtype
    pbc = np.asarray(config.pbc)
    nb = np.asarray(config.n_bins, np.int32)
    nsearch = np.asarray(config.n_search, np.int32)
    cap_bin = config.bin_capacity
    cap = config.neighbor_capacity
    rc = config.cutoff
    if cell is None:
        to_cart = jnp.eye(3, dtype=dtype)
        s = positions
        heights = jnp.ones(3, dtype)
    else:
        to_cart = cell
        s = positions @ jnp.linalg.inv(cell)
        heights = cell_heights(cell)
    s = jax.lax.stop_gradient(s)
    heights = jax.lax.stop_gradient(heights)
    pbc_row = pbc[None, :]
    offset = jnp.where(pbc_row, jnp.floor(s), 0.0)
    sw = s - offset
    lo = jnp.min(sw, axis=0)
    span = jnp.max(sw, axis=0) - lo
    nb_f = nb.astype(dtype)
    width_np = jnp.maximum(span / nb_f, rc / (nsearch.astype(dtype) * heights))
    coord = jnp.where(pbc_row, sw * nb_f[None, :], (sw - lo[None, :]) / width_np[None, :])
    b = jnp.clip(jnp.floor(coord).astype(jnp.int32), 0, nb[None, :] - 1)
    # a periodic grid is valid while every bin is at least cutoff / n_search high
    grid_ok = jnp.all(jnp.where(pbc, heights * nsearch.astype(dtype) >= rc * nb_f, True))
    flat = (b[:, 0] * nb[1] + b[:, 1]) * nb[2] + b[:, 2]
    n_flat = int(np.prod(nb))
    order = jnp.argsort(flat).astype(jnp.int32)
    counts = jnp.zeros(n_flat, jnp.int32).at[flat].add(1)
    starts = jnp.cumsum(counts) - counts
    bin_over = jnp.max(counts) > cap_bin
    slot = jnp.arange(cap_bin, dtype=jnp.int32)
    idx = starts[:, None] + slot[None, :]
    bin_atoms = jnp.where(
        slot[None, :] < counts[:, None], order[jnp.clip(idx, 0, n_atoms - 1)], n_atoms
    )  # (bins, cap_bin)
    w = sw @ to_cart
    w_pad = jnp.concatenate([w, jnp.zeros((1, 3), dtype)])
    bin_pos = w_pad[bin_atoms]  # (bins, cap_bin, 3): one gather, then block copies
    atoms = jnp.arange(n_atoms, dtype=jnp.int32)
    offsets = jnp.asarray(config.offsets)
    n_off = offsets.shape[0]
    rc2 = rc * rc

    def bin_shift(d):
        t = b + d[None, :]
        shift = jnp.where(pbc_row, jnp.floor_divide(t, nb[None, :]), 0)
        return t, shift

    def body(carry, xs):
        count, tab = carry
        d, d_index = xs
        t, shift = bin_shift(d)
        t = jnp.where(pbc_row, t - shift * nb[None, :], t)
        ok = jnp.all((t >= 0) & (t < nb[None, :]), axis=1)
        tf = jnp.where(ok, (t[:, 0] * nb[1] + t[:, 1]) * nb[2] + t[:, 2], 0)
        cand = jnp.where(ok[:, None], bin_atoms[tf], n_atoms)  # (N, cap_bin)
        origin = w - shift.astype(dtype) @ to_cart
        rij = bin_pos[tf] - origin[:, None, :]
        r2 = jnp.sum(rij * rij, axis=-1)
        valid = (cand < n_atoms) & (r2 < rc2)
        # the atom itself in its own bin (d == 0) is not a pair; in that bin a half
        # list keeps (i, j) iff (i < j) == (i + j even)
        same = jnp.all(d == 0)
        if config.half:
            drop = same & ~_same_bin_half(atoms[:, None], cand)
        else:
            drop = same & (cand == atoms[:, None])
        valid &= ~drop
        slot = count[:, None] + jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1
        slot = jnp.where(valid, slot, cap)  # out of range -> dropped
        rows = jnp.broadcast_to(atoms[:, None], cand.shape)
        tab = tab.at[rows, slot].set(cand * n_off + d_index, mode="drop")  # packed (j, d)
        count = count + jnp.sum(valid, axis=1, dtype=jnp.int32)
        return (count, tab), None

    init = (jnp.zeros(n_atoms, jnp.int32), jnp.zeros((n_atoms, cap), jnp.int32))
    xs = (offsets, jnp.arange(n_off, dtype=jnp.int32))
    (count, tab), _ = jax.lax.scan(body, init, xs)
    # compact the (N, K) table into a flat list of pair_capacity slots
    n_cap = config.pair_capacity
    total = jnp.sum(count)
    overflow = bin_over | (jnp.max(count) > cap) | ~grid_ok | (total > n_cap)
    first = jnp.cumsum(count) - count
    k = jnp.arange(cap, dtype=jnp.int32)
    dest = jnp.where(k[None, :] < count[:, None], first[:, None] + k[None, :], n_cap)
    rows = jnp.broadcast_to(atoms[:, None], (n_atoms, cap))
    fill = jnp.arange(n_cap, dtype=jnp.int32) % max(n_atoms, 1)
    i = fill.at[dest].set(rows, mode="drop")
    packed = (fill * n_off).at[dest].set(tab, mode="drop")
    mask = jnp.arange(n_cap) < total
    j = packed // n_off
    d = offsets[packed % n_off]
    # image shift: the bin wrap of b_i + d, plus the wrapping of both atoms
    t = b[i] + d
    wrap = jnp.where(pbc_row, jnp.floor_divide(t, nb[None, :]), 0)
    off_int = offset.astype(jnp.int32)
    shifts = jnp.where(mask[:, None], wrap + off_int[i] - off_int[j], 0)
    return Pairs(i, j, shifts, mask, rc, config.half), overflow
