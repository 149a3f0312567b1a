"""Models (flax.nnx): the short-range backbone and, on top, long-range models."""

from jaxlr.models._painn import PaiNN, cosine_cutoff, radial_basis

__all__ = ["PaiNN", "cosine_cutoff", "radial_basis"]
