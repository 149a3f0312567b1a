r"""Wannier-centroid model (DPLR style): ions plus predicted electron centroids.

Deep Potential Long Range (Zhang et al., J. Chem. Phys. 156, 124107 (2022)) splits
the electrons of a molecule into localized orbitals and keeps, per heavy atom, the
centroid of the valence Wannier (Foster-Boys) centres assigned to it. Each such atom
``i`` carries an ionic charge ``Z_i`` at ``r_i`` and a centroid charge ``q_c`` at

    w_i = r_i + delta_i,      delta_i = sum_f v_i[:, f] g_f(s_i)

(``s_i``, ``v_i`` the backbone's scalar and vector features, ``g`` an MLP: the
displacement rotates with the structure). Atoms without a centroid (hydrogen in
water) carry only their ionic charge. The energy is

    E = sum_i E_short(s_i) + E_coul(ions and centroids)

with every site a Gaussian charge of width ``sigma`` (all pairs for molecules, Ewald
for 3D cells over the atom pairs expanded to site pairs). For water the defaults are
DPLR's: O ion +6 (nucleus and 1s core), H ion +1, O centroid -8 (four doubly occupied
valence orbitals).

Outputs on top of the charge models': ``charges`` the net charge per atom
(``Z_i + q_c``), ``dipoles`` the centroid dipole ``q_c delta_i`` per atom (so the
total dipole is ``sum_i (Z_i + q_c) r_i + q_c delta_i``, exactly the ion + centroid
dipole), ``centres`` (N, 3) the centroid positions (an atom's own position where it
has none) and ``centre_mask``. Trained against ``REF_wannier_centres`` (loss
``wannier_centres``) and, when given, energies, forces and dipoles.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlr.kernels.coulomb import coulomb_energy
from jaxlr.kernels.ewald import ewald_energy
from jaxlr.models._painn import _MLP
from jaxlr.models._potentials import MAX_NUMBER, ShortRange, electrostatics_for
from jaxlr.neighbors import Pairs
from jaxlr.units import COULOMB

__all__ = ["WannierCentres", "site_pairs"]

#: water (DPLR): O ion +6 with its 1s core, H +1; the O valence centroid carries -8 e
WATER_IONS = ((1, 1.0), (8, 6.0))
WATER_CENTRES = ((8, -8.0),)


def _table(pairs, name):
    """``((Z, value), ...)`` or a ``{Z: value}`` mapping -> a sorted tuple of pairs."""
    items = pairs.items() if isinstance(pairs, dict) else pairs
    out = []
    for item in items:
        try:
            z, value = item
            z, value = int(z), float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{name} must be a mapping or pairs of (atomic number, charge), got {item!r}"
            ) from None
        if not 0 < z <= MAX_NUMBER or not math.isfinite(value):
            raise ValueError(f"{name}: bad entry (Z={z}, charge={value})")
        out.append((z, value))
    if len({z for z, _ in out}) != len(out):
        raise ValueError(f"{name} lists an atomic number twice: {out}")
    return tuple(sorted(out))


def site_pairs(pairs: Pairs, has_centre, n_atoms: int) -> Pairs:
    """Pairs over the ``2 n_atoms`` sites (atoms ``0..n-1``, centroids ``n..2n-1``)
    from a FULL atom pair list: each atom pair (i, j) gives the four site pairs
    (i, j), (i, n+j), (n+i, j), (n+i, n+j) with its cell shift, and each atom with a
    centroid the two intra-atom pairs (i, n+i), (n+i, i) (no shift). The caller masks
    sites without charge; a zero-charge site contributes nothing."""
    if pairs.half:
        raise ValueError("site_pairs needs a full pair list (half=False)")
    n = n_atoms
    i, j, s, m = pairs.i, pairs.j, pairs.shifts, pairs.mask
    own = jnp.arange(n, dtype=i.dtype)
    zero = jnp.zeros((n, 3), s.dtype)
    ii = jnp.concatenate([i, i, i + n, i + n, own, own + n])
    jj = jnp.concatenate([j, j + n, j, j + n, own + n, own])
    ss = jnp.concatenate([s, s, s, s, zero, zero])
    mm = jnp.concatenate([m, m, m, m, has_centre, has_centre])
    # padded slots keep i == j (DESIGN), so masked self pairs stay harmless
    ii = jnp.where(mm, ii, jj)
    return Pairs(ii, jj, ss, mm, pairs.cutoff, False)


class WannierCentres(ShortRange):
    """DPLR-style model: short-range energy plus the Ewald energy of ionic charges and
    predicted Wannier centroids (module docstring).

    Args: as :class:`jaxlr.models.ShortRange`, plus
      ions: ``{Z: ionic charge}`` (e) for every species the model will see
        (default water: H +1, O +6).
      centres: ``{Z: centroid charge}`` (e) for the species that carry a centroid
        (default water: O -8).
      site_margin: extra pair-list range (Å) so that every centroid pair inside the
        Ewald real-space cutoff is listed (a centroid sits well under half of it from
        its atom; 1 Å by default).
    """

    has_charges = True
    fits_charges = False  # net charges are fixed by the ion/centroid bookkeeping
    fits_centres = True
    _direct_charges = False

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
        ions=WATER_IONS,
        centres=WATER_CENTRES,
        site_margin=1.0,
    ):
        super().__init__(features, n_layers, cutoff, n_basis, hidden, sigma, seed, backbone)
        ions, centres = _table(ions, "ions"), _table(centres, "centres")
        missing = sorted({z for z, _ in centres} - {z for z, _ in ions})
        if missing:
            raise ValueError(f"centres lists species {missing} that have no entry in ions")
        if not site_margin >= 0:
            raise ValueError(f"site_margin must be >= 0 Å, got {site_margin}")
        self.ions, self.centres = ions, centres
        self.site_margin = float(site_margin)
        self.hyper_items = self.hyper_items + (
            ("ions", tuple(tuple(p) for p in ions)),
            ("centres", tuple(tuple(p) for p in centres)),
            ("site_margin", float(site_margin)),
        )
        rngs = nnx.Rngs(seed + 1)
        self.centre_gate = _MLP((features, hidden, features), rngs=rngs)
        # start from small displacements (a centroid near its atom)
        self.centre_scale = nnx.Param(jnp.asarray(0.1))

    @property
    def predicts_dipoles(self) -> bool:
        """True: the outputs carry the centroid dipoles ``q_c delta_i``."""
        return True

    @property
    def hyper(self) -> dict:
        h = dict(self.hyper_items)
        h["ions"] = [list(p) for p in h["ions"]]
        h["centres"] = [list(p) for p in h["centres"]]
        return h

    def route(self, frames, kind, *, cutoff, accuracy=1e-5):
        """The Ewald route with its real-space range ``site_margin`` inside the pair
        lists' cutoff (so every centroid pair within it is listed)."""
        return electrostatics_for(
            frames, kind, sigma=self.sigma, cutoff=cutoff - self.site_margin, accuracy=accuracy
        )

    def check_frames(self, frames, source="data"):
        """Host: every species has an ionic charge, and each frame's total charge
        equals its ions plus centroids (the bookkeeping this model assumes)."""
        ions, centres = dict(self.ions), dict(self.centres)
        for k, f in enumerate(frames):
            unknown = sorted({int(z) for z in f.numbers} - set(ions))
            if unknown:
                raise ValueError(
                    f"{source}: frame {k} has species {unknown} without an ionic charge in "
                    f"the Wannier model's ions={dict(ions)}"
                )
            total = sum(ions[int(z)] + centres.get(int(z), 0.0) for z in f.numbers)
            if abs(total - f.charge) > 1e-6:
                raise ValueError(
                    f"{source}: frame {k} has total charge {f.charge:g} but its ions and "
                    f"centroids sum to {total:g}; the Wannier model cannot represent it"
                )

    def _tables(self, dtype):
        ion = np.zeros(MAX_NUMBER + 1)
        cen = np.zeros(MAX_NUMBER + 1)
        has = np.zeros(MAX_NUMBER + 1, bool)
        for z, v in self.ions:
            ion[z] = v
        for z, v in self.centres:
            cen[z], has[z] = v, True
        return jnp.asarray(ion, dtype), jnp.asarray(cen, dtype), jnp.asarray(has)

    def displacements(self, s, v):
        """(N, 3) centroid displacements (Å) from scalar and vector features."""
        g = self.centre_gate(s)  # (N, F) invariant gates
        return self.centre_scale * jnp.einsum("iaf,if->ia", v, g)

    def __call__(self, positions, numbers, mask, pairs, cell, charge, electrostatics):
        dtype = positions.dtype
        s, v = self.backbone(positions, numbers, mask, pairs, cell)
        s, v = s.astype(dtype), v.astype(dtype)
        atomic = self.energy_scale * self.energy_head(s)[:, 0] + self.species_energy[numbers]
        energy = jnp.sum(jnp.where(mask, atomic, 0.0))
        ion, cen, has = self._tables(dtype)
        z = jnp.where(mask, numbers, 0)
        has_centre = has[z] & mask
        q_ion = jnp.where(mask, ion[z], 0.0)
        q_cen = jnp.where(has_centre, cen[z], 0.0)
        delta = jnp.where(has_centre[:, None], self.displacements(s, v), 0.0)
        centres = positions + delta
        n = positions.shape[0]
        sites = jnp.concatenate([positions, centres])
        q = jnp.concatenate([q_ion, q_cen])
        site_mask = jnp.concatenate([mask, has_centre])
        if electrostatics.kind == "molecule":
            i, j = np.triu_indices(2 * n, k=1)
            i, j = jnp.asarray(i, jnp.int32), jnp.asarray(j, jnp.int32)
            every = Pairs(
                i,
                j,
                jnp.zeros((len(i), 3), jnp.int32),
                site_mask[i] & site_mask[j],
                math.inf,
                True,
            )
            e_coul = coulomb_energy(sites, q, every, sigma=self.sigma, prefactor=COULOMB)
        elif electrostatics.kind == "periodic":
            e_coul = ewald_energy(
                sites,
                q,
                cell,
                site_pairs(pairs, has_centre, n),
                config=electrostatics.ewald,
                sigma=self.sigma,
                prefactor=COULOMB,
            )
        else:
            raise ValueError(f"unknown electrostatics kind {electrostatics.kind!r}")
        return {
            "energy": energy + e_coul,
            "charges": q_ion + q_cen,
            "dipoles": q_cen[:, None] * delta,
            "centres": centres,
            "centre_mask": has_centre,
        }
