"""Cost of the long-range attention model against N: it must grow linearly.

Usage: python -m benchmarks.attention [--sizes 512 1000 2744 5832 8000] [--repeats 5]

Rock-salt NaCl cells (a = 5.64 Å, 0.05 Å rattle) of growing size; times one jitted
energy + forces evaluation of ``LongRangeAttention`` (default architecture, untrained
weights) and of ``ShortRange`` with the same backbone after a warm-up, and prints
the time per atom: flat per-atom times mean linear cost (the attention layer never
forms an (N, N) matrix). The difference of the two is the global layer's own cost.
"""

import argparse
import time

import jax

parser = argparse.ArgumentParser()
parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1000, 2744, 5832, 8000])
parser.add_argument("--repeats", type=int, default=5)
args = parser.parse_args()
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
from ase.build import bulk  # noqa: E402

from benchmarks._common import format_table  # noqa: E402
from jaxlr import models  # noqa: E402
from jaxlr.models import Electrostatics, predict  # noqa: E402
from jaxlr.neighbors import neighbor_pairs  # noqa: E402


def cell_of(n):
    rep = max(1, round((n / 8) ** (1 / 3)))
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(rep)
    atoms.rattle(0.05, seed=0)
    return atoms


def seconds(model, atoms):
    pos = jnp.asarray(atoms.positions)
    cell = jnp.asarray(atoms.cell.array)
    pairs = neighbor_pairs(atoms.positions, model.cutoff, atoms.cell.array, half=False)
    num = jnp.asarray(atoms.numbers)
    mask = jnp.ones(len(atoms), bool)
    el = Electrostatics("periodic")
    fn = jax.jit(lambda r: predict(model, r, num, mask, pairs, cell, 0.0, el)["forces"])
    fn(pos).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        fn(pos).block_until_ready()
    return (time.perf_counter() - t0) / args.repeats


rows = []
attention, short = models.build("attention"), models.build("short_range")
for n in args.sizes:
    atoms = cell_of(n)
    t_a, t_s = seconds(attention, atoms), seconds(short, atoms)
    rows.append(
        [
            len(atoms),
            f"{t_a * 1e3:.1f}",
            f"{t_a / len(atoms) * 1e6:.1f}",
            f"{t_s * 1e3:.1f}",
            f"{(t_a - t_s) / len(atoms) * 1e6:.2f}",
        ]
    )
    print(rows[-1], flush=True)
print(
    format_table(
        ["N", "attention E+F (ms)", "per atom (us)", "short-range E+F (ms)", "layer per atom (us)"],
        rows,
    )
)
