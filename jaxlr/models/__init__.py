"""Flax (nnx) models composing jaxlr's kernels: the PaiNN backbone, a short-range
baseline, local charge models (explicit and latent charges) and the charge-
equilibration model (QEq, 4G-HDNNP style), long-range attention, Ewald message passing, LODE and the
Wannier-centroid model (DPLR style)."""

from jaxlr.models._attention import ChargeEmbedding, LongRangeAttention
from jaxlr.models._ewald_mp import EwaldMessagePassing
from jaxlr.models._lode import LODEModel
from jaxlr.models._painn import PaiNN, cosine_cutoff, radial_basis
from jaxlr.models._potentials import (
    MODELS,
    Electrostatics,
    ExplicitCharges,
    Fragments,
    LatentCharges,
    LatentDipoles,
    ShortRange,
    build,
    electrostatics_for,
    pair_cutoff,
    predict,
    pure,
)
from jaxlr.models._qeq import QEqModel
from jaxlr.models._wannier import WannierCentres, site_pairs

MODELS["qeq"] = QEqModel
MODELS["attention"] = LongRangeAttention
MODELS["ewald-mp"] = EwaldMessagePassing
MODELS["lode"] = LODEModel
MODELS["wannier"] = WannierCentres

__all__ = [
    "PaiNN",
    "cosine_cutoff",
    "radial_basis",
    "MODELS",
    "Electrostatics",
    "ExplicitCharges",
    "Fragments",
    "LatentCharges",
    "LatentDipoles",
    "ShortRange",
    "QEqModel",
    "LongRangeAttention",
    "ChargeEmbedding",
    "EwaldMessagePassing",
    "LODEModel",
    "WannierCentres",
    "site_pairs",
    "build",
    "electrostatics_for",
    "pair_cutoff",
    "predict",
    "pure",
]
