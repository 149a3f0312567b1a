"""LODE spherical expansion: jaxlr (direct and mesh routes) vs featomic, values and
values + forces.

Rattled rock-salt supercells (a = 5.64 Å, 0.0446 atoms/Å^3, 0.1 Å rattle), p = 1,
smearing 1 Å, max_angular 3, max_radial 5, radius 4 Å, featomic's default k_cutoff
(1.2 pi / smearing). jaxlr is jit-compiled, timed after a warm-up call (median of
repeats); featomic is timed the same way (values; values + position gradients).
"values + forces" for jaxlr is the value and gradient of a linear model on the
features (one reverse pass); featomic's column is its values + ``positions``
gradients (what one needs for forces). jaxlr's two periodic routes are timed side
by side: ``direct`` (the k sum, up to --direct-max atoms) and ``mesh`` (per-channel
FFT fields, from --mesh-min atoms, default mesh_accuracy 1e-5), with the mesh
route's error against the direct one (max over coefficients, relative to the
largest) where both ran, and the route ``method="auto"`` takes. Also: a batch of
64 eight-atom cells (jaxlr vmap over the batch vs featomic on the list of systems),
per structure.

    python benchmarks/lode.py [--sizes 64 216 512 1000 4096 8000 32768] [--repeats 3]
        [--direct-max 8000] [--mesh-min 512] [--featomic-max 4096]
        [--featomic-grad-max 512] [--batch 64]
"""

import argparse
import os
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxlr  # noqa: E402

HYPERS = dict(smearing=1.0, max_radial=5, max_angular=3, radius=4.0, potential_exponent=1)


def rocksalt(reps, seed=0):
    a = 5.64
    base = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    cell_pos = np.r_[base, base + [0.5, 0, 0]] * a
    z = np.r_[[11] * 4, [17] * 4]
    shifts = np.stack(np.meshgrid(*[np.arange(reps)] * 3, indexing="ij"), -1).reshape(-1, 3) * a
    pos = (shifts[:, None, :] + cell_pos[None]).reshape(-1, 3)
    pos = pos + np.random.default_rng(seed).normal(0, 0.1, pos.shape)
    return pos, np.tile(z, len(shifts)), reps * a * np.eye(3)


def timed(fn, repeats):
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def featomic_calc():
    import featomic

    return featomic.LodeSphericalExpansion(
        density={"type": "SmearedPowerLaw", "smearing": 1.0, "exponent": 1},
        basis={
            "type": "TensorProduct",
            "max_angular": 3,
            "radial": {"type": "Gto", "max_radial": 5, "radius": 4.0},
        },
    )


def jaxlr_fns(pos, z, cell, method):
    calc = jaxlr.lode.prepare(cell, species_list=(11, 17), method=method, **HYPERS)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 6)))
    values = jax.jit(lambda p: calc(p, z, cell))
    forces = jax.jit(jax.value_and_grad(lambda p: jnp.sum(calc(p, z, cell) * weights[None])))
    return calc, values, forces


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--sizes", type=int, nargs="*", default=[64, 216, 512, 1000, 4096, 8000, 32768]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--direct-max", type=int, default=8000, help="direct route: O(N^2)")
    parser.add_argument("--mesh-min", type=int, default=512)
    parser.add_argument("--featomic-max", type=int, default=4096)
    parser.add_argument(
        "--featomic-grad-max", type=int, default=512, help="featomic gradients are O(N^2 K)"
    )
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    try:
        import ase
        import featomic  # noqa: F401

        have_featomic = True
    except ImportError:
        have_featomic = False
    print(
        f"# jaxlr LODE benchmark: {jax.devices()[0].device_kind}, {os.cpu_count()} cores, "
        f"float64; featomic {'installed' if have_featomic else 'NOT installed'}"
    )
    rows = []
    for n in args.sizes:
        reps = round((n / 8) ** (1 / 3))
        pos, z, cell = rocksalt(reps)
        n = len(z)
        reps_t = args.repeats if n <= 1000 else 1
        p = jnp.asarray(pos)
        row = dict(n=n, auto=jaxlr.lode.choose_method("auto", True, n))
        ref = None
        if n <= args.direct_max:
            _, values, forces = jaxlr_fns(pos, z, cell, "direct")
            row["d_v"] = timed(lambda: values(p), reps_t)
            row["d_f"] = timed(lambda: forces(p), reps_t)
            ref = np.asarray(values(p))
        if n >= args.mesh_min:
            calc, values, forces = jaxlr_fns(pos, z, cell, "mesh")
            row["mesh"] = f"{calc.mesh[0]}^3, p={calc.order}"
            row["m_v"] = timed(lambda: values(p), reps_t)
            row["m_f"] = timed(lambda: forces(p), reps_t)
            if ref is not None:
                row["err"] = float(np.abs(np.asarray(values(p)) - ref).max() / np.abs(ref).max())
        if have_featomic and n <= args.featomic_max:
            atoms = ase.Atoms(numbers=z, positions=pos, cell=cell, pbc=True)
            calc = featomic_calc()
            row["f_v"] = timed(lambda: calc.compute(atoms), reps_t)
            if n <= args.featomic_grad_max:
                row["f_g"] = timed(lambda: calc.compute(atoms, gradients=["positions"]), 1)
        rows.append(row)
        print(row, flush=True)

    def fmt(row, key, fmt="{:.3g}"):
        return fmt.format(row[key]) if key in row else "-"

    def ratio(row, a, b):
        return f"{row[a] / row[b]:.1f}" if a in row and b in row else "-"

    print()
    print(
        "| N | auto | direct values s | direct values+forces s | mesh values s "
        "| mesh values+forces s | mesh | mesh error | featomic values s "
        "| featomic values+grad s | featomic / best jaxlr (values) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        best = min(row.get("d_v", np.inf), row.get("m_v", np.inf))
        vs = f"{row['f_v'] / best:.1f}" if "f_v" in row else "-"
        print(
            f"| {row['n']} | {row['auto']} | {fmt(row, 'd_v')} | {fmt(row, 'd_f')} "
            f"| {fmt(row, 'm_v')} | {fmt(row, 'm_f')} | {row.get('mesh', '-')} "
            f"| {fmt(row, 'err', '{:.1e}')} | {fmt(row, 'f_v')} | {fmt(row, 'f_g')} | {vs} |"
        )
    print(
        f"\nnot run: direct route above {args.direct_max} atoms (O(N^2): ~16x the "
        f"{args.direct_max}-atom time at 4x N); featomic values above {args.featomic_max} "
        f"and its gradients above {args.featomic_grad_max} atoms (O(N^2 K) gradients)"
    )
    if args.batch:
        pos, z, cell = rocksalt(1)
        rng = np.random.default_rng(3)
        batch = np.stack([pos + rng.normal(0, 0.1, pos.shape) for _ in range(args.batch)])
        calc = jaxlr.lode.prepare(cell * 1.02, species_list=(11, 17), **HYPERS)
        fn = jax.jit(jax.vmap(lambda p: calc(p, z, cell)))
        t_b = timed(lambda: fn(jnp.asarray(batch)), args.repeats)
        line = f"\nbatch of {args.batch} eight-atom cells: jaxlr {1e3 * t_b / args.batch:.2f} ms/structure"
        if have_featomic:
            systems = [ase.Atoms(numbers=z, positions=b, cell=cell, pbc=True) for b in batch]
            fcalc = featomic_calc()
            f_b = timed(lambda: fcalc.compute(systems), args.repeats)
            line += f", featomic {1e3 * f_b / args.batch:.2f} ms/structure ({f_b / t_b:.1f}x)"
        print(line)


if __name__ == "__main__":
    main()
