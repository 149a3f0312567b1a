"""Charge equilibration: dense vs matrix-free, scaling to 10^5 atoms, warm starts.

Random ionic systems at 0.1 atoms/Å^3 in cubic periodic cells: two species
alternating (chi 3 / 8 eV/e with 0.5 eV/e noise, J 7 / 9 eV/e^2, Gaussian widths
1.0 / 1.2 Å), neutral. Every time is jit-compiled, after a warm-up call, the median
of repeats (one call at the largest sizes); the host tuning of the periodic
operator is reported apart.

1. Crossover: jaxlr's dense path (Ewald matrix assembled column by column, then
   a Cholesky / Schur solve) vs its matrix-free path (projected preconditioned CG
   on the Ewald / PME potential, relative residual ``--tol``), with a plain scipy
   dense solve of the same matrix side by side (assembly not counted for scipy).
   Residuals: the dense solutions' relative KKT residual in the dense matrix; the
   matrix-free one's in its own operator (what ``tol`` bounds); ``|dq|`` the
   largest charge difference from the dense solution.
2. Scaling of the matrix-free path: iterations and time per solve, time for the
   charges and their gradient (one more solve, implicit differentiation), and the
   fitted exponent t ~ N^p.
3. Warm start along a constant-velocity MD step (``--step`` Å rms displacement
   per component; 0.005 Å is 1-2 fs of Na / Cl at 300 K): a cold start, the
   previous charges as the guess, and the linear extrapolation 2 q_0 - q_-1.
4. float32: charges solved in float32 (tol 1e-5) against float64.

    python benchmarks/qeq.py [--dense-sizes 250 500 1000 2000 4000]
        [--sizes 1000 3000 10000 30000 100000] [--tol 1e-6] [--accuracy 1e-6]
        [--step 0.005] [--float32-sizes 1000 10000]
"""

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
from _common import format_table as table  # noqa: E402

import jaxlr  # noqa: E402
from jaxlr.units import COULOMB  # noqa: E402


def system(n, seed=0):
    rng = np.random.default_rng(seed)
    side = (n / 0.1) ** (1 / 3)
    species = np.arange(n) % 2
    chi = np.where(species == 0, 3.0, 8.0) + rng.normal(0.0, 0.5, n)
    hard = np.where(species == 0, 7.0, 9.0)
    sigma = np.where(species == 0, 1.0, 1.2)
    return rng.uniform(0, side, (n, 3)), chi, hard, sigma, side * np.eye(3)


def timed(fn, *args, repeats=3):
    out = jax.block_until_ready(fn(*args))  # compile + warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return out, float(np.median(times))


def kkt_residual(h, chi, q):
    """Relative residual of H q + chi = mu 1, sum q = 0 (mu fitted)."""
    g = h @ q + chi
    mu = np.mean(g)
    return float(np.linalg.norm(g - mu) / np.linalg.norm(chi - np.mean(chi)))


def crossover(sizes, tol, accuracy, repeats):
    print("\n## 1. Dense vs matrix-free (time per solve, s)\n")
    rows = []
    for n in sizes:
        pos, chi, hard, sig, cell = system(n)
        args = tuple(jnp.asarray(x) for x in (pos, chi, hard, sig, cell))
        totals = jnp.zeros(1)
        reps = repeats if n <= 2000 else 1
        dense_solver = jaxlr.qeq.prepare(pos, sig, cell, accuracy=accuracy, kernel="ewald")
        dense = jax.jit(lambda p, c, j, s, b: dense_solver.solve(p, c, j, s, b, totals))
        res_d, t_dense = timed(dense, *args, repeats=reps)
        kernel = "pme" if n >= jaxlr.qeq.PME_MIN_ATOMS else "ewald"
        free_solver = jaxlr.qeq.prepare(pos, sig, cell, accuracy=accuracy, kernel=kernel)
        free = jax.jit(
            lambda p, c, j, s, b: free_solver.solve(
                p, c, j, s, b, totals, method="matrix_free", tol=tol
            )
        )
        res_f, t_free = timed(free, *args, repeats=reps)
        # scipy: the same matrix, a plain dense KKT solve
        a = np.asarray(jax.jit(dense_solver.matrix)(args[0], args[3], args[4]))
        h = np.diag(hard) + COULOMB * a
        kkt = np.block([[h, np.ones((n, 1))], [np.ones((1, n)), np.zeros((1, 1))]])
        rhs = np.r_[-chi, 0.0]
        t = time.perf_counter()
        q_sp = scipy.linalg.solve(kkt, rhs, assume_a="sym")[:n]
        t_scipy = time.perf_counter() - t
        qd, qf = np.asarray(res_d.charges), np.asarray(res_f.charges)
        rows.append(
            (
                n,
                f"{t_dense:.3g}",
                f"{t_free:.3g}",
                f"{t_scipy:.3g}",
                f"{t_free / t_dense:.2f}",
                int(res_f.iterations),
                f"{kkt_residual(h, chi, qd):.1e}",
                f"{float(res_f.residual):.1e}",
                f"{kkt_residual(h, chi, q_sp):.1e}",
                f"{np.abs(qf - qd).max():.1e}",
            )
        )
        print(rows[-1], flush=True)
    print()
    print(
        table(
            (
                "N",
                "dense s",
                "matrix-free s",
                "scipy solve s",
                "free/dense",
                "CG its",
                "dense res",
                "free res",
                "scipy res",
                "|dq| free",
            ),
            rows,
        )
    )


def scaling(sizes, tol, accuracy, repeats, step):
    print("\n## 2. Matrix-free scaling and 3. warm start\n")
    rows, warm_rows, ns, ts = [], [], [], []
    for n in sizes:
        pos, chi, hard, sig, cell = system(n)
        t = time.perf_counter()
        solver = jaxlr.qeq.prepare(pos, sig, cell, accuracy=accuracy, kernel="pme")
        t_prep = time.perf_counter() - t
        totals = jnp.zeros(1)
        s, b = jnp.asarray(sig), jnp.asarray(cell)
        reps = repeats if n <= 30000 else 1

        def run(p, c, j, guess=None):
            return solver.solve(
                p, c, j, s, b, totals, method="matrix_free", tol=tol, max_iter=1000, guess=guess
            )

        args = (jnp.asarray(pos), jnp.asarray(chi), jnp.asarray(hard))
        res, t_solve = timed(jax.jit(run), *args, repeats=reps)
        weights = jnp.asarray(np.random.default_rng(1).normal(size=n))

        def loss(p, c, j):
            return jnp.sum(weights * run(p, c, j).charges)

        grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        _, t_grad = timed(grad, *args, repeats=reps)
        # MD steps at constant velocity: x_-1, x_0 (solved), then x_1 from a cold
        # start, from q_0, and from the linear extrapolation 2 q_0 - q_-1
        warm_fn = jax.jit(run)
        velocity = step * jax.random.normal(jax.random.PRNGKey(2), (n, 3))
        previous = warm_fn(args[0] - velocity, args[1], args[2]).charges
        moved = args[0] + velocity
        cold, t_cold = timed(warm_fn, moved, args[1], args[2], None, repeats=reps)
        warm, t_warm = timed(warm_fn, moved, args[1], args[2], res.charges, repeats=reps)
        guess = 2.0 * res.charges - previous
        extra, t_extra = timed(warm_fn, moved, args[1], args[2], guess, repeats=reps)
        ok = all(bool(x.ok) for x in (res, cold, warm, extra))
        ns.append(n)
        ts.append(t_solve)
        rows.append(
            (
                n,
                f"{t_prep:.2f}",
                int(res.iterations),
                f"{float(res.residual):.1e}",
                f"{t_solve:.3g}",
                f"{t_grad:.3g}",
                f"{1e6 * t_solve / n / int(res.iterations):.2f}",
                "yes" if ok else "NO",
            )
        )
        warm_rows.append(
            (
                n,
                int(cold.iterations),
                int(warm.iterations),
                f"{int(cold.iterations) / max(int(warm.iterations), 1):.1f}",
                int(extra.iterations),
                f"{int(cold.iterations) / max(int(extra.iterations), 1):.1f}",
                f"{t_cold:.3g}",
                f"{t_warm:.3g}",
                f"{t_extra:.3g}",
            )
        )
        print(rows[-1], warm_rows[-1], flush=True)
    print()
    print(
        table(
            (
                "N",
                "tuning s",
                "CG its",
                "residual",
                "solve s",
                "charges+grad s",
                "µs/atom/it",
                "converged",
            ),
            rows,
        )
    )
    if len(ns) > 1:
        p = np.polyfit(np.log(ns), np.log(ts), 1)[0]
        print(f"\nscaling exponent of the solve time (fit over N = {ns[0]}..{ns[-1]}): {p:.2f}")
    print()
    print(f"\nMD step: {step} Å rms displacement per component (300 K, 1-2 fs for Na-Cl masses)")
    headers = ("N", "cold its", "warm its", "ratio", "extrap. its", "ratio", "cold s", "warm s")
    print(table(headers + ("extrap. s",), warm_rows))


def float32_accuracy(sizes, accuracy):
    """Charges solved in float32 (matrix-free, PME, tol 1e-5) vs float64 (tol 1e-10)."""
    print("\n## 4. float32\n")
    rows = []
    for n in sizes:
        pos, chi, hard, sig, cell = system(n)
        solver = jaxlr.qeq.prepare(pos, sig, cell, accuracy=accuracy, kernel="pme")
        out = {}
        for dtype, tol in ((jnp.float64, 1e-10), (jnp.float32, 1e-5)):
            a = [jnp.asarray(x, dtype) for x in (pos, chi, hard, sig, cell)]
            run = jax.jit(
                lambda p, c, j, s, b, tol=tol: solver.solve(
                    p, c, j, s, b, jnp.zeros(1, p.dtype), method="matrix_free", tol=tol
                )
            )
            out[dtype] = run(*a)
        q64 = np.asarray(out[jnp.float64].charges)
        q32 = np.asarray(out[jnp.float32].charges, np.float64)
        r32 = out[jnp.float32]
        rows.append(
            (
                n,
                f"{np.abs(q32 - q64).max():.1e}",
                f"{np.sqrt(np.mean((q32 - q64) ** 2)) / np.std(q64):.1e}",
                f"{float(r32.residual):.1e}",
                int(r32.iterations),
                "yes" if bool(r32.ok) else "NO",
            )
        )
    print(table(("N", "max |dq| (e)", "rms dq / std q", "residual", "CG its", "converged"), rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dense-sizes", type=int, nargs="*", default=[250, 500, 1000, 2000, 4000])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 3000, 10000, 30000, 100000])
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--accuracy", type=float, default=1e-6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step", type=float, default=0.005, help="MD displacement, Å")
    parser.add_argument("--float32-sizes", type=int, nargs="*", default=[1000, 10000])
    args = parser.parse_args()
    import os

    print(
        f"# jaxlr QEq benchmark: {jax.devices()[0].device_kind}, {os.cpu_count()} cores; "
        f"tol {args.tol:g}, operator accuracy {args.accuracy:g}, float64"
    )
    if args.dense_sizes:
        crossover(args.dense_sizes, args.tol, args.accuracy, args.repeats)
    if args.sizes:
        scaling(args.sizes, args.tol, args.accuracy, args.repeats, args.step)
    if args.float32_sizes:
        float32_accuracy(args.float32_sizes, args.accuracy)


if __name__ == "__main__":
    main()
