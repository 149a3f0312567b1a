"""Where PME overtakes Ewald: energy + forces of random neutral ions at 0.1 atoms/Å^3.

For each size, both methods are tuned for the same requested accuracy and timed
(jit, median of repeats, after warm-up); the cost model's prediction is printed
beside the measurement. ``method="auto"`` uses Ewald below the crossover and the
cost model above it (``jaxlr._api.AUTO_PME_MIN_ATOMS``).

    python benchmarks/crossover.py [--sizes 500 1000 2000 4000 8000] [--accuracy 1e-6]
        [--dtype float64]
"""

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxlr  # noqa: E402
from jaxlr.kernels.tuning import ewald_cost, pme_cost  # noqa: E402


def system(n, seed=0):
    rng = np.random.default_rng(seed)
    side = (n / 0.1) ** (1 / 3)
    return (
        rng.uniform(0, side, (n, 3)),
        rng.permutation(np.tile([1.0, -1.0], n // 2)),
        side * np.eye(3),
    )


def time_energy_forces(fn, pos, q, cell, dtype, repeats=7):
    qq = jnp.asarray(q, dtype)
    f = jax.jit(jax.value_and_grad(lambda p, c: fn(p, qq, c)))
    args = (jnp.asarray(pos, dtype), jnp.asarray(cell, dtype))
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 4000, 8000])
    parser.add_argument("--accuracy", type=float, default=1e-6)
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)
    print(f"accuracy {args.accuracy:g}, {args.dtype}, {jax.devices()[0].device_kind}")
    print("N      | Ewald s   | PME s     | PME/Ewald | model PME/Ewald | auto picks")
    for n in args.sizes:
        pos, q, cell = system(n)
        fe = jaxlr.prepare_energy(pos, q, cell, method="ewald", accuracy=args.accuracy)
        fp = jaxlr.prepare_energy(pos, q, cell, method="pme", accuracy=args.accuracy)
        te = time_energy_forces(fe, pos, q, cell, dtype)
        tp = time_energy_forces(fp, pos, q, cell, dtype)
        model = pme_cost(n, cell, fp.config) / ewald_cost(n, cell, fe.config)
        auto = jaxlr.prepare_energy(pos, q, cell, accuracy=args.accuracy).method
        print(
            f"{n:<6d} | {te:<9.4f} | {tp:<9.4f} | {tp / te:<9.2f} | {model:<15.2f} | {auto}",
            flush=True,
        )


if __name__ == "__main__":
    main()
