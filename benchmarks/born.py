"""Born effective charges of trained models against GFN2-xTB (the finite-field issue).

Usage: python -m benchmarks.born [--epochs 300] [--models latent,latent_born,explicit_born]

Trains on the shipped ``water_clusters`` set ((H2O)1-5, GFN2-xTB energies, forces,
Mulliken charges, dipoles, Born charges and polarizabilities; 20 % of the frames under
a finite field) and reports, on the held-out test split, the Born-charge MAE (e)
against the reference, the largest acoustic-sum-rule violation over the test frames,
and the energy / force errors:

- ``latent``: latent charges learned from energies and forces alone (the Born
  charges are a prediction, never fitted);
- ``latent_born``: the same model with the Born-charge loss term added;
- ``explicit_born``: explicit charges fitted to Mulliken charges plus Born charges.
"""

import argparse
import shutil
import tempfile
import time

import jax

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=300)
parser.add_argument("--models", default="latent,latent_born,explicit_born")
args = parser.parse_args()
jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from benchmarks._common import format_table  # noqa: E402
from jaxlr import response, train  # noqa: E402
from jaxlr.data import datasets  # noqa: E402

RUNS = {
    "latent": ("latent", {"energy": 100.0, "forces": 1.0}),
    "latent_born": ("latent", {"energy": 100.0, "forces": 1.0, "born_charges": 100.0}),
    "explicit_born": (
        "explicit",
        {"energy": 100.0, "forces": 1.0, "charges": 10.0, "born_charges": 100.0},
    ),
}

frames = datasets.load("water_clusters")
rows = []
for name in args.models.split(","):
    model_name, weights = RUNS[name]
    folder = tempfile.mkdtemp()
    try:
        t0 = time.perf_counter()
        cfg = {"model": model_name, "epochs": args.epochs, "weights": weights, "patience": 60}
        run = train.fit(frames, cfg, folder + "/run", progress=False)
        seconds = time.perf_counter() - t0
        test = run["test"]
        preds = train.predict_frames(run["model"], test, born_charges=True)
        z_pred = np.concatenate([p["born_charges"] for p in preds])
        z_ref = np.concatenate([f.born_charges for f in test])
        mae = float(np.mean(np.abs(z_pred - z_ref)))
        # latent charges of a neutral system are defined up to a global sign
        mae_sign = min(mae, float(np.mean(np.abs(-z_pred - z_ref))))
        asr = max(
            response.acoustic_sum_rule_violation(p["born_charges"], f.charge)
            for p, f in zip(preds, test)
        )
        m = run["metrics"]
        rows.append(
            [
                name,
                f"{mae:.4f}",
                f"{mae_sign:.4f}",
                f"{asr:.1e}",
                f"{m['energy']['mae'] * 1e3:.2f}",
                f"{m['forces']['mae'] * 1e3:.1f}",
                str(run["metrics"]["epochs"]),
                f"{seconds:.0f}",
            ]
        )
        print(rows[-1], flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

print(
    format_table(
        [
            "model",
            "Born MAE (e)",
            "up to sign",
            "max |sum Z - Q|",
            "E MAE meV/atom",
            "F MAE meV/Å",
            "epochs",
            "s",
        ],
        rows,
    )
)
