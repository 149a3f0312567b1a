r"""Ewald message passing (Kosmala et al., ICML 2023) on jaxlr's kernels.

Structure-factor message passing lets every atom hear every other through a filter in
reciprocal space: atom embeddings ``h_jc`` (``C`` channels) are summed into
per-channel structure factors ``S_c(k) = sum_j h_jc e^{i k r_j}``, filtered by
``F_c(k)`` and brought back to the atoms. Here the filters are screened Coulomb
filters, ``F_c(k) = 4 pi exp(-sigma_c^2 k^2) / k^2`` (the Fourier transform of the
potential of a Gaussian "charge" of width ``sigma_c``), one width per channel, so the
messages are exactly the potentials

    phi_ic = sum_j h_jc erf(r_ij / (2 sigma_c)) / r_ij  (+ the Gaussian self term)

computed by the kernels: Ewald (reciprocal sum + short real-space part) for 3D cells,
all pairs in free space for molecules (the free-space variant). Learned linear maps
into the channels and a learned MLP out of them span a learned radial filter
``sum_c w_c F_c(k)``: a family of long-range filters that keeps the 1/k^2 (1/r)
tail, which a truncated learned k-space filter cannot represent beyond its k grid.

Per layer: ``h = W_in s``, ``phi = potentials(h)`` (N, C), ``s += MLP(squash(phi))``
with ``squash(x) = sign(x) log(1 + |x|)``, then the atomic energies as in
:class:`~jaxlr.models.ShortRange`. The messages are invariant (rotations,
translations, permutations) and periodic (a supercell gives the same energy per
cell); the channel widths run geometrically from ``sigma / 2`` to ``sigma``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlr.kernels.coulomb import coulomb_potential
from jaxlr.kernels.ewald import ewald_potential
from jaxlr.models._attention import ChargeEmbedding
from jaxlr.models._painn import _MLP
from jaxlr.models._potentials import Electrostatics, ShortRange, electrostatics_for

__all__ = ["EwaldMessagePassing"]


def _squash(x):
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


class EwaldMessagePassing(ShortRange):
    """Short-range backbone + Ewald (structure-factor) message passing (module
    docstring). Arguments as :class:`jaxlr.models.ShortRange`, plus
    ``ewald_channels`` (C, default 8) and ``n_ewald`` message-passing layers
    (default 1); ``sigma`` is the widest channel's Gaussian width (Å);
    ``charge_embedding`` (default True) adds the total-charge embedding of
    :class:`jaxlr.models.LongRangeAttention` to the local features."""

    uses_ewald = True  # its cells need the Ewald route and real-space pair range

    def __init__(self, *args, ewald_channels=8, n_ewald=1, charge_embedding=True, **kwargs):
        super().__init__(*args, **kwargs)
        for name, value in (("ewald_channels", ewald_channels), ("n_ewald", n_ewald)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.hyper_items = self.hyper_items + (
            ("ewald_channels", int(ewald_channels)),
            ("n_ewald", int(n_ewald)),
            ("charge_embedding", bool(charge_embedding)),
        )
        c = int(ewald_channels)
        self.widths = tuple(
            self.sigma * 0.5 ** (1.0 - k / max(c - 1, 1)) if c > 1 else self.sigma for k in range(c)
        )
        f, hidden = self.hyper["features"], self.hyper["hidden"]
        rngs = nnx.Rngs(self.hyper["seed"] + 4)
        self.to_channels = nnx.List([nnx.Linear(f, c, rngs=rngs) for _ in range(n_ewald)])
        self.update = nnx.List([_MLP((c, hidden, f), rngs=rngs) for _ in range(n_ewald)])
        self.charge_embedding = ChargeEmbedding(f, rngs=rngs) if charge_embedding else None

    def route(self, frames, kind, *, cutoff, accuracy=1e-5) -> Electrostatics:
        """The Ewald route of the widest channel (cells); molecules need none."""
        if kind == "slab":
            raise ValueError("EwaldMessagePassing takes molecules or 3D cells, not slabs")
        return electrostatics_for(frames, kind, sigma=self.sigma, cutoff=cutoff, accuracy=accuracy)

    def potentials(self, positions, h, cell, pairs, electrostatics):
        """(N, C) Gaussian-units potentials of the channel "charges" ``h`` (N, C)."""
        widths = jnp.asarray(self.widths, positions.dtype)
        if electrostatics.kind == "molecule":

            def one(q, w):
                return coulomb_potential(positions, q, sigma=w, prefactor=1.0)

        elif electrostatics.kind == "periodic":

            def one(q, w):
                return ewald_potential(
                    positions, q, cell, pairs, config=electrostatics.ewald, sigma=w, prefactor=1.0
                )

        else:
            raise ValueError(f"unknown electrostatics kind {electrostatics.kind!r}")
        return jax.vmap(one, in_axes=(1, 0), out_axes=1)(h, widths)

    def features(self, positions, numbers, mask, pairs, cell, electrostatics=None, charge=0.0):
        s = super().features(positions, numbers, mask, pairs, cell)
        if electrostatics is None:
            raise ValueError("EwaldMessagePassing.features needs the electrostatics route")
        if self.charge_embedding is not None:
            s = self.charge_embedding(s, mask, charge)
        m = mask[:, None].astype(s.dtype)
        for to_c, upd in zip(self.to_channels, self.update):
            h = to_c(s) * m
            phi = self.potentials(positions, h, cell, pairs, electrostatics)
            s = s + upd(_squash(phi)) * m
        return s

    def __call__(self, positions, numbers, mask, pairs, cell, charge, electrostatics):
        dtype = positions.dtype
        s = self.features(positions, numbers, mask, pairs, cell, electrostatics, charge)
        s = s.astype(dtype)
        atomic = self.energy_scale * self.energy_head(s)[:, 0] + self.species_energy[numbers]
        return {"energy": jnp.sum(jnp.where(mask, atomic, 0.0)), "charges": None}
