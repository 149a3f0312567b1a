"""MD throughput: jaxlr's jax-md adapter against jax-md's own PME Coulomb, and the
ASE calculator with a model.

Usage: python -m benchmarks.md [--sizes 1000 8000 32768] [--steps 20] [--accuracy 1e-5]

Fixed charges +-1 on a rattled rock-salt supercell (a = 5.64 Å): NVE steps per second
(force evaluation, integration and neighbour-list update under one jit), after a
warm-up, best of ``--repeats`` timed runs. Both codes are held to the same target:
a measured relative energy error at most ``--accuracy`` against a reference (jaxlr's
Ewald at 1e-10, cross-checked with jaxlr's PME at 1e-10, an independent route).

jaxlr tunes its method (Ewald / PME) for the requested accuracy on its own. jax-md's
``energy.coulomb_neighbor_list`` (smooth PME with 4th-order splines, one mesh size for
all axes, no self-interaction correction) is tuned here by measurement: starting from
two splittings (jaxlr's alpha and cutoff, and those jaxlr's tuner picks for order-4
SPME; up to ``--order4-max-atoms``, as its ~12 Å cutoff exhausts memory in jax-md's
dense neighbour list at 32k atoms), its mesh is sized until its measured error meets
the target (at most ``--max-mesh`` points per axis); the faster of the settings that
meet it is timed.
jax-md's energy leaves out the constant self energy -alpha / sqrt(pi) sum q^2, which
is added back for the comparison. The last table times an ASE VelocityVerlet step
with ``jaxlr.calculator.Calculator`` and the default LatentCharges architecture on
rock-salt cells (weights untrained: speed only).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from ase.build import bulk  # noqa: E402
from jax_md import energy as jmd_energy  # noqa: E402
from jax_md import simulate, space  # noqa: E402

import jaxlr  # noqa: E402
from benchmarks._common import format_table  # noqa: E402
from jaxlr import md  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000])
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--accuracy", type=float, default=1e-5)
parser.add_argument("--ase-sizes", type=int, nargs="*", default=[64, 512])
parser.add_argument("--repeats", type=int, default=2)
parser.add_argument("--max-mesh", type=int, default=256)
# jax-md's dense neighbour list at the order-4 splitting's ~12 Å cutoff ran out of
# 23 GB at 32768 atoms (and timed 0.21 steps/s at 8000): tried up to this size only
parser.add_argument("--order4-max-atoms", type=int, default=10000)
args = parser.parse_args()


def crystal(n):
    rep = round((n / 8) ** (1 / 3))
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(rep)
    atoms.rattle(0.05, seed=1)
    return atoms, np.where(atoms.numbers == 11, 1.0, -1.0)


def time_nve(energy_fn, neighbor_fn, R, masses, shift):
    nbrs = neighbor_fn.allocate(R)
    init, apply = simulate.nve(energy_fn, shift, 1.0 / md.TIME_UNIT_FS)
    state = init(jax.random.PRNGKey(0), R, kT=0.025, mass=masses, neighbor=nbrs)

    @jax.jit
    def steps(state, nbrs):
        def body(_, c):
            s, nb = c
            s = apply(s, neighbor=nb)
            return s, nb.update(s.position)

        return jax.lax.fori_loop(0, args.steps, body, (state, nbrs))

    s, nb = steps(state, nbrs)
    jax.block_until_ready(s.position)
    best = 0.0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        s, nb = steps(state, nbrs)
        jax.block_until_ready(s.position)
        best = max(best, args.steps / (time.perf_counter() - t0))
    if bool(nb.did_buffer_overflow):
        raise RuntimeError("neighbour list overflowed during timing")
    return best


def jaxmd_coulomb(displacement, box, q, alpha, r_cut, mesh):
    return jmd_energy.coulomb_neighbor_list(
        displacement,
        box,
        jnp.asarray(q),
        int(mesh),
        alpha=alpha,
        cutoff=r_cut,
        fractional_coordinates=True,
    )


def jaxmd_error(displacement, box, q, R, ref, alpha, r_cut, mesh):
    nf, ef = jaxmd_coulomb(displacement, box, q, alpha, r_cut, mesh)
    e = float(ef(R, nf.allocate(R)))
    # jax-md leaves out the self energy -alpha / sqrt(pi) sum q^2 (a constant here)
    e += -alpha / np.sqrt(np.pi) * float(np.sum(q * q))
    return abs(e - ref) / abs(ref)


def tune_jaxmd(displacement, box, q, R, ref, starts, tries=4):
    """For each (alpha, r_cut, mesh) start, the smallest jax-md mesh (of a few tried;
    error ~ h^4 predicts each next size) whose measured error meets the target.
    Returns the passing [(alpha, r_cut, mesh, err)] and the failures [(mesh, err)]."""
    passed, failed = [], []
    for alpha, r_cut, mesh in starts:
        mesh, best, tried = int(jaxlr.kernels.fft_size(mesh)), None, {}
        for _ in range(tries):
            if mesh in tried:
                break
            err = jaxmd_error(displacement, box, q, R, ref, alpha, r_cut, mesh)
            tried[mesh] = err
            print(
                f"  jax-md alpha {alpha:.3f} r_cut {r_cut:.2f} mesh {mesh}: {err:.1e}", flush=True
            )
            if err <= args.accuracy and (best is None or mesh < best[2]):
                best = (alpha, r_cut, mesh, err)
            ratio = (err / (0.7 * args.accuracy)) ** 0.25
            nxt = int(jaxlr.kernels.fft_size(int(np.ceil(mesh * min(max(ratio, 0.6), 2.0)))))
            if err > args.accuracy and nxt <= mesh:
                nxt = int(jaxlr.kernels.fft_size(mesh + 1))
            if best is not None and nxt >= best[2]:
                break
            if nxt > args.max_mesh:
                if mesh >= args.max_mesh or args.max_mesh in tried:
                    break
                nxt = args.max_mesh
            mesh = nxt
        if best is not None:
            passed.append(best)
        else:
            failed.append(min(((m, e) for m, e in tried.items()), key=lambda t: t[1]))
    return passed, failed


rows = []
for n in args.sizes:
    atoms, q = crystal(n)
    cell = atoms.cell.array
    box = jnp.asarray(cell.T)
    displacement, shift = space.periodic_general(box)
    R = jnp.asarray(atoms.get_scaled_positions())
    masses = jnp.asarray(atoms.get_masses())[:, None]
    pos = atoms.positions

    def reference(method):
        return float(
            jaxlr.electrostatic_energy(pos, q, cell, method=method, accuracy=1e-10, prefactor=1.0)
        )

    ref = reference("ewald")
    print(
        f"N {len(q)}: reference {ref:.10f}; PME 1e-10 agrees to {abs(reference('pme') - ref) / abs(ref):.1e}",
        flush=True,
    )
    nf, ef = md.coulomb_neighbor_list(
        displacement, box, q, accuracy=args.accuracy, prefactor=1.0, example_positions=pos
    )
    err_ours = abs(float(ef(R, nf.allocate(R))) - ref) / abs(ref)
    print(f"  jaxlr {ef.method} {ef.config}: {err_ours:.1e}", flush=True)
    rate_ours = time_nve(ef, nf, R, masses, shift)
    cfg = ef.config
    if ef.method == "pme":
        mesh = max(cfg.mesh)
    else:
        mesh = max(int(np.ceil(L * 2 * cfg.alpha)) for L in np.linalg.norm(cell, axis=1))
    starts = [(cfg.alpha, cfg.r_cut, mesh)]
    if len(q) <= args.order4_max_atoms:
        o4 = jaxlr.kernels.tune_pme(pos, q, cell, accuracy=args.accuracy, order=4, influence="spme")
        starts.append((o4.alpha, o4.r_cut, max(o4.mesh)))
    passed, failed = tune_jaxmd(displacement, box, q, R, ref, starts)
    if passed:
        timed = []
        for alpha, r_cut, mesh_j, err_j in passed:
            nf_j, ef_j = jaxmd_coulomb(displacement, box, q, alpha, r_cut, mesh_j)
            rate = time_nve(ef_j, nf_j, R, masses, shift)
            print(f"  jax-md mesh {mesh_j} alpha {alpha:.3f}: {rate:.2f} steps/s", flush=True)
            timed.append((rate, alpha, r_cut, mesh_j, err_j))
        rate_j, alpha, r_cut, mesh_j, err_j = max(timed)
        jaxmd_cols = [
            f"{mesh_j}^3, {alpha:.2f}, {r_cut:.1f}",
            f"{err_j:.1e}",
            f"{rate_j:.2f}",
            f"{rate_ours / rate_j:.1f}x",
        ]
    else:
        mesh_j, err_j = min(failed, key=lambda f: f[1])
        jaxmd_cols = [f"did not reach {args.accuracy:g} at {mesh_j}^3", f"{err_j:.1e}", "-", "-"]
    rows.append([len(atoms), ef.method, f"{err_ours:.1e}", f"{rate_ours:.2f}", *jaxmd_cols])
    print(rows[-1], flush=True)

device = f"{jax.devices()[0].platform} x{len(jax.devices())}"
print(f"\nNVE steps/s, fixed charges ({device}, float64, both within {args.accuracy:g} measured)")
print(
    format_table(
        [
            "N",
            "jaxlr method",
            "jaxlr rel. error",
            "jaxlr steps/s",
            "jax-md mesh, alpha, r_cut",
            "jax-md rel. error",
            "jax-md steps/s",
            "speed-up",
        ],
        rows,
    )
)

# ASE calculator with a model
from ase import units  # noqa: E402
from ase.md.verlet import VelocityVerlet  # noqa: E402

from jaxlr import models  # noqa: E402
from jaxlr.calculator import Calculator  # noqa: E402

rows = []
for n in args.ase_sizes:
    atoms, _ = crystal(n)
    atoms.calc = Calculator(models.build("latent"))
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    dyn.run(2)  # compile
    t0 = time.perf_counter()
    dyn.run(args.steps)
    rate = args.steps / (time.perf_counter() - t0)
    rows.append([len(atoms), f"{rate:.1f}", str(atoms.calc.compilations)])
    print(rows[-1], flush=True)
print("\nASE VelocityVerlet steps/s, jaxlr Calculator, LatentCharges (32 features, 1 layer)")
print(format_table(["N", "steps/s", "compilations"], rows))
