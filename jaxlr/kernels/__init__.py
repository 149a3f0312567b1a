"""Pure kernels: direct Coulomb, Ewald and their tuning (no Flax)."""

from jaxlr.kernels.coulomb import coulomb_energy, coulomb_potential
from jaxlr.kernels.ewald import (
    EwaldConfig,
    EwaldFns,
    ewald_energy,
    ewald_fns,
    ewald_potential,
    real_space_energy,
    real_space_potential,
    reciprocal_energy,
    reciprocal_potential,
)
from jaxlr.kernels.tuning import ewald_error_estimate, tune_ewald

__all__ = [
    "coulomb_energy",
    "coulomb_potential",
    "EwaldConfig",
    "EwaldFns",
    "ewald_energy",
    "ewald_fns",
    "ewald_potential",
    "real_space_energy",
    "real_space_potential",
    "reciprocal_energy",
    "reciprocal_potential",
    "ewald_error_estimate",
    "tune_ewald",
]
