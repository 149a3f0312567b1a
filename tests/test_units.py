import math

import numpy as np
from ase import units as ase_units

from jaxlr import units


def test_coulomb_constant_matches_codata_and_ase():
    # e^2 / (4 pi eps0) from SI CODATA 2018 constants, converted to eV·Å
    e = 1.602176634e-19
    eps0 = 8.8541878128e-12
    value = e / (4 * math.pi * eps0) * 1e10
    assert units.COULOMB == np.float64(14.399645478425668)
    assert abs(units.COULOMB / value - 1) < 1e-10
    # ASE uses CODATA 2014 (8.8e-9 relative lower)
    assert abs(units.COULOMB / (ase_units.Hartree * ase_units.Bohr) - 1) < 1e-8


def test_conversions_are_consistent():
    assert abs(units.HARTREE * units.BOHR / units.COULOMB - 1) < 1e-9
    assert units.ANGSTROM_TO_BOHR * units.BOHR_TO_ANGSTROM == 1.0
    assert abs(units.DEBYE / ase_units.Debye - 1) < 1e-8
    assert abs(units.FIELD_AU_TO_V_PER_ANGSTROM - 51.4220674763) < 1e-8
    assert abs(units.V_PER_ANGSTROM_TO_FIELD_AU * units.FIELD_AU_TO_V_PER_ANGSTROM - 1) < 1e-15
    assert abs(4 * math.pi * units.EPSILON0 * units.COULOMB - 1) < 1e-15
