"""Physical constants and unit conversions used by jaxlr.

jaxlr works in Å, e, eV: forces in eV/Å, stress in eV/Å^3, fields in V/Å, dipoles
in e·Å, polarization in e/Å^2. Constants are CODATA 2018.

``COULOMB`` is e^2/(4 pi eps0) in eV·Å. ASE's ``units.Hartree * units.Bohr`` is the
CODATA 2014 value and is 8.8e-9 relative lower: compare with rtol >= 1e-8.
"""

__all__ = [
    "COULOMB",
    "BOHR",
    "HARTREE",
    "DEBYE",
    "EPSILON0",
    "ANGSTROM_TO_BOHR",
    "BOHR_TO_ANGSTROM",
    "HARTREE_TO_EV",
    "EV_TO_HARTREE",
    "DEBYE_TO_EANGSTROM",
    "EANGSTROM_TO_DEBYE",
    "FIELD_AU_TO_V_PER_ANGSTROM",
    "V_PER_ANGSTROM_TO_FIELD_AU",
]

#: e^2 / (4 pi eps0) in eV·Å (CODATA 2018).
COULOMB = 14.399645478425668
#: Bohr radius in Å (CODATA 2018).
BOHR = 0.529177210903
#: Hartree energy in eV (CODATA 2018).
HARTREE = 27.211386245988
#: One debye in e·Å (1e-21 / c C·m divided by e and 1 Å).
DEBYE = 1e-11 / (299792458.0 * 1.602176634e-19)
#: Vacuum permittivity in e^2 / (eV·Å), so that COULOMB = 1 / (4 pi EPSILON0).
EPSILON0 = 1.0 / (4.0 * 3.141592653589793 * COULOMB)

ANGSTROM_TO_BOHR = 1.0 / BOHR
BOHR_TO_ANGSTROM = BOHR
HARTREE_TO_EV = HARTREE
EV_TO_HARTREE = 1.0 / HARTREE
DEBYE_TO_EANGSTROM = DEBYE
EANGSTROM_TO_DEBYE = 1.0 / DEBYE
#: One atomic unit of electric field (Hartree / (e Bohr)) in V/Å.
FIELD_AU_TO_V_PER_ANGSTROM = HARTREE / BOHR
V_PER_ANGSTROM_TO_FIELD_AU = BOHR / HARTREE
