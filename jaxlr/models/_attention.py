"""A linear-scaling global attention layer over all atoms (SpookyNet-style nonlocal
interactions), aware of the total charge, on top of the short-range backbone.

Per structure, with local features ``s_i`` from the backbone:

1. charge embedding (SpookyNet's electronic embedding): the total charge ``Q`` is
   spread over the atoms with learned weights, ``a_i = Q softplus(k_i . u) / sum_j
   softplus(k_j . u)`` (so ``sum_i a_i = Q``), and ``s_i += a_i w`` (``u``, ``w``
   learned vectors, ``k_i`` a linear map of ``s_i``);
2. global attention with a positive feature map ``phi(x) = elu(x) + 1``::

       m_i = phi(q_i) . (sum_j phi(k_j) v_j^T) / (phi(q_i) . sum_j phi(k_j))

   (``q, k, v`` linear maps of ``s``): every atom attends to every atom at O(N F^2)
   cost, never forming the (N, N) attention matrix;
3. ``s_i += MLP(m_i)``, then the atomic energies as in
   :class:`~jaxlr.models.ShortRange`.

Sums run over the real atoms of one padded structure. The features are invariant, so
the energy is invariant under rotations, translations and permutations; the sums are
normalised, so a periodic supercell gives the same per-atom messages and the energy
per cell. The layer sees no distances: it carries information (and the total charge)
across the structure, not an explicit Coulomb law.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlr.models._painn import _MLP
from jaxlr.models._potentials import ShortRange, total_charge

__all__ = ["LongRangeAttention", "ChargeEmbedding"]


def _phi(x):
    return jax.nn.elu(x) + 1.0


class ChargeEmbedding(nnx.Module):
    """SpookyNet's electronic embedding of the total charge ``Q``: ``s_i += a_i w``
    with ``a_i = Q softplus(k_i . u) / sum_j softplus(k_j . u)`` over the real atoms
    (``sum_i a_i = Q``; ``k_i`` a linear map of ``s_i``, ``u`` and ``w`` learned).
    A neutral structure's features are unchanged. Used by the attention, LODE and
    Ewald message-passing models."""

    def __init__(self, features, *, rngs):
        f = int(features)
        self.key = nnx.Linear(f, f, rngs=rngs)
        self.query = nnx.Param(jax.random.normal(rngs.params(), (f,)) / jnp.sqrt(f))
        self.value = nnx.Param(jax.random.normal(rngs.params(), (f,)) / jnp.sqrt(f))

    def __call__(self, s, mask, charge):
        score = jnp.where(mask, jax.nn.softplus(self.key(s) @ self.query[...]), 0.0)
        weight = score / jnp.maximum(jnp.sum(score), 1e-12)
        return s + jnp.asarray(total_charge(charge), s.dtype) * weight[:, None] * self.value[...]


class LongRangeAttention(ShortRange):
    """Short-range backbone + charge embedding + linear global attention (module
    docstring). Arguments as :class:`jaxlr.models.ShortRange`; ``n_attention``
    attention layers (default 1)."""

    def __init__(self, *args, n_attention=1, **kwargs):
        super().__init__(*args, **kwargs)
        if not (isinstance(n_attention, int) and n_attention >= 1):
            raise ValueError(f"n_attention must be a positive integer, got {n_attention!r}")
        self.hyper_items = self.hyper_items + (("n_attention", int(n_attention)),)
        f, hidden = self.hyper["features"], self.hyper["hidden"]
        rngs = nnx.Rngs(self.hyper["seed"] + 2)
        self.charge_embedding = ChargeEmbedding(f, rngs=rngs)
        self.query = nnx.List([nnx.Linear(f, f, rngs=rngs) for _ in range(n_attention)])
        self.key = nnx.List([nnx.Linear(f, f, rngs=rngs) for _ in range(n_attention)])
        self.value = nnx.List([nnx.Linear(f, f, rngs=rngs) for _ in range(n_attention)])
        self.update = nnx.List([_MLP((f, hidden, f), rngs=rngs) for _ in range(n_attention)])

    def features(self, positions, numbers, mask, pairs, cell, charge=0.0):
        s = super().features(positions, numbers, mask, pairs, cell)
        m = mask[:, None].astype(s.dtype)
        s = self.charge_embedding(s, mask, charge)  # the total charge, spread over atoms
        for q_map, k_map, v_map, upd in zip(self.query, self.key, self.value, self.update):
            q, k, v = _phi(q_map(s)), _phi(k_map(s)) * m, v_map(s) * m
            kv = k.T @ v  # (F, F): sum_j phi(k_j) v_j^T
            norm = q @ jnp.sum(k, axis=0)  # (N,); zero only for an empty (padding) structure
            msg = (q @ kv) / jnp.where(norm > 0, norm, 1.0)[:, None]
            s = s + upd(msg) * m
        return s

    def __call__(self, positions, numbers, mask, pairs, cell, charge, electrostatics):
        dtype = positions.dtype
        s = self.features(positions, numbers, mask, pairs, cell, charge).astype(dtype)
        atomic = self.energy_scale * self.energy_head(s)[:, 0] + self.species_energy[numbers]
        return {"energy": jnp.sum(jnp.where(mask, atomic, 0.0)), "charges": None}
