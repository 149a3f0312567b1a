"""A compact equivariant message-passing backbone (PaiNN-style; Schütt, Unke &
Gastegger 2021), written for jaxlr in flax.nnx.

Interface (any nnx module with this call can replace it): ``backbone(positions,
numbers, mask, pairs, cell=None) -> (scalars (N, F), vectors (N, 3, F))``, with
``pairs`` a :class:`jaxlr.neighbors.Pairs` FULL list (each ordered pair once) within
``cutoff``; padding atoms (``mask`` False) neither send nor receive messages.
Scalars are rotation invariant, vectors rotate with the structure.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlr.neighbors import pair_vectors

__all__ = ["PaiNN", "radial_basis", "cosine_cutoff"]


def cosine_cutoff(r, cutoff):
    """Smooth cutoff 1/2 (cos(pi r / rc) + 1) inside rc, 0 outside (C1 at rc)."""
    return jnp.where(r < cutoff, 0.5 * (jnp.cos(jnp.pi * r / cutoff) + 1.0), 0.0)


def radial_basis(r, cutoff, n_basis):
    """(P, n_basis) sin(n pi r / rc) / r, the zero-distance limit n pi / rc."""
    n = jnp.arange(1, n_basis + 1, dtype=r.dtype)
    safe = jnp.where(r > 0, r, 1.0)
    x = n[None, :] * jnp.pi * safe[:, None] / cutoff
    return jnp.where(r[:, None] > 0, jnp.sin(x) / safe[:, None], n[None, :] * jnp.pi / cutoff)


class _MLP(nnx.Module):
    def __init__(self, sizes, *, rngs):
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x):
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k < len(self.layers) - 1:
                x = nnx.silu(x)
        return x


class _Interaction(nnx.Module):
    def __init__(self, features, n_basis, *, rngs):
        self.features = features
        self.phi = _MLP((features, features, 3 * features), rngs=rngs)
        self.filter = nnx.Linear(n_basis, 3 * features, rngs=rngs)

    def __call__(self, s, v, pairs, rbf, unit, fcut, mask):
        f = self.features
        x = self.phi(s)[pairs.j] * self.filter(rbf) * fcut[:, None]  # (P, 3F)
        x = x * (pairs.mask & mask[pairs.j] & mask[pairs.i])[:, None]
        ds, dvv, dvs = x[:, :f], x[:, f : 2 * f], x[:, 2 * f :]
        dv = v[pairs.j] * dvv[:, None, :] + unit[:, :, None] * dvs[:, None, :]
        n = s.shape[0]
        s = s + jax.ops.segment_sum(ds, pairs.i, num_segments=n)
        v = v + jax.ops.segment_sum(dv, pairs.i, num_segments=n)
        return s, v


class _Update(nnx.Module):
    def __init__(self, features, *, rngs):
        self.features = features
        self.u = nnx.Linear(features, features, use_bias=False, rngs=rngs)
        self.w = nnx.Linear(features, features, use_bias=False, rngs=rngs)
        self.mlp = _MLP((2 * features, features, 3 * features), rngs=rngs)

    def __call__(self, s, v):
        f = self.features
        uv, wv = self.u(v), self.w(v)  # (N, 3, F)
        norm = jnp.sqrt(jnp.sum(wv * wv, axis=1) + 1e-12)
        a = self.mlp(jnp.concatenate([s, norm], axis=-1))
        a_vv, a_sv, a_ss = a[:, :f], a[:, f : 2 * f], a[:, 2 * f :]
        v = v + a_vv[:, None, :] * uv
        s = s + a_ss + a_sv * jnp.sum(uv * wv, axis=1)
        return s, v


class PaiNN(nnx.Module):
    """Equivariant message passing: species embedding, ``n_layers`` interaction +
    update blocks, sinc radial basis with a cosine cutoff.

    Args:
      features: width F of scalar and vector features.
      n_layers: message-passing blocks.
      cutoff: radial cutoff (Å); the pairs must cover it.
      n_basis: radial basis functions.
      max_number: largest atomic number embedded.
      rngs: ``nnx.Rngs``.
    """

    def __init__(self, features=32, n_layers=2, cutoff=5.0, n_basis=12, max_number=100, *, rngs):
        self.features = features
        self.cutoff = float(cutoff)
        self.n_basis = n_basis
        self.embed = nnx.Embed(max_number + 1, features, rngs=rngs)
        self.interactions = nnx.List(
            [_Interaction(features, n_basis, rngs=rngs) for _ in range(n_layers)]
        )
        self.updates = nnx.List([_Update(features, rngs=rngs) for _ in range(n_layers)])

    def __call__(self, positions, numbers, mask, pairs, cell=None):
        d = pair_vectors(positions, pairs, cell)
        r2 = jnp.sum(d * d, axis=-1)
        valid = pairs.mask & (r2 > 0)
        r = jnp.sqrt(jnp.where(valid, r2, 1.0))
        unit = jnp.where(valid[:, None], d / r[:, None], 0.0)
        rbf = radial_basis(jnp.where(valid, r, self.cutoff), self.cutoff, self.n_basis)
        fcut = jnp.where(valid, cosine_cutoff(r, self.cutoff), 0.0)
        s = self.embed(jnp.where(mask, numbers, 0)) * mask[:, None]
        s = s.astype(positions.dtype)
        v = jnp.zeros((positions.shape[0], 3, self.features), positions.dtype)
        for inter, upd in zip(self.interactions, self.updates):
            s, v = inter(s, v, pairs, rbf, unit, fcut, mask)
            s, v = upd(s, v)
            s, v = s * mask[:, None], v * mask[:, None, None]
        return s, v
