"""Flax (nnx) models composing jaxlr's kernels: the PaiNN backbone, a short-range
baseline and local charge models (explicit and latent charges)."""

from jaxlr.models._painn import PaiNN, cosine_cutoff, radial_basis
from jaxlr.models._potentials import (
    MODELS,
    Electrostatics,
    ExplicitCharges,
    LatentCharges,
    ShortRange,
    build,
    electrostatics_for,
    pair_cutoff,
    predict,
    pure,
)

__all__ = [
    "PaiNN",
    "cosine_cutoff",
    "radial_basis",
    "MODELS",
    "Electrostatics",
    "ExplicitCharges",
    "LatentCharges",
    "ShortRange",
    "build",
    "electrostatics_for",
    "pair_cutoff",
    "predict",
    "pure",
]
