"""Training: weighted losses, optax, size-bucketed jit, data parallelism, checkpoints.

:func:`fit` trains a model of :mod:`jaxlr.models` on a list of
:class:`jaxlr.data.Frame` and writes a run folder::

    RUN/config.json        TrainConfig, model name and hyper-parameters, species, split
    RUN/checkpoints/last/  orbax checkpoint of the latest epoch (params, optimizer, counters)
    RUN/checkpoints/best/  orbax checkpoint of the best validation epoch
    RUN/history.json       per-epoch train / validation losses and RMSEs
    RUN/metrics.json       test-set MAE / RMSE per property, throughput

The loss is ``sum_k w_k MSE_k`` over the labels present: energy per atom (eV/atom),
forces (eV/Å), stress (eV/Å^3), charges (e) and dipole (e·Å); charges and dipole
only for models that fit charges (:class:`jaxlr.models.ExplicitCharges`). Batches are
padded into a few size buckets (the step compiles once per bucket) and split over all
``jax.devices()`` along the batch axis (``jax.sharding``; the result equals one
device's up to summation order). A non-finite loss stops training with
:class:`TrainingDiverged`, the last good checkpoint kept. :func:`load` rebuilds a
trained model from a run folder, :func:`evaluate` scores it on frames.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxlr import data as _data
from jaxlr.models import _potentials as _pot
from jaxlr.neighbors import Pairs

__all__ = [
    "TrainConfig",
    "TrainingDiverged",
    "CheckpointError",
    "fit",
    "load",
    "evaluate",
    "predict_frames",
    "PROPERTIES",
]

#: property -> (display unit, factor from library units)
PROPERTIES = {
    "energy": ("meV/atom", 1e3),
    "forces": ("meV/Å", 1e3),
    "stress": ("meV/Å^3", 1e3),
    "charges": ("me", 1e3),
    "dipole": ("me·Å", 1e3),
    "polarization": ("me/Å^2", 1e3),
    "born_charges": ("me", 1e3),
    "wannier_centres": ("mÅ", 1e3),
}


#: the loss terms of the charges-first phase (``TrainConfig.charges_first_epochs``)
CHARGE_TERMS = ("charges", "dipole", "polarization", "born_charges", "wannier_centres")


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the run folder keeps the last good checkpoint."""


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupted, truncated or does not match the model."""


@dataclasses.dataclass
class TrainConfig:
    """Training settings (JSON-serialisable; ``TrainConfig.from_dict`` validates).

    Attributes:
      model: ``short_range``, ``explicit``, ``latent``, ``latent_dipoles``, ``wannier``,
        ``qeq``, ``lode``, ``attention`` or ``ewald-mp``.
      model_args: hyper-parameters of the model (see :class:`jaxlr.models.ShortRange`).
      epochs: maximum number of epochs. batch_size: structures per step (rounded up
        to a multiple of the device count).
      learning_rate: peak rate; linear warm-up over ``warmup_epochs``, then cosine
        decay to ``learning_rate * final_lr_fraction``.
      optimizer: ``adam`` or ``adamw`` (with ``weight_decay``). clip_norm: global
        gradient-norm clipping.
      weights: loss weights per property (energy per atom, forces, stress, charges,
        dipole, polarization compared on the nearest branch, born_charges; the last
        three need a charge model and REF_ labels, Born charges cost a
        forward-over-reverse derivative per step; wannier_centres (Å^2) trains a
        Wannier model's centroids against ``REF_wannier_centres``).
      patience: epochs without validation improvement before stopping.
      split: train / validation / test fractions; seed: split, shuffling and
        initialisation seed.
      n_buckets: padded sizes per kind. accuracy: relative Ewald accuracy of the
        charge models in cells.
      charges_first_epochs: the first this many epochs train only the charge-like
        terms (charges, dipole, polarization, Born charges, Wannier centroids), then
        every term jointly (4G-HDNNP's charges-first schedule, e.g. for QEq); the
        best-epoch tracking restarts when the energy terms switch on. 0: joint from
        the start.
    """

    model: str = "latent"
    model_args: dict = dataclasses.field(default_factory=dict)
    epochs: int = 100
    batch_size: int = 16
    learning_rate: float = 3e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    warmup_epochs: int = 2
    final_lr_fraction: float = 0.02
    clip_norm: float = 10.0
    weights: dict = dataclasses.field(
        default_factory=lambda: {
            "energy": 100.0,
            "forces": 1.0,
            "stress": 100.0,
            "charges": 100.0,
            "dipole": 0.0,
            "polarization": 0.0,
            "born_charges": 0.0,
            "wannier_centres": 1e4,
        }
    )
    patience: int = 30
    split: tuple = (0.8, 0.1, 0.1)
    seed: int = 0
    n_buckets: int = 2
    accuracy: float = 1e-5
    charges_first_epochs: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training config key(s) {unknown}; known: {sorted(names)}")
        cfg = cls(**{k: (tuple(v) if k == "split" else v) for k, v in d.items()})
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["split"] = list(self.split)
        return d

    def validate(self):
        if self.model not in _pot.MODELS:
            raise ValueError(f"model must be one of {list(_pot.MODELS)}, got {self.model!r}")
        for name in ("epochs", "batch_size", "patience", "n_buckets"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not (isinstance(self.warmup_epochs, int) and self.warmup_epochs >= 0):
            raise ValueError(f"warmup_epochs must be an integer >= 0, got {self.warmup_epochs!r}")
        if not 0 <= self.final_lr_fraction <= 1:
            raise ValueError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction!r}")
        if not (self.clip_norm > 0 and self.weight_decay >= 0):
            raise ValueError(
                f"clip_norm must be > 0 and weight_decay >= 0, got {self.clip_norm!r}, "
                f"{self.weight_decay!r}"
            )
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        bad = sorted(set(self.weights) - set(PROPERTIES))
        if bad:
            raise ValueError(f"weights has unknown properties {bad}; known: {list(PROPERTIES)}")
        if any(not (w >= 0) for w in self.weights.values()):
            raise ValueError(f"weights must be non-negative, got {self.weights}")
        if len(self.split) != 3:
            raise ValueError(
                f"split must be 3 fractions (train, validation, test), got {self.split}"
            )
        if not 0 < self.accuracy < 1:
            raise ValueError(f"accuracy must be in (0, 1), got {self.accuracy}")
        c = self.charges_first_epochs
        if not (isinstance(c, int) and 0 <= c < self.epochs):
            raise ValueError(
                f"charges_first_epochs must be an integer in [0, epochs), got {c!r} "
                f"(epochs={self.epochs})"
            )


# ------------------------------------------------------------------ file helpers


def _write_json(path: Path, obj) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(obj, handle, indent=1)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_json(path: Path, what: str):
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not valid JSON ({err})") from err


# ------------------------------------------------------------------ batches on device


_ARRAYS = (
    "positions",
    "numbers",
    "mask",
    "cell",
    "charge",
    "weight",
    "energy",
    "forces",
    "stress",
    "charges",
    "dipole",
    "field",
    "polarization",
    "born_charges",
    "wannier_centres",
    "fragment",
    "fragment_charge",
    "has_energy",
    "has_forces",
    "has_stress",
    "has_charges",
    "has_dipole",
    "has_polarization",
    "has_born_charges",
    "has_wannier_centres",
    "pair_i",
    "pair_j",
    "pair_shifts",
    "pair_mask",
)


def _device_batch(batch: _data.Batch, dtype, sharding=None) -> dict:
    out = {}
    for name in _ARRAYS:
        x = np.asarray(getattr(batch, name))
        if x.dtype.kind == "f":
            x = x.astype(dtype)
        out[name] = x
    if sharding is not None:
        return jax.device_put(out, sharding)
    return jax.tree.map(jnp.asarray, out)


def _predict_batch(model, b, electrostatics, cutoff, born=False):
    field = b["field"] if model.has_charges else None

    fragments = b["fragment_charge"].shape[-1] > 1  # static: the batch has fragments

    def one(pos, num, mask, pi, pj, ps, pm, cell, charge, e_field, frag, frag_q):
        pairs = Pairs(pi, pj, ps, pm, cutoff, False)
        if fragments:
            charge = _pot.Fragments(frag, frag_q)
        return _pot.predict(
            model, pos, num, mask, pairs, cell, charge, electrostatics, e_field, born
        )

    return jax.vmap(one)(
        b["positions"],
        b["numbers"],
        b["mask"],
        b["pair_i"],
        b["pair_j"],
        b["pair_shifts"],
        b["pair_mask"],
        b["cell"],
        b["charge"],
        field,
        b["fragment"],
        b["fragment_charge"],
    )


def _branch_difference(d, cell):
    """Polarization differences (B, 3) reduced to the nearest branch of each cell's
    quantum lattice (fractional components within 1/2)."""
    volume = jnp.abs(jnp.linalg.det(cell))
    safe = jnp.where(volume[:, None, None] > 0, cell, jnp.eye(3, dtype=d.dtype))
    vol = jnp.abs(jnp.linalg.det(safe))
    f = vol[:, None] * jnp.einsum("bi,bij->bj", d, jnp.linalg.inv(safe))
    f = f - jax.lax.stop_gradient(jnp.round(f))
    return jnp.einsum("bj,bjk->bk", f, safe) / vol[:, None]


def _errors(pred, b):
    """Per-property (sum of squared errors, sum of absolute errors, count)."""
    w = b["weight"]
    n = jnp.maximum(jnp.sum(b["mask"], axis=1), 1)
    out = {}
    e = (pred["energy"] - b["energy"]) / n
    sel = w * b["has_energy"]
    out["energy"] = (jnp.sum(sel * e * e), jnp.sum(sel * jnp.abs(e)), jnp.sum(sel))
    atom = b["mask"] * (w * b["has_forces"])[:, None]
    d = pred["forces"] - b["forces"]
    out["forces"] = (
        jnp.sum(atom[..., None] * d * d),
        jnp.sum(atom[..., None] * jnp.abs(d)),
        3 * jnp.sum(atom),
    )
    sel = w * b["has_stress"]
    d = pred["stress"] - b["stress"]
    out["stress"] = (
        jnp.sum(sel[:, None, None] * d * d),
        jnp.sum(sel[:, None, None] * jnp.abs(d)),
        9 * jnp.sum(sel),
    )
    atom = b["mask"] * (w * b["has_charges"])[:, None]
    d = pred["charges"] - b["charges"]
    out["charges"] = (jnp.sum(atom * d * d), jnp.sum(atom * jnp.abs(d)), jnp.sum(atom))
    sel = w * b["has_dipole"]
    d = pred["dipole"] - b["dipole"]
    out["dipole"] = (
        jnp.sum(sel[:, None] * d * d),
        jnp.sum(sel[:, None] * jnp.abs(d)),
        3 * jnp.sum(sel),
    )
    sel = w * b["has_polarization"]
    d = _branch_difference(pred["polarization"] - b["polarization"], b["cell"])
    out["polarization"] = (
        jnp.sum(sel[:, None] * d * d),
        jnp.sum(sel[:, None] * jnp.abs(d)),
        3 * jnp.sum(sel),
    )
    if "born_charges" in pred:
        atom = b["mask"] * (w * b["has_born_charges"])[:, None]
        d = pred["born_charges"] - b["born_charges"]
        out["born_charges"] = (
            jnp.sum(atom[..., None, None] * d * d),
            jnp.sum(atom[..., None, None] * jnp.abs(d)),
            9 * jnp.sum(atom),
        )
    if "wannier_centres" in pred:
        atom = (b["mask"] & pred["centre_mask"]) * (w * b["has_wannier_centres"])[:, None]
        d = _image_difference(pred["wannier_centres"] - b["wannier_centres"], b["cell"])
        out["wannier_centres"] = (
            jnp.sum(atom[..., None] * d * d),
            jnp.sum(atom[..., None] * jnp.abs(d)),
            3 * jnp.sum(atom),
        )
    return out


def _image_difference(d, cell):
    """Position differences (B, n, 3) reduced to the nearest lattice image of each
    periodic structure's cell (molecules, with a zero cell, unchanged)."""
    volume = jnp.abs(jnp.linalg.det(cell))
    periodic = volume > 0
    safe = jnp.where(periodic[:, None, None], cell, jnp.eye(3, dtype=d.dtype))
    f = jnp.einsum("bni,bij->bnj", d, jnp.linalg.inv(safe))
    f = f - jax.lax.stop_gradient(jnp.where(periodic[:, None, None], jnp.round(f), 0.0))
    return jnp.einsum("bnj,bjk->bnk", f, safe)


def _loss(errors, weights):
    total = 0.0
    for name, w in weights.items():
        if w > 0:
            sq, _, count = errors[name]
            total = total + w * sq / jnp.maximum(count, 1)
    return total


class _Trainer:
    """Jitted steps closed over the model's graph, the optimizer and loss weights."""

    def __init__(self, graphdef, tx, weights, cutoff):
        def loss_fn(params, b, el):
            model = nnx.merge(graphdef, params)
            born = weights.get("born_charges", 0.0) > 0
            err = _errors(_predict_batch(model, b, el, cutoff, born), b)
            return _loss(err, weights), err

        def train_step(params, opt_state, b, el):
            (loss, err), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, b, el)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss, err

        def eval_step(params, b, el):
            return loss_fn(params, b, el)

        self.train_step = jax.jit(train_step, static_argnums=3)
        self.eval_step = jax.jit(eval_step, static_argnums=2)


@functools.lru_cache(maxsize=16)
def _predictor(graphdef, cutoff, born=False):
    """Jitted batch prediction for a model graph (cached: repeated predict_frames
    calls on one model compile once per bucket, not once per call)."""

    def predict_step(params, b, el):
        return _predict_batch(nnx.merge(graphdef, params), b, el, cutoff, born)

    return jax.jit(predict_step, static_argnums=2)


# ------------------------------------------------------------------ checkpoints


def _checkpoint_tree(params, opt_state, counters):
    leaves = jax.tree.leaves((params, opt_state))
    tree = {f"leaf{k:05d}": np.asarray(x) for k, x in enumerate(leaves)}
    tree["counters"] = np.asarray(
        [counters[k] for k in ("epoch", "step", "bad_epochs", "best_val")], np.float64
    )
    return tree


def save_checkpoint(folder: Path, params, opt_state, counters) -> None:
    """Write an orbax checkpoint (atomic: orbax writes a temporary folder and renames
    it) replacing ``folder``."""
    import orbax.checkpoint as ocp

    folder = Path(folder).absolute()
    tmp = folder.with_name(folder.name + ".saving")
    if tmp.exists():
        shutil.rmtree(tmp)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp, _checkpoint_tree(params, opt_state, counters))
        ckpt.wait_until_finished()
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)


def restore_checkpoint(folder: Path, params, opt_state):
    """(params, opt_state, counters) from ``folder``, shaped like the given templates;
    a missing, corrupted, truncated or mismatched checkpoint raises
    :class:`CheckpointError`."""
    import orbax.checkpoint as ocp

    folder = Path(folder).absolute()
    if not folder.exists():
        old = folder.with_name(folder.name + ".old")
        if old.exists():  # interrupted between the two renames of save_checkpoint
            folder = old
        else:
            raise CheckpointError(f"no checkpoint at {folder}")
    template_leaves, treedef = jax.tree.flatten((params, opt_state))
    target = _checkpoint_tree(
        params, opt_state, {"epoch": 0, "step": 0, "bad_epochs": 0, "best_val": 0.0}
    )
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), target)
    try:
        with ocp.StandardCheckpointer() as ckpt:
            tree = ckpt.restore(folder, abstract)
    except Exception as err:  # orbax / tensorstore raise many kinds
        raise CheckpointError(
            f"checkpoint {folder} is corrupted, truncated or does not match this model "
            f"({type(err).__name__}: {str(err)[:300]})"
        ) from err
    leaves = []
    for k, ref in enumerate(template_leaves):
        x = np.asarray(tree[f"leaf{k:05d}"])
        if x.shape != np.shape(ref) or (x.dtype.kind == "f" and not np.all(np.isfinite(x))):
            raise CheckpointError(f"checkpoint {folder}: entry {k} is malformed or non-finite")
        leaves.append(jnp.asarray(x, dtype=jnp.asarray(ref).dtype))
    params, opt_state = jax.tree.unflatten(treedef, leaves)
    c = np.asarray(tree["counters"])
    counters = {"epoch": int(c[0]), "step": int(c[1]), "bad_epochs": int(c[2]), "best_val": c[3]}
    return params, opt_state, counters


# ------------------------------------------------------------------ setup


def _species(frames):
    return sorted({int(z) for f in frames for z in np.unique(f.numbers)})


def _reference_energies(frames, species):
    """Least-squares per-element energies (eV) from the frames with energies."""
    rows = [f for f in frames if f.energy is not None]
    if not rows:
        return np.zeros(len(species))
    a = np.array([[np.sum(f.numbers == z) for z in species] for f in rows], np.float64)
    e = np.array([f.energy for f in rows])
    coef, *_ = np.linalg.lstsq(a, e, rcond=None)
    return coef


def _charge_fit(frames, species):
    """``(per-element energies, slope)``: the energies fitted beside a term linear in
    the total charge (slope eV/e); None when the frames do not pin the slope down (one
    total charge, or charge collinear with composition, as Na8Cl8 vs Na9Cl8+)."""
    rows = [f for f in frames if f.energy is not None]
    if len(rows) < 2 or np.ptp([f.charge for f in rows]) == 0:
        return None
    a = np.array([[np.sum(f.numbers == z) for z in species] + [f.charge] for f in rows])
    if np.linalg.matrix_rank(a) < a.shape[1]:
        return None
    coef, *_ = np.linalg.lstsq(a, np.array([f.energy for f in rows]), rcond=None)
    return coef[:-1], float(coef[-1])


def _initialise(model, frames, species):
    """Species reference energies, energy scale, mean species charges and, for a
    charge-aware local model, its charge energy (the energy's slope in Q)."""
    e_ref = _reference_energies(frames, species)
    if getattr(model, "charge_aware", False) and hasattr(model, "species_charge_energy"):
        fit = _charge_fit(frames, species)
        if fit is not None:
            e_ref, slope = fit
            table = np.zeros(_pot.MAX_NUMBER + 1)
            table[species] = slope
            model.species_charge_energy[...] = jnp.asarray(
                table, model.species_charge_energy[...].dtype
            )
    table = np.zeros(_pot.MAX_NUMBER + 1)
    table[species] = e_ref
    model.species_energy[...] = jnp.asarray(table, model.species_energy[...].dtype)
    forces = [f.forces for f in frames if f.forces is not None]
    if forces:
        scale = float(np.sqrt(np.mean(np.concatenate([x.ravel() for x in forces]) ** 2)))
    else:
        res = [
            (f.energy - sum(table[z] for z in f.numbers)) / f.n_atoms
            for f in frames
            if f.energy is not None
        ]
        scale = float(np.std(res)) if res else 1.0
    model.energy_scale[...] = jnp.asarray(max(scale, 1e-3), model.energy_scale[...].dtype)
    if model.has_charges and model.fits_charges:
        q = np.zeros(_pot.MAX_NUMBER + 1)
        labelled = [f for f in frames if f.charges is not None]
        for z in species:
            vals = [f.charges[f.numbers == z] for f in labelled]
            vals = np.concatenate(vals) if vals else np.zeros(0)
            q[z] = vals.mean() if vals.size else 0.0
        if hasattr(model, "species_chi"):  # QEq: chi_Z = -J_Z q_Z gives q_Z without Coulomb
            hard = np.asarray(model.hardness(jnp.arange(_pot.MAX_NUMBER + 1)))
            model.species_chi[...] = jnp.asarray(-hard * q, model.species_chi[...].dtype)
        else:
            model.species_charge[...] = jnp.asarray(q, model.species_charge[...].dtype)


def _electrostatics(model, frames, accuracy, cutoff):
    """Static route per kind present in ``frames`` (``cutoff``: the pair lists')."""
    kinds = sorted({_data.kind(f) for f in frames})
    return {
        k: model.route(
            [f for f in frames if _data.kind(f) == k], k, cutoff=cutoff, accuracy=accuracy
        )
        for k in kinds
    }


def _optimizer(cfg: TrainConfig, steps_per_epoch: int):
    total = max(cfg.epochs * steps_per_epoch, 2)
    warm = max(min(cfg.warmup_epochs * steps_per_epoch, total - 1), 1)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=cfg.learning_rate * 0.01,
        peak_value=cfg.learning_rate,
        warmup_steps=warm,
        decay_steps=total,
        end_value=cfg.learning_rate * cfg.final_lr_fraction,
    )
    if cfg.optimizer == "adamw":
        opt = optax.adamw(schedule, weight_decay=cfg.weight_decay)
    else:
        opt = optax.adam(schedule)
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)


def _weights(cfg: TrainConfig, model, frames):
    w = {k: float(cfg.weights.get(k, 0.0)) for k in PROPERTIES}
    fielded = [k for k, f in enumerate(frames) if f.field is not None and np.any(f.field)]
    if fielded and not model.has_charges:
        raise ValueError(
            f"frame {fielded[0]} has a nonzero info['field'] but model {cfg.model!r} has no "
            "charges to couple to it; use a charge model (explicit or latent)"
        )
    if not model.has_charges:
        w["polarization"] = w["born_charges"] = 0.0
    for name in ("polarization", "born_charges"):
        if w[name] > 0 and not any(getattr(f, name) is not None for f in frames):
            raise ValueError(f"weight {name!r} is positive but no training frame has REF_{name}")
    if hasattr(model, "check_frames"):  # e.g. the Wannier model's charge bookkeeping
        model.check_frames(frames, "training data")
    if not getattr(model, "fits_centres", False):
        w["wannier_centres"] = 0.0
    elif w["wannier_centres"] > 0 and not any(f.wannier_centres is not None for f in frames):
        w["wannier_centres"] = 0.0  # trained from energies, forces and dipoles alone
    if not model.has_charges:
        w["charges"] = w["dipole"] = 0.0
    elif not model.fits_charges:
        # latent charges never see charge labels; a dipole weight set by the user is
        # honoured (dipoles constrain latent charges, as in LES-style training)
        w["charges"] = 0.0
    else:
        has_q = any(f.charges is not None for f in frames) and w["charges"] > 0
        has_d = any(f.dipole is not None for f in frames) and w["dipole"] > 0
        if not (has_q or has_d):
            raise ValueError(
                f"model {cfg.model!r} fits charges but the training frames have no "
                "REF_charges (or REF_dipole with a positive 'dipole' weight)"
            )
    return w


def _mesh_sharding():
    devices = np.array(jax.devices())
    mesh = jax.sharding.Mesh(devices, ("data",))
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return len(devices), data, replicated


class _Setup:
    """Everything a run derives from (config, frames): model, buckets, routes."""

    def __init__(self, cfg: TrainConfig, frames, *, species=None, initialise=True):
        if not frames:
            raise ValueError("no frames to train on")
        self.cfg = cfg
        self.model = _pot.build(cfg.model, **cfg.model_args)
        self.species = species or _species(frames)
        self.cutoff = _pot.pair_cutoff(self.model, frames, cfg.accuracy)
        self.buckets = _data.make_buckets(frames, self.cutoff, cfg.n_buckets)
        self.electrostatics = _electrostatics(self.model, frames, cfg.accuracy, self.cutoff)
        self.n_devices, self.data_sharding, self.replicated = _mesh_sharding()
        self.batch_size = -(-cfg.batch_size // self.n_devices) * self.n_devices
        self.dtype = jnp.asarray(1.0).dtype


def _batches(setup, frames, *, shuffle, seed):
    for batch in _data.batches(frames, setup.batch_size, setup.buckets, shuffle=shuffle, seed=seed):
        yield batch.kind, _device_batch(batch, setup.dtype, setup.data_sharding)


def _accumulate(total, err):
    for k, (sq, ab, c) in err.items():
        t = total.setdefault(k, [0.0, 0.0, 0.0])
        t[0] += float(sq)
        t[1] += float(ab)
        t[2] += float(c)


def _summary(total):
    out = {}
    for k, (sq, ab, c) in total.items():
        if c > 0:
            out[k] = {"rmse": math.sqrt(sq / c), "mae": ab / c, "count": int(c)}
    return out


def _evaluate_loss(trainer, setup, params, frames):
    total, loss, n = {}, 0.0, 0
    for kind, b in _batches(setup, frames, shuffle=False, seed=0):
        value, err = trainer.eval_step(params, b, setup.electrostatics[kind])
        real = int(np.sum(np.asarray(b["weight"]) > 0))
        loss += float(value) * real
        n += real
        _accumulate(total, err)
    return loss / max(n, 1), _summary(total)


# ------------------------------------------------------------------ fit


def fit(
    frames,
    config: TrainConfig | dict | None = None,
    out=None,
    *,
    resume=False,
    progress=True,
    test_frames=None,
    stop_after=None,
):
    """Train a model on ``frames`` and write a run folder ``out``.

    Args:
      frames: list of :class:`jaxlr.data.Frame` with labels; split by ``config.split``
        (seeded) into train / validation / test.
      config: :class:`TrainConfig` or a dict of its fields.
      out: run folder (created; must be empty unless ``resume``).
      resume: continue the run in ``out`` from its last checkpoint (its config.json
        wins over ``config``).
      progress: show a tqdm progress bar with live losses.
      test_frames: optional explicit test set (then the split's test part is unused).
      stop_after: train at most this many epochs in this call (a wall-time slice of a
        longer run; continue it with ``resume=True``). The learning-rate schedule
        follows ``config.epochs`` either way.

    Returns:
      dict with ``model`` (the best nnx model), ``metrics`` (test MAE / RMSE per
      property in library units), ``history`` and ``run`` (the folder).

    Raises:
      TrainingDiverged: the loss became non-finite (the last checkpoint is kept).
    """
    from tqdm.auto import tqdm

    out = Path(out or "run")
    if resume:
        saved = _read_json(out / "config.json", "run config")
        cfg = TrainConfig.from_dict(saved["train"])
    else:
        cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config or {})
        cfg.validate()
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"run folder {out} exists and is not empty (resume=True?)")
        out.mkdir(parents=True, exist_ok=True)
    frames = list(frames)
    idx_train, idx_val, idx_test = _data.split(len(frames), cfg.split, seed=cfg.seed)
    train = [frames[i] for i in idx_train]
    val = [frames[i] for i in idx_val] or train
    test = list(test_frames) if test_frames is not None else [frames[i] for i in idx_test]
    setup = _Setup(cfg, frames)
    model = setup.model
    _initialise(model, train, setup.species)
    weights = _weights(cfg, model, train)
    steps_per_epoch = sum(1 for _ in _data.batches(train, setup.batch_size, setup.buckets))
    tx = _optimizer(cfg, steps_per_epoch)
    graphdef, params = nnx.split(model)
    params = jax.device_put(params, setup.replicated)
    opt_state = jax.device_put(tx.init(params), setup.replicated)
    trainer = _Trainer(graphdef, tx, weights, setup.cutoff)
    charge_trainer = None
    if cfg.charges_first_epochs:
        first = {k: (w if k in CHARGE_TERMS else 0.0) for k, w in weights.items()}
        if not any(first.values()):
            raise ValueError(
                "charges_first_epochs > 0 but no charge-like loss term is active for this "
                f"model and data (positive weights: {[k for k, w in weights.items() if w]}; "
                f"charge-like terms: {list(CHARGE_TERMS)})"
            )
        charge_trainer = _Trainer(graphdef, tx, first, setup.cutoff)
    counters = {"epoch": 0, "step": 0, "bad_epochs": 0, "best_val": math.inf}
    history = []
    ckpt = out / "checkpoints"
    if resume:
        params, opt_state, counters = restore_checkpoint(ckpt / "last", params, opt_state)
        params = jax.device_put(params, setup.replicated)
        opt_state = jax.device_put(opt_state, setup.replicated)
        if (out / "history.json").exists():
            history = _read_json(out / "history.json", "history")[: counters["epoch"]]
    else:
        ckpt.mkdir(exist_ok=True)
        _write_json(
            out / "config.json",
            {
                "train": cfg.to_dict(),
                "model": {"name": cfg.model, "class": model.name, "hyper": model.hyper},
                "species": setup.species,
                "n_frames": {"train": len(train), "validation": len(val), "test": len(test)},
                "devices": setup.n_devices,
                "dtype": str(np.dtype(setup.dtype)),
            },
        )
    seen = 0
    t_train = 0.0
    first_epoch = counters["epoch"]
    for epoch in range(counters["epoch"], cfg.epochs):
        if counters["bad_epochs"] >= cfg.patience:  # a resumed run that had stopped early
            break
        active = trainer
        if epoch < cfg.charges_first_epochs:
            active = charge_trainer
        elif epoch == cfg.charges_first_epochs > 0:  # energies switch on: a new loss
            counters["best_val"], counters["bad_epochs"] = math.inf, 0
        total, losses = {}, []
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"{model.name} epoch {epoch + 1}/{cfg.epochs}",
            disable=not progress,
            leave=False,
        )
        t0 = time.perf_counter()
        for kind, b in _batches(setup, train, shuffle=True, seed=cfg.seed * 100003 + epoch):
            new_params, new_opt, loss, err = active.train_step(
                params, opt_state, b, setup.electrostatics[kind]
            )
            loss = float(loss)
            if not math.isfinite(loss):
                bar.close()
                kept = (
                    f"the last good checkpoint is {ckpt / 'last'}"
                    if (ckpt / "last").exists()
                    else "no epoch completed, so no checkpoint was written"
                )
                raise TrainingDiverged(
                    f"non-finite training loss ({loss}) at epoch {epoch + 1}, step "
                    f"{counters['step'] + 1}; {kept} (lower learning_rate or clip_norm, "
                    "or check the data)"
                )
            params, opt_state = new_params, new_opt
            counters["step"] += 1
            seen += int(np.sum(np.asarray(b["weight"]) > 0))
            losses.append(loss)
            _accumulate(total, err)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}")
        bar.close()
        t_train += time.perf_counter() - t0
        val_loss, val_metrics = _evaluate_loss(active, setup, params, val)
        if not math.isfinite(val_loss):
            raise TrainingDiverged(
                f"non-finite validation loss at epoch {epoch + 1}; the last good checkpoint "
                f"is {ckpt / 'last'}"
            )
        counters["epoch"] = epoch + 1
        improved = val_loss < counters["best_val"]
        if improved:
            counters["best_val"] = val_loss
            counters["bad_epochs"] = 0
            save_checkpoint(ckpt / "best", params, opt_state, counters)
        else:
            counters["bad_epochs"] += 1
        save_checkpoint(ckpt / "last", params, opt_state, counters)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                "val_loss": val_loss,
                "train": _summary(total),
                "val": val_metrics,
                "seconds": time.perf_counter() - t0,
            }
        )
        _write_json(out / "history.json", history)
        if progress:
            rm = {k: v["rmse"] * PROPERTIES[k][1] for k, v in val_metrics.items()}
            text = ", ".join(f"{k} {v:.3g} {PROPERTIES[k][0]}" for k, v in rm.items())
            tqdm.write(f"{model.name} epoch {epoch + 1}: val loss {val_loss:.4g} ({text})")
        if counters["bad_epochs"] >= cfg.patience:
            break
        if stop_after is not None and epoch + 1 - first_epoch >= stop_after:
            break
    best, _, _ = restore_checkpoint(ckpt / "best", params, opt_state)
    model = nnx.merge(graphdef, best)
    model.trained_species = tuple(setup.species)
    t0 = time.perf_counter()
    metrics = evaluate_model(model, test, accuracy=cfg.accuracy)
    metrics["throughput"] = {
        "train_structures_per_s": seen / t_train if t_train > 0 else None,
        "backend": jax.default_backend(),
        "devices": setup.n_devices,
        "test_seconds": time.perf_counter() - t0,
    }
    metrics["epochs"] = counters["epoch"]
    _write_json(out / "metrics.json", metrics)
    return {"model": model, "metrics": metrics, "history": history, "run": out, "test": test}


# ------------------------------------------------------------------ inference


def predict_frames(model, frames, *, batch_size=16, accuracy=1e-5, born_charges=False):
    """Predictions of ``model`` for ``frames``, in input order: a list of dicts with
    ``energy`` (eV), ``forces`` (N, 3), ``stress`` (3, 3; cells, else None),
    ``charges`` (N,), ``dipole`` (3,; molecules), ``polarization`` (3,; cells, branch
    nearest zero) for charge models (else None), and with ``born_charges=True``
    ``born_charges`` (N, 3, 3) e. A frame's ``field`` (V/Å) enters through the
    electric enthalpy (``energy`` is then ``U - mu . field``)."""
    if born_charges and not model.has_charges:
        raise ValueError("born_charges=True needs a charge model (explicit or latent)")
    frames = list(frames)
    if not frames:
        return []
    n_devices, data_sharding, replicated = _mesh_sharding()
    batch_size = -(-batch_size // n_devices) * n_devices
    cutoff = _pot.pair_cutoff(model, frames, accuracy)
    buckets = _data.make_buckets(frames, cutoff, 2)
    electrostatics = _electrostatics(model, frames, accuracy, cutoff)
    dtype = jnp.asarray(1.0).dtype
    graphdef, params = nnx.split(model)
    predict_step = _predictor(graphdef, cutoff, bool(born_charges))
    params = jax.device_put(params, replicated)
    groups = {}
    for k, f in enumerate(frames):
        groups.setdefault(buckets.key(f, k), []).append(k)
    result = [None] * len(frames)
    for key, idx in groups.items():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            batch = _data.pad(
                [frames[i] for i in chunk],
                key[1],
                batch_size,
                cutoff=buckets.cutoff,
                capacity=buckets.capacities[key],
            )
            b = _device_batch(batch, dtype, data_sharding)
            out = jax.tree.map(np.asarray, predict_step(params, b, electrostatics[key[0]]))
            for slot, i in enumerate(chunk):
                n, periodic = frames[i].n_atoms, frames[i].periodic
                result[i] = {
                    "energy": float(out["energy"][slot]),
                    "forces": out["forces"][slot, :n],
                    "stress": out["stress"][slot] if periodic else None,
                    "charges": out["charges"][slot, :n] if model.has_charges else None,
                    "dipole": out["dipole"][slot] if model.has_charges and not periodic else None,
                    "polarization": (
                        out["polarization"][slot] if model.has_charges and periodic else None
                    ),
                }
                if "wannier_centres" in out:
                    result[i]["wannier_centres"] = out["wannier_centres"][slot, :n]
                    result[i]["centre_mask"] = out["centre_mask"][slot, :n]
                if getattr(model, "predicts_dipoles", False):
                    result[i]["atomic_dipoles"] = out["atomic_dipoles"][slot, :n]
                if born_charges:
                    result[i]["born_charges"] = out["born_charges"][slot, :n]
    return result


def metrics_from(predictions, frames) -> dict:
    """MAE / RMSE per property (library units; energy per atom) and, for charges, R^2."""
    acc = {}
    for p, f in zip(predictions, frames):
        for name in PROPERTIES:
            ref, val = getattr(f, name), p.get(name)
            if ref is None or val is None:
                continue
            d = np.ravel(np.asarray(val) - np.asarray(ref))
            if name == "wannier_centres":  # the atoms that carry a centroid
                diff = np.asarray(val) - np.asarray(ref)
                if f.periodic:
                    frac = diff @ np.linalg.inv(f.cell)
                    diff = (frac - np.round(frac)) @ f.cell
                d = np.ravel(diff[np.asarray(p["centre_mask"], bool)])
            if name == "polarization":  # compared on the nearest branch
                d = np.asarray(_branch_difference(jnp.asarray(d)[None], jnp.asarray(f.cell)[None]))[
                    0
                ]
            if name == "energy":
                d = d / f.n_atoms
            acc.setdefault(name, []).append(d)
    out = {}
    for name, parts in acc.items():
        d = np.concatenate(parts)
        out[name] = {
            "rmse": float(np.sqrt(np.mean(d * d))),
            "mae": float(np.mean(np.abs(d))),
            "count": int(d.size),
        }
    both = [
        (p["charges"], f.charges)
        for f, p in zip(frames, predictions)
        if f.charges is not None and p.get("charges") is not None
    ]
    if both:
        pq = np.concatenate([a for a, _ in both])
        rq = np.concatenate([b for _, b in both])
        out["charges"]["r2"] = float(1 - np.sum((pq - rq) ** 2) / np.sum((rq - rq.mean()) ** 2))
        # latent charges of neutral structures are defined up to a global sign
        flip = -pq
        out["charges"]["mae_up_to_sign"] = float(
            min(np.mean(np.abs(pq - rq)), np.mean(np.abs(flip - rq)))
        )
        out["charges"]["pearson_r2"] = float(np.corrcoef(pq, rq)[0, 1] ** 2)
    return out


def evaluate_model(model, frames, *, accuracy=1e-5) -> dict:
    """Test metrics of ``model`` on ``frames`` (see :func:`metrics_from`)."""
    if not frames:
        return {}
    born = model.has_charges and any(f.born_charges is not None for f in frames)
    preds = predict_frames(model, frames, accuracy=accuracy, born_charges=born)
    return metrics_from(preds, frames)


def load(run, *, which="best", backbone=None):
    """The trained model of a run folder (``which``: ``best`` or ``last``)."""
    run = Path(run)
    saved = _read_json(run / "config.json", "run config")
    hyper = dict(saved["model"]["hyper"])
    if backbone is not None:
        hyper["backbone"] = backbone
    model = _pot.build(saved["model"]["name"], **hyper)
    model.trained_species = tuple(saved["species"])
    graphdef, params = nnx.split(model)
    cfg = TrainConfig.from_dict(saved["train"])
    tx = _optimizer(cfg, 1)
    params, _, _ = restore_checkpoint(run / "checkpoints" / which, params, tx.init(params))
    model = nnx.merge(graphdef, params)
    model.trained_species = tuple(saved["species"])
    return model


def check_species(model, frames, source="data"):
    """Raise naming the frame when it holds an element the model was not trained on."""
    known = set(getattr(model, "trained_species", ()) or ())
    if not known:
        return
    for k, f in enumerate(frames):
        bad = sorted(set(int(z) for z in f.numbers) - known)
        if bad:
            raise ValueError(
                f"{source}: frame {k} has atomic number(s) {bad} the model was not trained on "
                f"(trained: {sorted(known)})"
            )


def evaluate(run, frames, *, which="best") -> tuple[dict, list]:
    """(metrics, predictions) of the run's model on ``frames``."""
    model = load(run, which=which)
    check_species(model, frames)
    saved = _read_json(Path(run) / "config.json", "run config")
    acc = saved["train"].get("accuracy", 1e-5)
    preds = predict_frames(model, frames, accuracy=acc)
    return metrics_from(preds, frames), preds
