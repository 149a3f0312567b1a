"""Self-consistent charges: the charge-equilibration model (4G-HDNNP style).

A network predicts per-atom electronegativities ``chi_i`` from local environments;
per-species hardness ``J_Z`` (eV/e^2) and Gaussian widths ``s_Z`` (Å) are learnable.
The charges minimise the QEq energy under the structure's total charge ``Q``::

    E_QEq(q) = sum_i (chi_i q_i + 1/2 J_i q_i^2) + 1/2 k q^T A(R) q,   sum_i q_i = Q

(``A`` the Gaussian-charge Coulomb matrix: all pairs for a molecule, Ewald for a 3D
cell; ``k = jaxlr.units.COULOMB``), solved densely by ``jaxlr.kernels.qeq.solve_dense``
with implicit differentiation (``lax.custom_linear_solve``), so forces, stress and
parameter gradients flow through the solve at the cost of one more solve. The energy
is ``E = E_QEq(q*) + sum_i E_short(s_i)``; with ``charge_aware=True`` the short-range
head also sees the charges, ``E_short(s_i, q_i*)`` (4G-HDNNP's charge-aware second
network).

Default (``charge_aware=False``): the energy is variational in the charges, so the
Hellmann-Feynman theorem holds, ``-dE/dfield`` is exactly the dipole ``sum q_i x_i``,
and the Maxwell relation (Born charges from forces under a field = from the dipole)
is exact. Charge-aware: the charges minimise only ``E_QEq``, so ``dE_short/dq``
adds to every derivative; forces, stress and field responses stay consistent
derivatives of the one enthalpy, but ``sum q_i x_i`` (what ``REF_dipole`` is fit to)
is no longer ``-dE/dfield``.

Charges are nonlocal: they depend on the total charge and on every atom, so a QEq
model tells Ag3+ from Ag3- where local models cannot.

Under an external field ``E`` (V/Å) the electronegativities shift by the field's
potential, ``chi_i - E . x_i`` (``jaxlr.response.field_electronegativity``: positions
for molecules, the anchored cell images for cells), so the charges polarize and the
energy is the electric enthalpy; the polarizability ``d mu / d E`` is its second
derivative (:func:`jaxlr.models.predict` with ``born=True`` gives Born charges, and
``jax.jacfwd`` of the dipole in the field the polarizability).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlr.kernels.coulomb import coulomb_potential
from jaxlr.kernels.ewald import ewald_matrix, ewald_potential
from jaxlr.kernels.qeq import coulomb_matrix, solve_dense, solve_matrix_free
from jaxlr.models._painn import _MLP
from jaxlr.models._potentials import MAX_NUMBER, ShortRange, constraint_rows
from jaxlr.units import COULOMB

__all__ = ["QEqModel"]


class QEqModel(ShortRange):
    """Charge equilibration with learned electronegativities (module docstring).

    Args: as :class:`jaxlr.models.ShortRange`, plus
      hardness: initial hardness J_Z of every species (eV/e^2), learnable (kept
        above ``0.1 * hardness`` by a softplus).
      sigma: reference Gaussian width (Å); each species' width is learnable in
        ``[0.5 sigma, 1.5 sigma]`` (``sigma_max = 1.5 sigma`` sets the pair cutoff).
      charge_aware: the short-range head also sees the charges (module docstring).
      solver: ``"dense"`` (the factorised (N, N) matrix; small structures) or
        ``"matrix_free"`` (projected preconditioned CG on the Coulomb potential
        mat-vec, O(N) memory; ``tol`` relative residual, ``max_iter``). The
        matrix-free solve takes ``guess=`` charges (the previous MD step's:
        ``jaxlr.md`` warm-starts it), which changes the iteration count, never the
        converged charges.
    """

    has_charges = True
    fits_charges = True
    couples_field = True  # the field enters the charge equilibration itself
    _direct_charges = False  # no charge head: charges come from the solve

    def __init__(
        self,
        *args,
        hardness=10.0,
        charge_aware=False,
        solver="dense",
        tol=1e-10,
        max_iter=500,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if solver not in ("dense", "matrix_free"):
            raise ValueError(f"solver must be 'dense' or 'matrix_free', got {solver!r}")
        if not (0 < tol < 1 and int(max_iter) >= 1):
            raise ValueError(f"need 0 < tol < 1 and max_iter >= 1, got {tol!r}, {max_iter!r}")
        self.hyper_items = self.hyper_items + (
            ("hardness", float(hardness)),
            ("charge_aware", bool(charge_aware)),
            ("solver", solver),
            ("tol", float(tol)),
            ("max_iter", int(max_iter)),
        )
        self.charge_aware = bool(charge_aware)
        self.solver, self.tol, self.max_iter = solver, float(tol), int(max_iter)
        if not hardness > 0:
            raise ValueError(f"hardness must be positive (eV/e^2), got {hardness!r}")
        rngs = nnx.Rngs(self.hyper["seed"] + 1)
        features, hidden = self.hyper["features"], self.hyper["hidden"]
        if self.charge_aware:  # the short-range head sees (features, charge)
            self.energy_head = _MLP((features + 1, hidden, 1), rngs=rngs)
        self.chi_head = _MLP((features, hidden, 1), rngs=rngs)
        self.species_chi = nnx.Param(jnp.zeros(MAX_NUMBER + 1))
        self.hardness_floor = 0.1 * float(hardness)
        start = float(hardness) - self.hardness_floor
        self.species_hardness = nnx.Param(
            jnp.full(MAX_NUMBER + 1, jnp.log(jnp.expm1(jnp.asarray(start))))
        )
        self.species_width = nnx.Param(jnp.zeros(MAX_NUMBER + 1))  # sigmoid(0) = 1/2
        self.sigma_max = 1.5 * self.sigma

    def widths(self, numbers):
        """Per-atom Gaussian widths (Å) in ``[0.5 sigma, 1.5 sigma]``."""
        return self.sigma * (0.5 + jax.nn.sigmoid(self.species_width[numbers]))

    def hardness(self, numbers):
        """Per-atom hardness (eV/e^2)."""
        return self.hardness_floor + jax.nn.softplus(self.species_hardness[numbers])

    def electronegativity(self, s, numbers):
        """Per-atom electronegativities (eV/e) from features ``s``."""
        return self.chi_head(s)[:, 0] + self.species_chi[numbers]

    def coulomb_matrix(self, positions, mask, pairs, cell, sig, electrostatics):
        """(N, N) Gaussian-charge Coulomb matrix (Gaussian units) of one padded
        structure; padding rows and columns are zero."""
        if electrostatics.kind == "molecule":
            a = coulomb_matrix(positions, sig)
        elif electrostatics.kind == "periodic":
            a = ewald_matrix(positions, cell, pairs, config=electrostatics.ewald, sigma=sig)
        else:
            raise ValueError(f"unknown electrostatics kind {electrostatics.kind!r}")
        both = mask[:, None] & mask[None, :]
        return jnp.where(both, a, 0.0)

    def potential_fn(self, positions, mask, pairs, cell, sig, electrostatics):
        """``v -> A v`` (Gaussian units) over the real atoms (padding rows zero)."""

        def phi(v):
            v = jnp.where(mask, v, 0.0)
            if electrostatics.kind == "molecule":
                out = coulomb_potential(positions, v, sigma=sig, prefactor=1.0)
            else:
                out = ewald_potential(
                    positions,
                    v,
                    cell,
                    pairs,
                    config=electrostatics.ewald,
                    sigma=sig,
                    prefactor=1.0,
                )
            return jnp.where(mask, out, 0.0)

        return phi

    def equilibrate(
        self,
        positions,
        numbers,
        mask,
        pairs,
        cell,
        charge,
        electrostatics,
        s,
        field=None,
        guess=None,
    ):
        """``(q, chi, J, A)``: charges (N,) from the constrained QEq solve, with the
        electronegativities (shifted by ``field`` when given), hardness and the
        Coulomb matrix (dense solver) or its mat-vec (matrix-free; ``guess``
        warm-starts it)."""
        dtype = positions.dtype
        chi = self.electronegativity(s, numbers).astype(dtype)
        if field is not None:
            from jaxlr.response import field_electronegativity

            periodic = electrostatics.kind != "molecule"
            chi = field_electronegativity(chi, positions, field, cell if periodic else None)
        chi = jnp.where(mask, chi, 0.0)
        hard = self.hardness(numbers).astype(dtype)
        sig = self.widths(numbers).astype(dtype)
        constraint, totals = constraint_rows(charge, mask, dtype)
        if self.solver == "matrix_free":
            phi = self.potential_fn(positions, mask, pairs, cell, sig, electrostatics)
            hard_p = jnp.where(mask, hard, 1.0)

            def matvec(v):
                return hard_p * v + COULOMB * phi(v)

            diag = hard_p + jnp.where(mask, COULOMB / (jnp.sqrt(jnp.pi) * sig), 0.0)
            q, _, _, _ = solve_matrix_free(
                matvec,
                diag,
                chi,
                constraint,
                totals,
                tol=self.tol,
                max_iter=self.max_iter,
                x0=guess,
            )
            return jnp.where(mask, q, 0.0), chi, jnp.where(mask, hard, 0.0), phi
        a = self.coulomb_matrix(positions, mask, pairs, cell, sig, electrostatics)
        h = COULOMB * a + jnp.diag(jnp.where(mask, hard, 1.0))
        q, _, _ = solve_dense(h, chi, constraint, totals)
        q = jnp.where(mask, q, 0.0)
        return q, chi, jnp.where(mask, hard, 0.0), a

    def __call__(
        self, positions, numbers, mask, pairs, cell, charge, electrostatics, field=None, guess=None
    ):
        dtype = positions.dtype
        s = self.features(positions, numbers, mask, pairs, cell).astype(dtype)
        q, chi, hard, a = self.equilibrate(
            positions, numbers, mask, pairs, cell, charge, electrostatics, s, field, guess
        )
        aq = a(q) if callable(a) else a @ q
        e_qeq = jnp.sum(chi * q + 0.5 * hard * q * q) + 0.5 * COULOMB * (q @ aq)
        head_in = jnp.concatenate([s, q[:, None]], axis=1) if self.charge_aware else s
        atomic = self.energy_scale * self.energy_head(head_in)[:, 0] + self.species_energy[numbers]
        energy = jnp.sum(jnp.where(mask, atomic, 0.0)) + e_qeq
        return {"energy": energy, "charges": q}
