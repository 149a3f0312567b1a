"""Responses to an electric field: dipoles, polarization, Born charges, polarizability.

Conventions (DESIGN): positions Å, charges e, fields V/Å, dipoles e·Å, polarization
e/Å^2, Born charges e with ``Z[i, a, b] = d mu_a / d R_ib``, polarizability e·Å^2/V
with ``alpha[a, b] = d mu_a / d field_b``. Energies couple to a field ``E`` through
the electric enthalpy ``F(R, E) = U(R) - mu(R) . E`` (molecules) or ``U(R) - V P(R) . E``
(cells), so forces, dipole, Born charges and polarizability are all derivatives of one
function: ``mu = -dF/dE``, ``Z[i, a, b] = d F_ib / d E_a`` with ``F_i = -dF/dR_i``
(the Maxwell relation ``d F_ib / d E_a = d mu_a / d R_ib``), ``alpha = -d2F/dE2``.

Periodic cells and the branch of the polarization
-------------------------------------------------
For point charges ``q_j`` in a cell of volume ``V`` the polarization is
``P = (1/V) sum_j q_j r_j``, defined modulo the quantum ``(e/V) a_k`` (``a_k`` the
lattice vectors): moving an ion of charge ``+-1`` by a lattice vector changes it by
exactly one quantum. :func:`polarization` returns the branch whose fractional
components (``V P = sum_k f_k a_k``) are nearest those of ``reference`` (default
zero, i.e. ``f_k`` in ``[-1/2, 1/2)``); passing the previous value along a path makes
the branch continuous (:func:`polarization_path` does this for a whole trajectory).
The gradient does not see the branch (a lattice-vector shift is constant), so ``dP/dr_i
= q_i / V`` for fixed charges.

When charges depend on positions (latent, explicit and QEq models) the Born charge
``Z_i = q_i I + sum_j r_j (x) dq_j/dR_i`` has a charge-transfer term that depends on
which image of each atom ``j`` is used. jaxlr takes every atom at its image inside the
cell (fractional coordinates in ``[0, 1)``; :func:`anchored_positions`), which makes
the Born charges

- independent of the image in which any atom is given (the wrap is periodic),
- exact in the acoustic sum rule, ``sum_i Z_i = Q I`` to rounding, because each
  image shift is constant for all ``i`` and ``sum_i dq_j/dR_i = 0`` (translation
  invariance of each charge), and
- equal to ``q_i I`` plus the molecular charge-transfer term for a molecule in a box
  that does not cross the cell boundary.

Peers that replace ``r_j`` by a periodic function (``sin(k r)/k``) keep the image
independence but lose the exact sum rule; jaxlr keeps both. The price, stated: the
charge-transfer term jumps when an atom ``j`` crosses the cell boundary (by
``L (x) dq_j/dR_i``, ``L`` a lattice vector) - the polarization of a charge-transfer
model in a periodic cell is multivalued and this is the branch choice.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "dipole",
    "polarization",
    "polarization_quantum",
    "polarization_path",
    "nearest_branch",
    "anchored_positions",
    "born_charges",
    "acoustic_sum_rule_violation",
    "polarizability",
    "field_electronegativity",
    "model_dipole_fn",
    "output_dipole",
    "electric_enthalpy",
    "model_born_charges",
    "model_polarizability",
    "model_response",
]


def _cell(cell, dtype):
    c = jnp.asarray(cell, dtype)
    if c.shape != (3, 3):
        raise ValueError(f"cell must be a (3, 3) array of lattice rows (Å), got {c.shape}")
    return c


def _positions_charges(positions, charges):
    r = jnp.asarray(positions)
    if r.ndim != 2 or r.shape[-1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {r.shape}")
    q = jnp.asarray(charges, r.dtype)
    if q.shape != r.shape[:1]:
        raise ValueError(f"charges must have shape ({r.shape[0]},), got {q.shape}")
    return r, q


def dipole(positions, charges, cell=None, origin=None):
    """Dipole ``sum_i q_i (r_i - origin)`` in e·Å, shape (3,).

    ``origin`` defaults to the coordinate origin (the dipole of a charged molecule
    depends on it). With a ``cell`` the positions are used as given (the cell dipole
    ``V P`` on the branch of those images; see :func:`polarization` for a branch
    choice); the cell is only validated."""
    r, q = _positions_charges(positions, charges)
    if cell is not None:
        _cell(cell, r.dtype)
    if origin is not None:
        r = r - jnp.asarray(origin, r.dtype)
    return jnp.sum(q[:, None] * r, axis=0)


def polarization_quantum(cell):
    """(3, 3): row ``k`` is the polarization quantum ``a_k / V`` (e/Å^2) of lattice
    vector ``a_k`` for a unit charge."""
    c = _cell(cell, jnp.result_type(float))
    return c / jnp.abs(jnp.linalg.det(c))


def nearest_branch(p, cell, reference=None):
    """``p`` (e/Å^2, (..., 3)) moved by whole quanta to the branch nearest ``reference``
    (fractional components ``f`` of ``V p = f @ cell`` within 1/2 of the
    reference's; default reference zero). Differentiable: the shift is constant."""
    p = jnp.asarray(p)
    c = _cell(cell, p.dtype)
    volume = jnp.abs(jnp.linalg.det(c))
    inv = jnp.linalg.inv(c)
    f = volume * p @ inv
    f_ref = 0.0 if reference is None else volume * jnp.asarray(reference, p.dtype) @ inv
    shift = jax.lax.stop_gradient(jnp.round(f - f_ref))
    return (f - shift) @ c / volume


def polarization(positions, charges, cell, reference=None):
    """Polarization ``(1/V) sum_i q_i r_i`` (e/Å^2, (3,)) of a periodic cell, on the
    branch nearest ``reference`` (module docstring). Smooth in the positions; moving
    an ion of charge ``+-1`` by a lattice vector changes the unreduced value by one
    quantum, which the branch choice absorbs."""
    r, q = _positions_charges(positions, charges)
    c = _cell(cell, r.dtype)
    p = jnp.sum(q[:, None] * r, axis=0) / jnp.abs(jnp.linalg.det(c))
    return nearest_branch(p, c, reference)


def polarization_path(positions, charges, cell):
    """Polarization along a path of frames ((T, N, 3) positions, (N,) or (T, N)
    charges, (3, 3) or (T, 3, 3) cells), continuous: each frame's branch is the one
    nearest the previous frame's (the first on the branch nearest zero). Host numpy;
    frames must be close enough that P moves less than half a quantum between them."""
    r = np.asarray(positions, np.float64)
    if r.ndim != 3 or r.shape[-1] != 3:
        raise ValueError(f"positions must have shape (T, N, 3), got {r.shape}")
    q = np.broadcast_to(np.asarray(charges, np.float64), r.shape[:2])
    cells = np.broadcast_to(np.asarray(cell, np.float64), (len(r), 3, 3))
    out = np.zeros((len(r), 3))
    previous = None
    for t in range(len(r)):
        out[t] = np.asarray(polarization(r[t], q[t], cells[t], previous))
        previous = out[t]
    return out


def anchored_positions(positions, cell):
    """Positions whose VALUES are the images inside the cell (fractional coordinates
    in [0, 1)) and whose GRADIENTS are those of ``positions`` (the image shift is a
    stop-gradient constant). A dipole built from them gives image-independent Born
    charges with an exact sum rule (module docstring)."""
    r = jnp.asarray(positions)
    c = _cell(cell, r.dtype)
    frac = r @ jnp.linalg.inv(c)
    shift = jax.lax.stop_gradient(jnp.floor(frac)) @ c
    return r - shift


def born_charges(dipole_fn, positions, *args):
    """Born charges ``Z[i, a, b] = d mu_a / d R_ib`` (e, (N, 3, 3)) of
    ``dipole_fn(positions, *args) -> (3,)`` (e·Å; for a cell, ``V P``), by reverse-mode
    autodiff (three backward passes, whatever N)."""
    r = jnp.asarray(positions)
    jac = jax.jacrev(dipole_fn)(r, *args)  # (3, N, 3): [a, i, b]
    if jac.shape != (3,) + r.shape:
        raise ValueError(f"dipole_fn must return a (3,) dipole, got Jacobian shape {jac.shape}")
    return jnp.transpose(jac, (1, 0, 2))


def acoustic_sum_rule_violation(Z, total_charge=0.0):
    """``max |sum_i Z_i - Q I|`` (e) of Born charges ``Z`` (N, 3, 3) (or (B, N, 3, 3),
    then the maximum over the batch) for total charge ``Q`` (zero: neutral)."""
    z = jnp.asarray(Z)
    if z.ndim < 3 or z.shape[-2:] != (3, 3):
        raise ValueError(f"Z must have shape (N, 3, 3), got {z.shape}")
    q = jnp.asarray(total_charge, z.dtype)
    s = jnp.sum(z, axis=-3) - q[..., None, None] * jnp.eye(3, dtype=z.dtype)
    return float(jnp.max(jnp.abs(s)))


def field_electronegativity(electronegativity, positions, field, cell=None):
    """Electronegativities (eV/e) shifted by an external field (V/Å) for charge
    equilibration: ``chi_i - field . x_i``, the energy of a unit charge in the field's
    potential ``-field . r``. Molecules use the positions (about the origin: a
    charged molecule's energy depends on it); cells use :func:`anchored_positions`
    (the periodic polarization form, with its branch). Pass the result to
    ``jaxlr.qeq.solve`` so the charges polarize."""
    r = jnp.asarray(positions)
    e = jnp.asarray(field, r.dtype)
    if e.shape != (3,):
        raise ValueError(f"field must have shape (3,), got {e.shape}")
    x = r if cell is None else anchored_positions(r, cell)
    return jnp.asarray(electronegativity, r.dtype) - x @ e


def polarizability(dipole_of_field, field=None, *args):
    """``alpha[a, b] = d mu_a / d field_b`` (e·Å^2/V, (3, 3)) of
    ``dipole_of_field(field, *args) -> (3,)`` at ``field`` (V/Å, default zero)."""
    e = jnp.zeros(3) if field is None else jnp.asarray(field)
    if e.shape != (3,):
        raise ValueError(f"field must have shape (3,), got {e.shape}")
    return jax.jacfwd(dipole_of_field)(e, *args)


# ------------------------------------------------------------------ jaxlr models


def output_dipole(out, positions, mask=None, cell=None):
    """The dipole (3,) e·Å of a jaxlr model's outputs ``out`` at ``positions``:
    ``sum_i q_i x_i`` (``x`` the positions of a molecule, for a cell the anchored
    images, so that it is ``V P``) plus the atomic dipoles ``out["dipoles"]`` when the
    model predicts them (latent dipoles, Wannier centroids). ``mask`` (N,) drops
    padding atoms."""
    q = out["charges"]
    if mask is not None:
        q = jnp.where(mask, q, 0.0)
    x = positions if cell is None else anchored_positions(positions, cell)
    mu = jnp.sum(q[:, None] * x, axis=0)
    p = out.get("dipoles")
    if p is not None:
        if mask is not None:
            p = jnp.where(mask[:, None], p, 0.0)
        mu = mu + jnp.sum(p, axis=0)
    return mu


def model_dipole_fn(model, numbers, mask, pairs, cell, charge, electrostatics):
    """``fn(positions) -> (dipole (3,) e·Å, outputs)`` of a jaxlr charge model: the
    molecular dipole ``sum q_i r_i`` about the origin, or for a cell ``sum q_i
    anchored(r_i)`` = ``V P`` (module docstring). Padding atoms carry zero charge."""
    _require_charges(model)
    periodic = electrostatics.kind != "molecule"

    def fn(positions):
        out = model(positions, numbers, mask, pairs, cell, charge, electrostatics)
        return output_dipole(out, positions, mask, cell if periodic else None), out

    return fn


def _require_charges(model):
    if not getattr(model, "has_charges", False):
        raise ValueError(
            f"model {type(model).__name__} has no charges: dipoles, Born charges and "
            "field coupling need a charge model (explicit or latent)"
        )


def electric_enthalpy(model, numbers, mask, pairs, cell, charge, electrostatics):
    """``fn(positions, field) -> (F, outputs)``: the electric enthalpy ``U(R) - mu(R) .
    field`` (eV; field V/Å; for a cell ``mu = V P``) of a jaxlr charge model, with the
    dipole in ``outputs["dipole"]``. Its derivatives give everything: forces
    ``-dF/dR``, dipole ``-dF/dfield``, Born charges ``d(-dF/dR_ib)/d field_a``."""
    _require_charges(model)
    periodic = electrostatics.kind != "molecule"

    def fn(positions, field):
        if getattr(model, "couples_field", False):  # QEq: the field enters the charge equilibration
            out = model(positions, numbers, mask, pairs, cell, charge, electrostatics, field=field)
        else:
            out = model(positions, numbers, mask, pairs, cell, charge, electrostatics)
        mu = output_dipole(out, positions, mask, cell if periodic else None)
        out = dict(out, dipole=mu)
        if getattr(model, "couples_field", False):
            return out["energy"], out
        return out["energy"] - jnp.dot(mu, field), out

    return fn


def model_polarizability(
    model, positions, numbers, mask, pairs, cell, charge, electrostatics, field=None
):
    """Polarizability ``d mu / d field`` (e·Å^2/V, (3, 3)) of a charge model at fixed
    nuclei: nonzero only for models whose charges respond to the field (QEq)."""
    f = electric_enthalpy(model, numbers, mask, pairs, cell, charge, electrostatics)
    e = jnp.zeros(3, positions.dtype) if field is None else jnp.asarray(field, positions.dtype)
    return polarizability(lambda fld: f(positions, fld)[1]["dipole"], e)


def model_born_charges(model, positions, numbers, mask, pairs, cell, charge, electrostatics):
    """Born charges (N, 3, 3) of a jaxlr charge model at one structure (padding rows
    zero), from the Jacobian of :func:`model_dipole_fn`."""
    dip = model_dipole_fn(model, numbers, mask, pairs, cell, charge, electrostatics)
    z = born_charges(lambda r: dip(r)[0], positions)
    return jnp.where(mask[:, None, None], z, 0.0)


def model_response(model, positions, numbers, mask, pairs, cell, charge, electrostatics, field):
    """Energy, forces, dipole and Born charges of a charge model under ``field`` (V/Å),
    all from the electric enthalpy: ``{"enthalpy", "energy", "forces", "dipole",
    "born_charges", "charges"}``; Born charges as ``d forces / d field`` (the Maxwell
    route)."""
    f = electric_enthalpy(model, numbers, mask, pairs, cell, charge, electrostatics)

    def forces(field):
        (h, out), g = jax.value_and_grad(f, has_aux=True)(positions, field)
        frc = -jnp.where(mask[:, None], g, 0.0)
        return frc, (frc, h, out)

    field = jnp.asarray(field, positions.dtype)
    jac, (forces_value, h, out) = jax.jacfwd(forces, has_aux=True)(field)  # (N, 3b, 3a)
    return {
        "enthalpy": h,
        "energy": out["energy"],
        "forces": forces_value,
        "dipole": out["dipole"],
        "charges": out["charges"],
        "born_charges": jnp.swapaxes(jac, 1, 2),
    }
