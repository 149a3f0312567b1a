"""Neighbour-list builders: jaxlr's host (numpy) and jit (fixed capacity) cell lists
side by side with vesin (C++), random positions at 0.1 atoms/Å^3, half lists.

    python benchmarks/neighbors.py [--sizes 8000 32000] [--cutoff 8.0]
"""

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxlr import neighbors  # noqa: E402


def median_time(fn, repeats=5):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8000, 32000])
    parser.add_argument("--cutoff", type=float, default=8.0)
    args = parser.parse_args()
    try:
        import vesin
    except ImportError as err:
        vesin = None
        print(f"vesin not installed ({err}); its column is empty")
    print(f"half lists, cutoff {args.cutoff} Å, float64, {jax.devices()[0].device_kind}")
    print(
        "N      | pairs     | jaxlr host s | jaxlr jit s (compile s) | vesin s | host/vesin | jit/vesin"
    )
    for n in args.sizes:
        rng = np.random.default_rng(0)
        side = (n / 0.1) ** (1 / 3)
        pos, cell = rng.uniform(0, side, (n, 3)), side * np.eye(3)
        t_host = median_time(lambda: neighbors.neighbor_pairs(pos, args.cutoff, cell).i, repeats=3)
        count = neighbors.neighbor_pairs(pos, args.cutoff, cell).capacity
        fns = neighbors.neighbor_list(pos, args.cutoff, cell)
        build = jax.jit(fns.build)
        p, c = jnp.asarray(pos), jnp.asarray(cell)
        t0 = time.perf_counter()
        pairs, overflow = jax.block_until_ready(build(p, c))
        t_compile = time.perf_counter() - t0
        assert not bool(overflow) and int(pairs.count) == count
        t_jit = median_time(lambda: build(p, c))
        t_vesin = float("nan")
        if vesin is not None:
            nl = vesin.NeighborList(cutoff=args.cutoff, full_list=False)
            t_vesin = median_time(lambda: nl.compute(pos, cell, True, quantities="ijS"), repeats=3)
        print(
            f"{n:<6d} | {count:<9d} | {t_host:<12.3f} | {t_jit:.3f} ({t_compile:.1f}){'':13s}| "
            f"{t_vesin:<7.3f} | {t_host / t_vesin:<10.1f} | {t_jit / t_vesin:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
