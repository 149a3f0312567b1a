"""Machine-learned potentials: a short-range baseline and local charge models.

All three share one structure: a backbone (default :class:`PaiNN`) gives per-atom
features; an MLP head gives atomic energies ``E_i = scale * MLP(s_i) + e_Z`` (``e_Z``
per-element reference energies, set by the trainer from a least-squares fit).

- :class:`ShortRange`: ``E = sum_i E_i`` (the local baseline).
- :class:`ExplicitCharges`: a second head gives charges ``q_i``, constrained exactly
  to the structure's total charge ``Q`` (``q_i = r_i - (sum_j r_j - Q) / n``), and
  ``E = sum_i E_i + E_coul(q)``, the energy of Gaussian charges of width ``sigma``
  through jaxlr's kernels (all pairs for molecules, Ewald for 3D cells). Trained
  against ``REF_charges`` (and/or ``REF_dipole``).
- :class:`LatentCharges`: the same model, its charges learned from energies and
  forces alone (no charge labels in the loss).

Calling a model on ONE padded structure::

    out = model(positions, numbers, mask, pairs, cell, charge, electrostatics)

returns ``{"energy": scalar eV, "charges": (N,) e or None}``; :func:`predict` adds
forces (eV/Å), stress (eV/Å^3, cells) and the dipole (e·Å, molecules) by autodiff.
``electrostatics`` is a static :class:`Electrostatics` (kind, Ewald config) made on
the host by :func:`electrostatics_for`. :func:`pure` gives the pure function of
``(state, positions, numbers, cell, pairs, ...)`` for jax-md and ``lax.scan``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlr.cell import apply_strain
from jaxlr.kernels.coulomb import coulomb_energy
from jaxlr.kernels.ewald import EwaldConfig, ewald_energy
from jaxlr.kernels.tuning import tune_ewald
from jaxlr.models._painn import _MLP, PaiNN
from jaxlr.neighbors import Pairs
from jaxlr.units import COULOMB

__all__ = [
    "Electrostatics",
    "electrostatics_for",
    "pair_cutoff",
    "Fragments",
    "total_charge",
    "constraint_rows",
    "ShortRange",
    "ExplicitCharges",
    "LatentCharges",
    "LatentDipoles",
    "MODELS",
    "build",
    "predict",
    "pure",
]

MAX_NUMBER = 100


class Fragments(NamedTuple):
    """Fragment charge constraints of one padded structure, accepted wherever a model
    takes the total ``charge``: ``index`` (N,) int, the fragment of each atom (padding
    atoms: any), ``charges`` (K,) e, each fragment's total (a fragment without atoms
    must have total 0: padding). Charge models constrain each fragment's charges to
    its total; the others see the sum."""

    index: jax.Array
    charges: jax.Array


def total_charge(charge):
    """The structure's total charge from a scalar or :class:`Fragments`."""
    return jnp.sum(charge.charges) if isinstance(charge, Fragments) else charge


def constraint_rows(charge, mask, dtype):
    """``(B (K, N), totals (K,))``: the charge constraints ``B q = totals`` over the
    real atoms, one row for a scalar ``charge``, one per fragment for
    :class:`Fragments`."""
    if isinstance(charge, Fragments):
        k = charge.charges.shape[0]
        rows = (jax.nn.one_hot(charge.index, k, dtype=dtype) * mask[:, None]).T
        return rows, jnp.asarray(charge.charges, dtype)
    return mask.astype(dtype)[None, :], jnp.asarray(charge, dtype)[None]


@dataclasses.dataclass(frozen=True)
class Electrostatics:
    """Static electrostatics route for one batch kind: ``kind`` in {"molecule",
    "periodic"}; ``ewald`` the :class:`EwaldConfig` for cells (its ``r_cut`` within
    the batch's pair cutoff)."""

    kind: str
    ewald: EwaldConfig | None = None
    lode: tuple | None = None  # per LODE exponent, the static k index set of cells


def electrostatics_for(
    frames, kind, *, sigma, cutoff, accuracy=1e-5, dipoles=False
) -> Electrostatics:
    """Host: the route for ``frames`` of one ``kind``. For cells, the Ewald splitting
    alpha makes the real-space error ``accuracy`` (relative, Gaussian charges of width
    ``sigma``) at ``cutoff`` (the pair lists' cutoff, see :func:`pair_cutoff`), and
    ``k_max`` per axis covers the largest cell among ``frames`` (with ``dipoles``,
    for charges and atomic dipoles: the dipolar reciprocal sum needs more k)."""
    if kind == "molecule":
        return Electrostatics("molecule")
    if kind == "slab":
        raise ValueError(
            "the charge models do not take slab structures (pbc=(True, True, False)) yet; "
            "use ShortRange or give molecules / 3D cells"
        )
    frames = [f for f in frames if all(f.pbc)]
    if not frames:
        raise ValueError("electrostatics_for: no periodic frames given")
    lengths = np.array([np.linalg.norm(f.cell, axis=1) for f in frames])
    ref = frames[int(np.argmax(lengths.prod(axis=1)))]
    q = ref.charges if ref.charges is not None else np.where(ref.numbers % 2 == 0, 1.0, -1.0)
    alpha = math.sqrt(-math.log(accuracy)) / float(cutoff)
    kw = {}
    if dipoles:  # an example of atomic dipoles of 0.1 e·Å for the dipolar error estimate
        rng = np.random.default_rng(0)
        kw["dipoles"] = 0.1 * rng.normal(size=(len(q), 3))
    cfg = tune_ewald(ref.positions, q, ref.cell, accuracy=accuracy, sigma=sigma, alpha=alpha, **kw)
    ref_len = np.linalg.norm(ref.cell, axis=1)
    k_max = np.max(np.ceil(np.asarray(cfg.k_max)[None, :] * lengths / ref_len[None, :]), axis=0)
    cfg = EwaldConfig(alpha, float(cutoff), tuple(int(k) for k in k_max))
    return Electrostatics("periodic", cfg)


def pair_cutoff(model, frames=(), accuracy=1e-5) -> float:
    """Host: the neighbour-list cutoff (Å) a model needs on ``frames``: its own
    ``cutoff``, or, for a charge model on 3D cells, also the Ewald real-space range
    of its Gaussian charges, ``2 sigma sqrt(-ln accuracy)`` (the screened term
    ``erfc(r / (2 sigma)) / r`` must have died out, else the energy jumps as pairs
    cross the cutoff)."""
    cut = float(model.cutoff)
    ewald = model.has_charges or getattr(model, "uses_ewald", False)
    if ewald and any(all(f.pbc) for f in frames):
        sigma = getattr(model, "sigma_max", model.sigma)
        margin = getattr(model, "site_margin", 0.0)  # centroid sites off their atoms
        cut = max(cut, 2.0 * sigma * math.sqrt(-math.log(accuracy)) + margin)
    return cut


class ShortRange(nnx.Module):
    """Local baseline: ``E = sum_i (scale * MLP(s_i) + e_Z)`` on backbone features.

    Args:
      features, n_layers, cutoff, n_basis: the PaiNN backbone's (cutoff in Å).
      hidden: width of the heads' hidden layer.
      sigma: Gaussian charge width (Å) of the charge models.
      seed: parameter initialisation seed.
      backbone: optional nnx module with PaiNN's interface (replaces the default;
        its feature width must equal ``features``).
      atomic_dipoles: explicit and latent charge models only: a vector head also
        predicts a Gaussian atomic dipole per atom (e·Å, width ``sigma``; rotates with
        the structure), which enters the Coulomb energy (charge-dipole and
        dipole-dipole terms) and the dipole / polarization outputs.
      charge_aware: explicit and latent charge models only: the energy head also
        sees each atom's charge, ``E_i = scale * MLP(s_i, q_i) + c_Z q_i + e_Z``
        (4G-HDNNP's charge-aware short-range network; ``c_Z`` per species, eV/e,
        started by the trainer at the slope of the energy against the total charge
        when the data pins it down). The charges carry the total charge
        (``q_i = r_i - (sum r - Q) / n``), so the atomic energies can depend on the
        charge state: Ag3+ and Ag3- at one geometry get different energies, which a
        plain local charge model cannot give (its Coulomb energy is even in Q for a
        symmetric structure).
    """

    has_charges = False
    fits_charges = False
    couples_field = False  # True: the model takes ``field=`` itself (QEq)
    _direct_charges = True
    _local_charges = False  # explicit / latent: the atomic-dipole option applies

    def __init__(
        self,
        features=32,
        n_layers=1,
        cutoff=5.0,
        n_basis=12,
        hidden=32,
        sigma=1.0,
        seed=0,
        backbone=None,
        atomic_dipoles=False,
        charge_aware=False,
    ):
        for name, value in (("atomic_dipoles", atomic_dipoles), ("charge_aware", charge_aware)):
            if value and not self._local_charges:
                raise ValueError(
                    f"{name}=True is an option of the explicit and latent charge models, "
                    f"not of {type(self).__name__}"
                )
        rngs = nnx.Rngs(seed)
        self.hyper_items = tuple(
            dict(
                features=int(features),
                n_layers=int(n_layers),
                cutoff=float(cutoff),
                n_basis=int(n_basis),
                hidden=int(hidden),
                sigma=float(sigma),
                seed=int(seed),
            ).items()
        )  # a tuple: the graph definition stays hashable (jit caches on it)
        self.atomic_dipoles = bool(atomic_dipoles)
        if self.atomic_dipoles:
            self.hyper_items = self.hyper_items + (("atomic_dipoles", True),)
        self.charge_aware = bool(charge_aware)
        if self.charge_aware:
            self.hyper_items = self.hyper_items + (("charge_aware", True),)
            # a per-species linear charge energy e_Z q_i beside the head (the trainer
            # starts it at the slope of the energy against the total charge)
            self.species_charge_energy = nnx.Param(jnp.zeros(MAX_NUMBER + 1))
        self.cutoff = float(cutoff)
        self.sigma = float(sigma)
        self.backbone = backbone or PaiNN(
            features, n_layers, cutoff, n_basis, MAX_NUMBER, rngs=rngs
        )
        self.energy_head = _MLP((features + self.charge_aware, hidden, 1), rngs=rngs)
        self.species_energy = nnx.Param(jnp.zeros(MAX_NUMBER + 1))
        self.energy_scale = nnx.Param(jnp.ones(()))
        if self.has_charges and self._direct_charges:
            self.charge_head = _MLP((features, hidden, 1), rngs=rngs)
            self.species_charge = nnx.Param(jnp.zeros(MAX_NUMBER + 1))
        if self.atomic_dipoles:
            self.dipole_gate = _MLP((features, hidden, features), rngs=rngs)
            self.dipole_scale = nnx.Param(jnp.asarray(0.01))

    @property
    def predicts_dipoles(self) -> bool:
        """True when the model's outputs carry atomic dipoles."""
        return self.atomic_dipoles

    def route(self, frames, kind, *, cutoff, accuracy=1e-5) -> Electrostatics:
        """Host: the static route for ``frames`` of one ``kind`` (the Ewald set of a
        charge model; models with other nonlocal parts extend it)."""
        if not self.has_charges:
            return Electrostatics("molecule" if kind == "molecule" else "periodic")
        return electrostatics_for(
            frames,
            kind,
            sigma=self.sigma,
            cutoff=cutoff,
            accuracy=accuracy,
            dipoles=self.atomic_dipoles,
        )

    @property
    def hyper(self) -> dict:
        """The constructor's hyper-parameters (JSON-ready, without ``backbone``)."""
        return dict(self.hyper_items)

    @property
    def name(self) -> str:
        return type(self).__name__

    def features(self, positions, numbers, mask, pairs, cell):
        s, _ = self.backbone(positions, numbers, mask, pairs, cell)
        return s

    def charges(self, s, numbers, mask, charge):
        """(N,) charges summing exactly to ``charge`` over the real atoms."""
        raw = self.charge_head(s)[:, 0] + self.species_charge[numbers]
        return constrain(raw, mask, charge)

    def __call__(self, positions, numbers, mask, pairs, cell, charge, electrostatics):
        dtype = positions.dtype
        if self.atomic_dipoles:
            s, v = self.backbone(positions, numbers, mask, pairs, cell)
        else:
            s = self.features(positions, numbers, mask, pairs, cell)
        s = s.astype(dtype)
        q = self.charges(s, numbers, mask, charge).astype(dtype) if self.has_charges else None
        head_in = jnp.concatenate([s, q[:, None]], axis=1) if self.charge_aware else s
        atomic = self.energy_scale * self.energy_head(head_in)[:, 0] + self.species_energy[numbers]
        if self.charge_aware:
            atomic = atomic + self.species_charge_energy[numbers] * q
        energy = jnp.sum(jnp.where(mask, atomic, 0.0))
        if not self.has_charges:
            return {"energy": energy, "charges": None}
        p = None
        if self.atomic_dipoles:
            g = self.dipole_gate(s)  # invariant gates on the equivariant vectors
            p = self.dipole_scale * jnp.einsum("iaf,if->ia", v.astype(dtype), g)
            p = jnp.where(mask[:, None], p, 0.0)
        e_coul = coulomb(positions, q, mask, pairs, cell, self.sigma, electrostatics, dipoles=p)
        out = {"energy": energy + e_coul, "charges": q}
        if p is not None:
            out["dipoles"] = p
        return out


def constrain(raw, mask, charge):
    """(N,) charges from raw per-atom values: shifted uniformly over the real atoms
    to sum exactly to ``charge`` (``q_i = r_i - (sum_j r_j - Q) / n``), or, with
    :class:`Fragments`, over each fragment's atoms to its total."""
    raw = jnp.where(mask, raw, 0.0)
    if isinstance(charge, Fragments):
        rows, totals = constraint_rows(charge, mask, raw.dtype)
        shift = (rows @ raw - totals) / jnp.maximum(jnp.sum(rows, axis=1), 1.0)
        return jnp.where(mask, raw - rows.T @ shift, 0.0)
    n = jnp.maximum(jnp.sum(mask), 1)
    return jnp.where(mask, raw - (jnp.sum(raw) - charge) / n, 0.0)


def coulomb(positions, q, mask, pairs, cell, sigma, electrostatics, dipoles=None):
    """Energy (eV) of Gaussian charges ``q`` (width ``sigma``) and optional Gaussian
    atomic ``dipoles`` (N, 3) of one padded structure: every real pair for a
    molecule, Ewald over ``pairs`` for a cell."""
    if electrostatics.kind == "molecule":
        n = positions.shape[0]
        i, j = np.triu_indices(n, k=1)
        i, j = jnp.asarray(i, jnp.int32), jnp.asarray(j, jnp.int32)
        every = Pairs(i, j, jnp.zeros((len(i), 3), jnp.int32), mask[i] & mask[j], math.inf, True)
        return coulomb_energy(positions, q, every, sigma=sigma, prefactor=COULOMB, dipoles=dipoles)
    if electrostatics.kind == "periodic":
        kw = {} if dipoles is None else {"dipoles": dipoles}
        return ewald_energy(
            positions,
            q,
            cell,
            pairs,
            config=electrostatics.ewald,
            sigma=sigma,
            prefactor=COULOMB,
            **kw,
        )
    raise ValueError(f"unknown electrostatics kind {electrostatics.kind!r}")


class ExplicitCharges(ShortRange):
    """Short-range energy plus the Coulomb energy of predicted Gaussian charges, the
    charges fit to reference charges and/or dipoles (see the module docstring)."""

    has_charges = True
    fits_charges = True
    _local_charges = True


class LatentCharges(ShortRange):
    """As :class:`ExplicitCharges`, the charges learned from energies and forces only
    (and from molecular dipoles when a ``dipole`` weight is set); with
    ``atomic_dipoles=True`` the latent-dipole model (charges and atomic dipoles)."""

    has_charges = True
    fits_charges = False
    _local_charges = True


class LatentDipoles(LatentCharges):
    """The latent-dipole model: :class:`LatentCharges` with ``atomic_dipoles=True``
    (charges and Gaussian atomic dipoles learned from energies, forces and, with a
    ``dipole`` weight, molecular dipoles)."""

    def __init__(self, *args, atomic_dipoles=True, **kwargs):
        super().__init__(*args, atomic_dipoles=atomic_dipoles, **kwargs)


MODELS = {
    "short_range": ShortRange,
    "explicit": ExplicitCharges,
    "latent": LatentCharges,
    "latent_dipoles": LatentDipoles,
}


def build(name: str, **hyper) -> ShortRange:
    """A model by its name in :data:`MODELS` (``short_range``, ``explicit``,
    ``latent``) or class name, with hyper-parameters as keyword arguments."""
    by_class = {cls.__name__: cls for cls in MODELS.values()}
    cls = MODELS.get(name) or by_class.get(name)
    if cls is None:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return cls(**hyper)


def predict(
    model, positions, numbers, mask, pairs, cell, charge, electrostatics, field=None, born=False
):
    """Energy (eV), forces (N, 3) eV/Å, stress (3, 3) eV/Å^3 (zeros for molecules),
    charges (N,) e (zeros without a charge head), dipole (3,) e·Å and, for cells,
    polarization (3,) e/Å^2 of one padded structure.

    The dipole of a molecule is ``sum q_i r_i`` about the origin; of a cell, ``V P``
    with every atom at its image inside the cell (``jaxlr.response``); the
    polarization is on the branch nearest zero. With ``field`` (3,) V/Å the energy is
    the electric enthalpy ``U - mu . field`` (charge models only), and forces and
    stress are its derivatives. ``born=True`` adds ``born_charges`` (N, 3, 3) e as
    ``d forces / d field`` (Maxwell; equal to ``d mu / d R``).

    Models whose output carries atomic ``dipoles`` (N, 3) e·Å (latent dipoles, Wannier
    centroids) add them to the dipole; ``atomic_dipoles`` returns them (zeros
    otherwise), and a Wannier model's ``wannier_centres`` (N, 3) Å and
    ``centre_mask`` (N,) are passed through."""
    from jaxlr.response import nearest_branch, output_dipole  # avoid a cycle

    periodic = electrostatics.kind != "molecule"
    dtype = positions.dtype
    e_field = jnp.zeros(3, dtype) if field is None else jnp.asarray(field, dtype)

    def enthalpy(pos, strain, e_field):
        c = None
        if periodic:  # DESIGN's stress deformation; molecules have no stress
            pos, c = apply_strain(pos, cell, strain)
        if getattr(
            model, "couples_field", False
        ):  # the field polarizes the charges; energy is the enthalpy
            out = model(pos, numbers, mask, pairs, c, charge, electrostatics, field=e_field)
        else:
            out = model(pos, numbers, mask, pairs, c, charge, electrostatics)
        if out["charges"] is None:
            mu = jnp.zeros(3, dtype)
        else:  # charges, plus atomic dipoles where the model has them
            mu = output_dipole(out, pos, mask, c if periodic else None)
        if getattr(model, "couples_field", False):
            return out["energy"], (out, mu)
        return out["energy"] - jnp.dot(mu, e_field), (out, mu)

    def derivatives(e_field):
        (e, (out, mu)), (de_dpos, de_deps) = jax.value_and_grad(
            enthalpy, argnums=(0, 1), has_aux=True
        )(positions, jnp.zeros((3, 3), dtype), e_field)
        forces = -jnp.where(mask[:, None], de_dpos, 0.0)
        return forces, (forces, e, de_deps, out, mu)

    if born:
        if not model.has_charges:
            raise ValueError("Born charges need a charge model (explicit or latent)")
        jac, (forces, e, de_deps, out, mu) = jax.jacfwd(derivatives, has_aux=True)(e_field)
        z = jnp.swapaxes(jac, 1, 2)  # (N, a = field, b = force component)
    else:
        _, (forces, e, de_deps, out, mu) = derivatives(e_field)
    if periodic:
        volume = jnp.abs(jnp.linalg.det(cell))
        stress = de_deps / volume
        polarization = nearest_branch(mu / volume, cell)
    else:
        stress = jnp.zeros((3, 3), dtype)
        polarization = jnp.zeros(3, dtype)
    q = out["charges"]
    if q is None:
        q = jnp.zeros(positions.shape[0], dtype)
    result = {
        "energy": e,
        "forces": forces,
        "stress": stress,
        "charges": q,
        "dipole": mu,
        "polarization": polarization,
    }
    p = out.get("dipoles")
    result["atomic_dipoles"] = jnp.zeros_like(positions) if p is None else p
    if "centres" in out:
        result["wannier_centres"] = out["centres"]
        result["centre_mask"] = out["centre_mask"]
    if born:
        result["born_charges"] = z
    return result


def pure(model):
    """``(fn, state)``: ``fn(state, positions, numbers, cell, pairs, mask, charge,
    electrostatics) -> energy`` (eV), a pure function of the model's state."""
    graphdef, state = nnx.split(model)

    def fn(state, positions, numbers, cell, pairs, mask, charge, electrostatics):
        m = nnx.merge(graphdef, state)
        return m(positions, numbers, mask, pairs, cell, charge, electrostatics)["energy"]

    return fn, state
