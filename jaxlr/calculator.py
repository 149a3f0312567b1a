"""ASE calculator for trained jaxlr models.

``Calculator(model)`` or ``Calculator.from_run("runs/fit-...")`` gives energy and
free_energy (eV), forces (eV/Å), stress (Voigt xx, yy, zz, yz, xz, xy in eV/Å^3, ASE's
sign; periodic cells), charges (e, charge models), dipole (e·Å; for a cell the cell
dipole ``V P``), polarization (e/Å^2, cells, branch nearest zero) and
born_effective_charges ((N, 3, 3) e, ``Z[i, a, b] = d mu_a / d R_ib``, computed only when
asked for) as float64 numpy arrays. The total charge comes from
``atoms.info["charge"]`` (default 0; with ``info["fragment_charges"]`` and
``arrays["fragment"]`` the charge models hold each fragment at its total, see
:mod:`jaxlr.data`); an external field (V/Å) from
``atoms.info["field"]`` or the calculator's ``field``: the energy is then the electric
enthalpy ``U - mu . field`` and the forces include the field force
(:mod:`jaxlr.response`).

Step after step it stays compiled: the neighbour list is built on the host with a
``skin`` and reused until an atom has moved more than ``skin / 2`` (or the cell, the
species or the atom count changed); atoms are padded to a multiple of
``atom_multiple`` and pairs to a multiple of ``pair_multiple``, so the jitted
function compiles once per (atoms, pairs) bucket, not once per step
(``compilations`` counts them). A changed cell keeps the Ewald k set unless the cell
outgrows it.
"""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator as _AseCalculator
from ase.calculators.calculator import all_changes

__all__ = ["Calculator"]


class Calculator(_AseCalculator):
    """ASE calculator of a jaxlr model (see the module docstring).

    Args:
      model: a :mod:`jaxlr.models` model (e.g. from ``jaxlr.train.load``).
      accuracy: relative Ewald accuracy of the charge models in cells.
      skin: neighbour-list skin (Å).
      atom_multiple, pair_multiple: padding granularity of the capacity buckets.
      species: atomic numbers the model was trained on (default: the model's
        ``trained_species`` when it has them); others raise.
      field: default external field (3,) V/Å (``atoms.info["field"]`` wins).
    """

    implemented_properties = [
        "energy",
        "free_energy",
        "forces",
        "stress",
        "charges",
        "dipole",
        "polarization",
        "born_effective_charges",
    ]

    def __init__(
        self,
        model,
        *,
        accuracy=1e-5,
        skin=0.5,
        atom_multiple=8,
        pair_multiple=256,
        species=None,
        field=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        import jax
        from flax import nnx

        from jaxlr.models import _potentials as pot

        if skin < 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        self.model = model
        self.accuracy = float(accuracy)
        self.skin = float(skin)
        self.atom_multiple = int(atom_multiple)
        self.pair_multiple = int(pair_multiple)
        known = species if species is not None else getattr(model, "trained_species", None)
        self.species = None if known is None else {int(z) for z in known}
        self.field = None if field is None else self._check_field(field, "field")
        graphdef, self._state = nnx.split(model)
        self.compilations = 0
        self._list = None  # (reference positions, cell, numbers, i, j, shifts)
        self._electrostatics = {}
        self._cutoff = float(model.cutoff)
        self._route_key = self._route_value = None

        def evaluate(
            state, positions, numbers, mask, i, j, shifts, pmask, cell, charge, field, el, born
        ):
            self.compilations += 1  # runs only while tracing: one per compilation
            from jaxlr.neighbors import Pairs

            m = nnx.merge(graphdef, state)
            pairs = Pairs(i, j, shifts, pmask, self._cutoff + self.skin, False)
            return pot.predict(m, positions, numbers, mask, pairs, cell, charge, el, field, born)

        self._evaluate = jax.jit(evaluate, static_argnums=(11, 12))

    @classmethod
    def from_run(cls, run, *, which="best", **kwargs):
        """A calculator of the model saved in a ``jaxlr fit`` run folder."""
        from jaxlr import train

        return cls(train.load(run, which=which), **kwargs)

    # ------------------------------------------------------------------ helpers

    def _check_field(self, field, name):
        value = np.asarray(field, np.float64)
        if value.shape != (3,) or not np.all(np.isfinite(value)):
            raise ValueError(f"{name} must be 3 finite numbers (V/Å), got {field!r}")
        if np.any(value) and not self.model.has_charges:
            raise ValueError(
                f"{name}: model {type(self.model).__name__} has no charges to couple to a "
                "field; use a charge model (explicit or latent)"
            )
        return value

    def _check(self, atoms):
        numbers = atoms.get_atomic_numbers()
        if len(numbers) == 0:
            raise ValueError("atoms: no atoms")
        if self.species is not None:
            bad = sorted(set(int(z) for z in numbers) - self.species)
            if bad:
                raise ValueError(
                    f"atoms: atomic number(s) {bad} the model was not trained on "
                    f"(trained: {sorted(self.species)})"
                )
        pbc = tuple(bool(p) for p in atoms.pbc)
        if any(pbc) and not all(pbc):
            if self.model.has_charges:
                raise ValueError(f"atoms: pbc={pbc}; the charge models take molecules or 3D cells")
        charge = atoms.info.get("charge", 0.0)
        try:
            charge = float(charge)
        except (TypeError, ValueError):
            raise ValueError(f"atoms.info['charge'] must be a number, got {charge!r}") from None
        if not np.isfinite(atoms.positions).all():
            raise ValueError("atoms: positions have non-finite values")
        return numbers, pbc, charge

    def _pairs(self, positions, numbers, cell, pbc):
        from jaxlr.neighbors import _host_pairs

        cut = self._cutoff + self.skin
        state = self._list
        if state is not None:
            ref, ref_cell, ref_numbers = state[:3]
            same = (
                ref.shape == positions.shape
                and np.array_equal(ref_numbers, numbers)
                and (ref_cell is None) == (cell is None)
                and (cell is None or np.array_equal(ref_cell, cell))
            )
            if same:
                moved = np.sqrt(np.max(np.sum((positions - ref) ** 2, axis=1)))
                if moved <= 0.5 * self.skin:
                    return state[3:]
        i, j, shifts = _host_pairs(positions, cut, cell, pbc, False)
        self._list = (
            positions.copy(),
            None if cell is None else cell.copy(),
            numbers.copy(),
            i,
            j,
            shifts,
        )
        return i, j, shifts

    def _route(self, frame, kind):
        key = (kind, None if frame.cell is None else frame.cell.tobytes())
        if key == self._route_key:  # same cell as last time: no host tuning
            return self._route_value
        value = self._new_route(frame, kind)
        self._route_key, self._route_value = key, value
        return value

    def _new_route(self, frame, kind):
        from jaxlr.models import _potentials as pot

        cutoff = pot.pair_cutoff(self.model, [frame], self.accuracy)
        if cutoff != self._cutoff:
            self._cutoff, self._list = cutoff, None
        if kind == "molecule" or not self.model.has_charges:
            return self.model.route([frame], kind, cutoff=cutoff, accuracy=self.accuracy)
        need = self.model.route([frame], kind, cutoff=cutoff, accuracy=self.accuracy)
        el = self._electrostatics.get(kind)
        # keep the k set while it still covers this cell (no recompilation)
        if el is not None and all(a >= b for a, b in zip(el.ewald.k_max, need.ewald.k_max)):
            return el
        el = need
        self._electrostatics[kind] = el
        return el

    # ------------------------------------------------------------------ ASE API

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        import jax.numpy as jnp

        from jaxlr.data import Frame, kind

        atoms = self.atoms
        numbers, pbc, charge = self._check(atoms)
        field = atoms.info.get("field")
        field = self.field if field is None else self._check_field(field, "atoms.info['field']")
        field = np.zeros(3) if field is None else field
        born = "born_effective_charges" in properties
        if born and not self.model.has_charges:
            raise ValueError("born_effective_charges need a charge model (explicit or latent)")
        positions = np.asarray(atoms.positions, np.float64)
        cell = np.asarray(atoms.cell.array, np.float64) if any(pbc) else None
        frame = Frame(positions, numbers, cell, pbc, charge)
        el = self._route(frame, kind(frame))
        total = jnp.asarray(charge, jnp.asarray(1.0).dtype)
        if "fragment_charges" in atoms.info:  # per-fragment charge constraints
            from jaxlr.data._io import _check_fragments
            from jaxlr.models import Fragments

            frag, totals = _check_fragments(
                atoms.arrays.get("fragment", np.zeros(0)),
                atoms.info["fragment_charges"],
                len(numbers),
                charge,
                "atoms",
            )
        i, j, shifts = self._pairs(positions, numbers, cell, pbc)
        n = len(numbers)
        n_pad = -(-n // self.atom_multiple) * self.atom_multiple
        p = len(i)
        p_pad = max(self.pair_multiple, -(-p // self.pair_multiple) * self.pair_multiple)
        pos = np.zeros((n_pad, 3))
        pos[:n] = positions
        num = np.zeros(n_pad, np.int32)
        num[:n] = numbers
        mask = np.zeros(n_pad, bool)
        mask[:n] = True
        pi, pj = np.zeros(p_pad, np.int32), np.zeros(p_pad, np.int32)
        ps, pm = np.zeros((p_pad, 3), np.int32), np.zeros(p_pad, bool)
        pi[:p], pj[:p], ps[:p], pm[:p] = i, j, shifts, True
        dtype = jnp.asarray(1.0).dtype
        if "fragment_charges" in atoms.info:
            index = np.zeros(n_pad, np.int32)
            index[:n] = frag
            total = Fragments(jnp.asarray(index), jnp.asarray(totals, dtype))
        out = self._evaluate(
            self._state,
            jnp.asarray(pos, dtype),
            jnp.asarray(num),
            jnp.asarray(mask),
            jnp.asarray(pi),
            jnp.asarray(pj),
            jnp.asarray(ps),
            jnp.asarray(pm),
            jnp.asarray(cell if cell is not None else np.eye(3), dtype),
            total,
            jnp.asarray(field, dtype),
            el,
            born,
        )
        energy = float(out["energy"])
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = np.asarray(out["forces"], np.float64)[:n]
        if cell is not None and all(pbc):
            s = np.asarray(out["stress"], np.float64)
            self.results["stress"] = np.array(
                [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]
            )
        if self.model.has_charges:
            self.results["charges"] = np.asarray(out["charges"], np.float64)[:n]
            self.results["dipole"] = np.asarray(out["dipole"], np.float64)
            if cell is not None and all(pbc):
                self.results["polarization"] = np.asarray(out["polarization"], np.float64)
            if born:
                self.results["born_effective_charges"] = np.asarray(
                    out["born_charges"], np.float64
                )[:n]
