"""jaxlr: long-range electrostatics for atomistic machine learning in JAX."""

from jaxlr import cell, induction, kernels, lode, neighbors, qeq, response, units
from jaxlr._api import (
    PreparedEnergy,
    electrostatic_energy,
    electrostatic_field,
    electrostatic_potential,
    energy_forces_stress,
    prepare_energy,
)
from jaxlr.units import COULOMB

__version__ = "0.1.0"

__all__ = [
    "COULOMB",
    "PreparedEnergy",
    "cell",
    "electrostatic_energy",
    "electrostatic_potential",
    "electrostatic_field",
    "energy_forces_stress",
    "induction",
    "kernels",
    "lode",
    "neighbors",
    "prepare_energy",
    "qeq",
    "response",
    "units",
]
