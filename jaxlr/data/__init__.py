"""Datasets: extxyz io with ``REF_`` labels, padding into size buckets, splits.

``jaxlr.data.reference`` (the ``reference`` extra, tblite) generates GFN2-xTB labels;
``jaxlr.data.qm`` (the ``qm`` extra, pyscf) DFT labels with Wannier (Foster-Boys)
centres, ``REF_wannier_centres``.
"""

from jaxlr.data._batch import (
    Batch,
    Buckets,
    batches,
    bucket_sizes,
    kind,
    make_buckets,
    pad,
    pair_counts,
    split,
    unpad,
)
from jaxlr.data._io import LABELS, Frame, from_atoms, read, to_atoms, write

__all__ = [
    "Batch",
    "Buckets",
    "kind",
    "make_buckets",
    "pair_counts",
    "Frame",
    "LABELS",
    "batches",
    "bucket_sizes",
    "from_atoms",
    "pad",
    "read",
    "split",
    "to_atoms",
    "unpad",
    "write",
]
