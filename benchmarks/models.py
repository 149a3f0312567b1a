"""Every model family on the long-range benchmark sets, one table (the models issue).

Usage: python -m benchmarks.models [--epochs 60] [--models short_range,explicit,...]
                                   [--sets nacl_clusters,ag3_charge_states,...]

Trains each model family with the same budget (``--epochs``, default architecture,
seed 0, the default loss weights: energy, forces and, for the charge-fitting models,
Mulliken charges) on each shipped GFN2-xTB set and prints, on the held-out test split:
energy and force RMSE, charge RMSE (models with charges), and the set's own check:

- ``ag3_charge_states``: the charge-state split ``E(Ag3+) - E(Ag3-)`` at the same
  geometry (GFN2-xTB: 16.5-17.2 eV), MAE over every fifth geometry, train and test
  alike (it measures whether a family can represent the charge state at all);
- ``carbon_chains``: on the held-out C10H3+ frames, the energy RMSE (meV/atom) and,
  for models with charges, the charge RMSE (me) of the atoms more than 6 Å from the
  protonated (CH2) carbon: the charge transferred along a chain longer than the 5 Å
  cutoff;
- ``dimer_curves``: MAE of the binding energy (dimer minus its two fragments at the
  same geometry, GFN2-xTB ``REF_fragment_energies``) beyond 7 Å, per dimer kind
  (charged NH4+...BF4-, polar water, apolar methane), over every frame;
- ``nacl_clusters``: the Na9Cl8+ pull-out path RMSE (``nacl_path``, energies
  relative to the first frame; also per atom, 17 atoms);
- ``water_wannier``: molecular dipole RMSE (Debye) of the held-out clusters against
  the DFT (pyscf) dipoles, and for the Wannier model the centroid RMSE (target:
  dipoles within 0.05 D). Run the dipolar families on it with
  ``--models wannier,latent_dipoles,latent --sets water_wannier``; the charge models
  there train with a dipole weight (``--dipole-weight``, default 100).

Also training throughput (structures/s) and inference time per structure.

A model may carry hyper-parameters, ``NAME:KEY=VALUE:KEY=VALUE`` (JSON values), e.g.
``--models latent:charge_aware=true,qeq:n_layers=2``; ``--fragments`` lets the charge
models honour the frames' fragment charges (``info["fragment_charges"]``; without it
they are stripped, so every model sees the same inputs).
"""

import argparse
import dataclasses
import json
import shutil
import tempfile
import time

import jax

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=60)
parser.add_argument("--models", default="short_range,explicit,latent,qeq,lode,ewald-mp,attention")
parser.add_argument("--sets", default="nacl_clusters,ag3_charge_states,carbon_chains,dimer_curves")
parser.add_argument("--dipole-weight", type=float, default=100.0)
parser.add_argument("--fragments", action="store_true", help="keep fragment charges")
parser.add_argument("--out", default=None, help="also write the rows as JSON lines here")
args = parser.parse_args()
jax.config.update("jax_enable_x64", True)

import ase.io  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks._common import format_table  # noqa: E402
from jaxlr import train  # noqa: E402
from jaxlr.data import Frame, datasets, from_atoms  # noqa: E402


def rmse(a, b):
    d = np.concatenate([np.ravel(x) for x in a]) - np.concatenate([np.ravel(x) for x in b])
    return float(np.sqrt(np.mean(d * d)))


def charge_split(model):
    atoms = ase.io.read(str(datasets.path("ag3_charge_states")), index=":")
    by_geometry = {}
    for a in atoms:
        by_geometry.setdefault(int(a.info["geometry"]), {})[float(a.info["charge"])] = a
    pairs = [g for g in by_geometry.values() if 1.0 in g and -1.0 in g][::5]
    frames = [from_atoms(g[q]) for g in pairs for q in (1.0, -1.0)]
    pred = train.predict_frames(model, frames)
    split_pred = np.array(
        [pred[2 * k]["energy"] - pred[2 * k + 1]["energy"] for k in range(len(pairs))]
    )
    split_ref = np.array(
        [frames[2 * k].energy - frames[2 * k + 1].energy for k in range(len(pairs))]
    )
    return float(np.mean(np.abs(split_pred - split_ref))), float(np.mean(split_ref))


def with_fragment_charges(frames):
    """dimer_curves frames with each dimer's fragment charges (NH4+ +1, BF4- -1;
    neutral monomers 0) where the file does not carry ``fragment_charges``."""
    atoms = ase.io.read(str(datasets.path("dimer_curves")), index=":")
    out = []
    for f, a in zip(frames, atoms):
        if f.fragment_charges is None and "separation" in a.info:
            q = np.array({"charged": (1.0, -1.0)}.get(a.info["dimer"], (0.0, 0.0)))
            f = dataclasses.replace(f, fragments=a.arrays["fragment"], fragment_charges=q)
        out.append(f)
    return out


def fragments(a):
    frag = a.arrays["fragment"]
    charges = {"charged": (1.0, -1.0)}.get(a.info["dimer"], (0.0, 0.0))
    out = []
    for k in (0, 1):
        sel = frag == k
        out.append(Frame(a.positions[sel], a.numbers[sel], charge=charges[k]))
    return out


def dimer_tails(model, beyond=7.0):
    atoms = ase.io.read(str(datasets.path("dimer_curves")), index=":")
    atoms = [a for a in atoms if "separation" in a.info and a.info["separation"] > beyond]
    dimers = [from_atoms(a) for a in atoms]
    if args.fragments:
        for k, a in enumerate(atoms):
            q = np.array({"charged": (1.0, -1.0)}.get(a.info["dimer"], (0.0, 0.0)))
            dimers[k] = dataclasses.replace(
                dimers[k], fragments=a.arrays["fragment"], fragment_charges=q
            )
    else:
        dimers = [dataclasses.replace(f, fragments=None, fragment_charges=None) for f in dimers]
    parts = [f for a in atoms for f in fragments(a)]
    pd, pp = train.predict_frames(model, dimers), train.predict_frames(model, parts)
    out = {}
    for k, a in enumerate(atoms):
        bind = pd[k]["energy"] - pp[2 * k]["energy"] - pp[2 * k + 1]["energy"]
        ref = a.info["REF_energy"] - float(np.sum(a.info["REF_fragment_energies"]))
        out.setdefault(a.info["dimer"], []).append(abs(bind - ref))
    return {k: float(np.mean(v)) * 1e3 for k, v in out.items()}


def far_charges(model, test):
    """C10H3+ test frames: energy RMSE per atom (meV) and the charge RMSE (me) of the
    atoms > 6 Å from the CH2 carbon (None without charges)."""
    cations = [f for f in test if f.charge == 1.0]
    pred = train.predict_frames(model, cations)
    e = [(p["energy"] - f.energy) / f.n_atoms for p, f in zip(pred, cations)]
    e_rmse = float(np.sqrt(np.mean(np.square(e)))) * 1e3
    if pred[0]["charges"] is None or cations[0].charges is None:
        return e_rmse, None
    errs = []
    for p, f in zip(pred, cations):
        d = np.linalg.norm(f.positions[:, None] - f.positions[None], axis=-1)
        carbons = np.flatnonzero(f.numbers == 6)
        hydrogens = f.numbers == 1
        ch2 = carbons[np.argmax([np.sum(hydrogens & (d[c] < 1.3)) for c in carbons])]
        far = d[ch2] > 6.0
        errs.append(p["charges"][far] - f.charges[far])
    return e_rmse, float(np.sqrt(np.mean(np.square(np.concatenate(errs))))) * 1e3


def pull_out(model):
    path = datasets.load("nacl_path")
    pred = train.predict_frames(model, path)
    e = np.array([p["energy"] for p in pred]) - pred[0]["energy"]
    ref = np.array([f.energy for f in path]) - path[0].energy
    return float(np.sqrt(np.mean((e - ref) ** 2))) * 1e3


def parse_model(spec):
    """``NAME:KEY=VALUE:...`` -> (name, {key: JSON value or bare string})."""
    name, *items = spec.split(":")
    kw = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            kw[key] = json.loads(value)
        except json.JSONDecodeError:
            kw[key] = value
    return name, kw


rows = []
for set_name in args.sets.split(","):
    frames = datasets.load(set_name)
    if set_name == "dimer_curves" and args.fragments:
        frames = with_fragment_charges(frames)
    if not args.fragments:
        frames = [dataclasses.replace(f, fragments=None, fragment_charges=None) for f in frames]
    for spec in args.models.split(","):
        model_name, model_args = parse_model(spec)
        folder = tempfile.mkdtemp()
        try:
            cfg = {
                "model": model_name,
                "model_args": model_args,
                "epochs": args.epochs,
                "patience": args.epochs,
            }
            if set_name == "water_wannier" and model_name != "short_range":
                cfg["weights"] = {**train.TrainConfig().weights, "dipole": args.dipole_weight}
            t0 = time.perf_counter()
            run = train.fit(frames, cfg, folder + "/run", progress=False)
            seconds = time.perf_counter() - t0
            model, test = run["model"], run["test"]
            m = run["metrics"]
            t1 = time.perf_counter()
            train.predict_frames(model, test)
            infer = (time.perf_counter() - t1) / max(len(test), 1) * 1e3
            if set_name == "ag3_charge_states":
                mae, mean = charge_split(model)
                check = f"split MAE {mae:.2f} eV (ref {mean:.1f})"
            elif set_name == "dimer_curves":
                tails = dimer_tails(model)
                check = "tail MAE " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(tails.items()))
                check += " meV"
            elif set_name == "water_wannier":
                pred = train.predict_frames(model, test)
                debye = 4.803204544  # D per e·Å
                if pred[0]["dipole"] is not None:
                    d = rmse([p["dipole"] for p in pred], [f.dipole for f in test]) * debye
                    check = f"dipole RMSE {d:.3f} D"
                else:
                    check = "no dipole"
                if "wannier_centres" in pred[0]:
                    c = train.metrics_from(pred, test)["wannier_centres"]["rmse"]
                    check += f", centroid RMSE {c * 1e3:.1f} mÅ"
            elif set_name == "carbon_chains":
                e_c, q_far = far_charges(model, test)
                check = f"C10H3+ E RMSE {e_c:.2f} meV/atom"
                if q_far is not None:
                    check += f", far-half q RMSE {q_far:.0f} me"
            elif set_name == "nacl_clusters":
                path_rmse = pull_out(model)
                check = f"path RMSE {path_rmse:.0f} meV ({path_rmse / 17:.1f} meV/atom)"
            else:
                check = ""
            q = m.get("charges")
            label = model.name + "".join(f" {k}={v}" for k, v in model_args.items())
            rows.append(
                [
                    set_name,
                    label,
                    f"{m['energy']['rmse'] * 1e3:.2f}",
                    f"{m['forces']['rmse'] * 1e3:.0f}",
                    f"{q['rmse'] * 1e3:.0f}" if q else "-",
                    check,
                    f"{m['throughput']['train_structures_per_s']:.0f}",
                    f"{infer:.1f}",
                    f"{seconds:.0f}",
                ]
            )
            print(rows[-1], flush=True)
            if args.out:
                with open(args.out, "a") as handle:
                    handle.write(json.dumps(rows[-1]) + "\n")
        finally:
            shutil.rmtree(folder, ignore_errors=True)

print(
    format_table(
        [
            "set",
            "model",
            "E RMSE meV/atom",
            "F RMSE meV/Å",
            "q RMSE me",
            "set check",
            "train struct/s",
            "infer ms/struct",
            "s",
        ],
        rows,
    )
)
