"""LODE features in a potential: long-distance equivariant descriptors combined with
local features (multi-scale, Grisafi-Nigam-Ceriotti style).

Per atom, the LODE coefficients of the smeared-density potentials (``jaxlr.lode``:
reciprocal space for cells, free space for molecules) are computed for each exponent
in ``lode_exponents`` (default p = 1, the Coulomb-like potential, and p = 6, the
dispersion-like one), with learned density channels: every atom of species Z carries
weight ``w_Z`` (a learned vector of ``lode_channels`` numbers) in each channel, so the
channels are learned species mixtures (the LODE expansion is linear in the weights).
Their rotation-invariant power spectrum, squashed elementwise by ``sign(x)
log(1 + |x|)``, is concatenated with the backbone's local features and fed to the
atomic-energy head. Forces and stress come from autodiff (through the k sum for
cells, O(N N_k)).

Cells need a static k index set per LODE exponent: :meth:`LODEModel.route` builds it
on the host (the union of the index sets of the given cells, masked by the exact
``|k| < k_cutoff`` inside), and ``jaxlr.train``, the ASE calculator and ``jaxlr.md``
call it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlr.kernels.lode import LodeConfig, kvector_indices, lode_free, lode_periodic, power_spectrum
from jaxlr.models._attention import ChargeEmbedding
from jaxlr.models._painn import _MLP
from jaxlr.models._potentials import MAX_NUMBER, Electrostatics, ShortRange

__all__ = ["LODEModel"]


class LODEModel(ShortRange):
    """Local backbone features + LODE power spectra (module docstring).

    Args: as :class:`jaxlr.models.ShortRange`, plus
      lode_exponents: potential exponents p of the LODE channels (0..6).
      lode_channels: learned density channels (species mixtures).
      lode_smearing, lode_radius, lode_max_radial, lode_max_angular: the LODE basis
        (Å, Å; see :func:`jaxlr.lode.spherical_expansion`).
      charge_embedding: add the total-charge embedding of
        :class:`jaxlr.models.LongRangeAttention` to the local features (default; the
        LODE density is the atoms', so without it Ag3+ and Ag3- look the same).
    """

    def __init__(
        self,
        *args,
        lode_exponents=(1, 6),
        lode_channels=2,
        lode_smearing=1.0,
        lode_radius=4.0,
        lode_max_radial=3,
        lode_max_angular=1,
        charge_embedding=True,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        exponents = tuple(int(p) for p in lode_exponents)
        if not exponents:
            raise ValueError("lode_exponents must name at least one exponent")
        if not (isinstance(lode_channels, int) and lode_channels >= 1):
            raise ValueError(f"lode_channels must be a positive integer, got {lode_channels!r}")
        self.hyper_items = self.hyper_items + (
            ("lode_exponents", list(exponents)),
            ("lode_channels", int(lode_channels)),
            ("lode_smearing", float(lode_smearing)),
            ("lode_radius", float(lode_radius)),
            ("lode_max_radial", int(lode_max_radial)),
            ("lode_max_angular", int(lode_max_angular)),
            ("charge_embedding", bool(charge_embedding)),
        )
        # hyper_items must stay hashable: store the exponents as a tuple there too
        self.hyper_items = tuple(
            (k, tuple(v) if isinstance(v, list) else v) for k, v in self.hyper_items
        )
        self.lode_configs = tuple(
            LodeConfig(
                max_radial=int(lode_max_radial),
                max_angular=int(lode_max_angular),
                radius=float(lode_radius),
                smearing=float(lode_smearing),
                exponent=p,
            )
            for p in exponents
        )
        rngs = nnx.Rngs(self.hyper["seed"] + 3)
        a = int(lode_channels)
        self.channel_weights = nnx.Param(
            0.5 * jax.random.normal(rngs.params(), (MAX_NUMBER + 1, a))
        )
        n_ps = a * a * (int(lode_max_angular) + 1) * (int(lode_max_radial) + 1) ** 2
        f, hidden = self.hyper["features"], self.hyper["hidden"]
        self.energy_head = _MLP((f + len(exponents) * n_ps, hidden, 1), rngs=rngs)
        self.charge_embedding = ChargeEmbedding(f, rngs=rngs) if charge_embedding else None

    @property
    def hyper(self) -> dict:
        d = dict(self.hyper_items)
        if "lode_exponents" in d:
            d["lode_exponents"] = list(d["lode_exponents"])
        return d

    def route(self, frames, kind, *, cutoff, accuracy=1e-5) -> Electrostatics:
        """Host: the static k index sets (one per exponent) covering ``frames``'
        cells; molecules need none."""
        if kind == "molecule":
            return Electrostatics("molecule")
        if kind == "slab":
            raise ValueError("LODEModel takes molecules or 3D cells, not slabs")
        cells = {np.asarray(f.cell, np.float64).round(6).tobytes(): f.cell for f in frames}
        sets = []
        for cfg in self.lode_configs:
            idx = set()
            for cell in cells.values():
                idx.update(map(tuple, kvector_indices(cell, cfg.k_cutoff).tolist()))
            sets.append(tuple(sorted(idx)))
        return Electrostatics("periodic", lode=tuple(sets))

    def lode_features(self, positions, numbers, mask, cell, electrostatics):
        """(N, F_lode) squashed LODE power spectra of one padded structure."""
        dtype = positions.dtype
        w = self.channel_weights[numbers].astype(dtype) * mask[:, None].astype(dtype)
        feats = []
        for k, cfg in enumerate(self.lode_configs):
            if electrostatics.kind == "molecule":
                c = lode_free(positions, w, cfg, mask)
            else:
                if electrostatics.lode is None:
                    raise ValueError(
                        "LODEModel in a cell needs its route: build it with model.route(...)"
                    )
                kidx = np.asarray(electrostatics.lode[k], np.int64).reshape(-1, 3)
                c = lode_periodic(positions, w, cell, cfg, kidx)
            ps = power_spectrum(c).reshape(positions.shape[0], -1)
            feats.append(jnp.sign(ps) * jnp.log1p(jnp.abs(ps)))
        return jnp.concatenate(feats, axis=1)

    def __call__(self, positions, numbers, mask, pairs, cell, charge, electrostatics):
        dtype = positions.dtype
        s = self.features(positions, numbers, mask, pairs, cell).astype(dtype)
        if self.charge_embedding is not None:
            s = self.charge_embedding(s, mask, charge)
        x = jnp.concatenate(
            [s, self.lode_features(positions, numbers, mask, cell, electrostatics)], axis=1
        )
        atomic = self.energy_scale * self.energy_head(x)[:, 0] + self.species_energy[numbers]
        return {"energy": jnp.sum(jnp.where(mask, atomic, 0.0)), "charges": None}
