"""Pure kernels: direct Coulomb, Ewald, particle-mesh Ewald and their tuning (no Flax)."""

from jaxlr.kernels.coulomb import coulomb_energy, coulomb_potential
from jaxlr.kernels.ewald import (
    EwaldConfig,
    EwaldFns,
    ewald_energy,
    ewald_fns,
    ewald_matrix,
    ewald_potential,
    real_space_energy,
    real_space_potential,
    reciprocal_energy,
    reciprocal_potential,
)
from jaxlr.kernels.pme import (
    PMEConfig,
    pme_energy,
    pme_potential,
    pme_reciprocal_energy,
    spread_charges,
)
from jaxlr.kernels.tuning import (
    ewald_error_estimate,
    fft_size,
    pme_error_estimate,
    tune_ewald,
    tune_pme,
)

__all__ = [
    "coulomb_energy",
    "coulomb_potential",
    "EwaldConfig",
    "EwaldFns",
    "ewald_energy",
    "ewald_fns",
    "ewald_potential",
    "ewald_matrix",
    "real_space_energy",
    "real_space_potential",
    "reciprocal_energy",
    "reciprocal_potential",
    "PMEConfig",
    "pme_energy",
    "pme_potential",
    "pme_reciprocal_energy",
    "spread_charges",
    "ewald_error_estimate",
    "pme_error_estimate",
    "fft_size",
    "tune_ewald",
    "tune_pme",
]
