"""Accuracy reached in float32: energy and forces of random neutral ions at 0.1 atoms/Å^3.

Compares jaxlr's prepared energy (Ewald or PME) evaluated in float32 with the same
configuration in float64 and with a tight float64 reference (Ewald at accuracy 1e-10
up to 32k atoms, PME at 1e-9 above).

    python benchmarks/float32_accuracy.py [--sizes 1000 8000 32000] [--method pme]
"""

import argparse
import platform

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxlr  # noqa: E402


def system(n, seed=0):
    rng = np.random.default_rng(seed)
    side = (n / 0.1) ** (1 / 3)
    return rng.uniform(0, side, (n, 3)), np.tile([1.0, -1.0], n // 2), side * np.eye(3)


def energy_forces(fn, q, dtype, pos, cell):
    qq = jnp.asarray(q, dtype)
    f = jax.jit(lambda p, c: jaxlr.energy_forces_stress(lambda p, c: fn(p, qq, c), p, c))
    e, forces, _ = f(jnp.asarray(pos, dtype), jnp.asarray(cell, dtype))
    return float(e), np.asarray(forces, np.float64)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000])
    parser.add_argument("--accuracies", type=float, nargs="+", default=[1e-4, 1e-5, 1e-6])
    parser.add_argument("--method", default="ewald", choices=["ewald", "pme"])
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()})")
    print(f"method: {args.method}")
    print(
        "N      | requested | E rel err f64 | E rel err f32 | F rel rms err f64 | F rel rms err f32"
    )
    for n in args.sizes:
        pos, q, cell = system(n)
        if n <= 32000:
            ref = jaxlr.prepare_energy(pos, q, cell, method="ewald", accuracy=1e-10)
        else:
            ref = jaxlr.prepare_energy(pos, q, cell, method="pme", accuracy=1e-9)
        e_ref, f_ref = energy_forces(ref, q, jnp.float64, pos, cell)
        f_scale = np.sqrt(np.mean(f_ref**2))
        for acc in args.accuracies:
            fn = jaxlr.prepare_energy(pos, q, cell, method=args.method, accuracy=acc)
            row = []
            for dtype in (jnp.float64, jnp.float32):
                e, f = energy_forces(fn, q, dtype, pos, cell)
                row.append(
                    (abs(e - e_ref) / abs(e_ref), np.sqrt(np.mean((f - f_ref) ** 2)) / f_scale)
                )
            print(
                f"{n:<6d} | {acc:<9.0e} | {row[0][0]:<13.1e} | {row[1][0]:<13.1e} | "
                f"{row[0][1]:<17.1e} | {row[1][1]:.1e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
