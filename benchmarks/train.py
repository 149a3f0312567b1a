"""Training throughput (structures per second) of jaxlr's models on the shipped sets.

Usage: python benchmarks/train.py [--epochs 3] [--dtype float64|float32]

Times full training epochs (energy + forces + stress by autodiff, the parameter
gradient through them, the optimizer update) after a warm-up epoch that compiles
each size bucket, for ShortRange / ExplicitCharges / LatentCharges on the default
cluster set (molecules, all-pairs Coulomb) and the random-charge set (32-atom cells,
Ewald), on whatever ``jax.devices()`` offers.
"""

import argparse
import json
import shutil
import tempfile
import time

import jax

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
parser.add_argument("--batch-size", type=int, default=16)
args = parser.parse_args()
jax.config.update("jax_enable_x64", args.dtype == "float64")

from benchmarks._common import format_table  # noqa: E402
from jaxlr import train  # noqa: E402
from jaxlr.data import datasets  # noqa: E402


def throughput(name, model):
    frames = datasets.load(name)
    folder = tempfile.mkdtemp()
    try:
        cfg = {
            "model": model,
            "epochs": args.epochs + 1,
            "batch_size": args.batch_size,
            "patience": 1000,
        }
        t0 = time.perf_counter()
        r = train.fit(frames, cfg, folder + "/run", progress=False)
        total = time.perf_counter() - t0
        hist = r["history"]
        with open(folder + "/run/config.json") as handle:
            n_train = json.load(handle)["n_frames"]["train"]
        steady = [h["seconds"] for h in hist[1:]]
        per_epoch = sum(steady) / len(steady)
        return n_train / per_epoch, hist[0]["seconds"], total
    finally:
        shutil.rmtree(folder, ignore_errors=True)


rows = []
for name in ("nacl_clusters", "random_charges"):
    for model in ("short_range", "explicit", "latent"):
        if name == "random_charges" and model == "explicit":
            continue
        rate, first, total = throughput(name, model)
        rows.append([name, model, f"{rate:.0f}", f"{first:.1f}", f"{total:.0f}"])
        print(rows[-1], flush=True)
device = f"{jax.devices()[0].platform} x{len(jax.devices())}"
print(
    f"\ntraining throughput ({device}, {args.dtype}, batch {args.batch_size}; epoch time "
    "includes validation)"
)
print(
    format_table(
        ["dataset", "model", "structures/s", "first epoch (s, compiles)", "total (s)"], rows
    )
)
