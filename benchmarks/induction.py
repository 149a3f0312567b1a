"""Induced dipoles: dense vs matrix-free solves, molecules and periodic cells.

Jittered simple-cubic arrangements (spacing 3 Å, +-0.4 Å noise), polarizabilities
0.8-1.5 Å^3, alternating charges +-0.5 e, AMOEBA Thole damping (a = 0.39). Every
time is jit-compiled, after a warm-up call, the median of repeats; the host tuning
of a periodic operator is reported apart. Columns: the time for the dipoles, the
time for the energy and its gradient with respect to positions (one more solve,
implicit differentiation), CG iterations, and |dmu| the largest difference between
the two paths (e·Å).

Peers: no peer with Thole-damped induced dipoles in JAX is installed here (OpenMM's
AMOEBA plugin and Tinker are not dependencies); the table compares jaxlr's paths.

    python benchmarks/induction.py [--sizes 64 216 512] [--cell-sizes 64 216 512]
"""

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import format_table as table  # noqa: E402

from jaxlr import induction  # noqa: E402


def structure(n, seed=0, spacing=3.0):
    rng = np.random.default_rng(seed)
    side = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pos = grid[:n] * spacing + rng.uniform(-0.4, 0.4, (n, 3))
    alpha = rng.uniform(0.8, 1.5, n)
    q = np.where(np.arange(n) % 2 == 0, 0.5, -0.5)
    return pos, alpha, q, side * spacing * np.eye(3)


def median_time(fn, *args, repeats=3):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def run(n, periodic, field):
    pos, alpha, q, cell = structure(n)
    t = time.perf_counter()
    solver = induction.prepare(pos, cell if periodic else None, polarizability=alpha)
    prep = time.perf_counter() - t
    c = jnp.asarray(cell) if periodic else None
    out = {}
    for method in ("dense", "matrix_free"):

        def solve(p, m=method):
            return solver.solve(p, alpha, q, field, c, method=m)

        dipoles = jax.jit(lambda p: solve(p).dipoles)
        forces = jax.jit(jax.grad(lambda p: solve(p).energy))
        p0 = jnp.asarray(pos)
        result = jax.jit(solve)(p0)
        out[method] = (
            median_time(dipoles, p0),
            median_time(forces, p0),
            int(result.iterations),
            np.asarray(result.dipoles),
        )
    dmu = np.abs(out["dense"][3] - out["matrix_free"][3]).max()
    rows = []
    for method, (t_mu, t_f, its, _) in out.items():
        rows.append(
            [n, method, f"{prep:.2f}", f"{1e3 * t_mu:.1f}", f"{1e3 * t_f:.1f}", its, f"{dmu:.1e}"]
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 216, 512])
    parser.add_argument("--cell-sizes", type=int, nargs="+", default=[64, 216])
    args = parser.parse_args()
    field = jnp.array([0.0, 0.0, 0.1])
    header = ["N", "path", "prepare s", "dipoles ms", "energy+grad ms", "CG its", "|dmu|"]
    print(f"device {jax.devices()[0].platform}, float64")
    print("molecules (direct sums)")
    print(table(header, [row for n in args.sizes for row in run(n, False, field)]))
    print("periodic cells (Ewald, tin-foil)")
    print(table(header, [row for n in args.cell_sizes for row in run(n, True, field)]))


if __name__ == "__main__":
    main()
