"""MD throughput: jaxlr's jax-md adapter against jax-md's own PME Coulomb, and the
ASE calculator with a model.

Usage: python benchmarks/md.py [--sizes 1000 8000 32000] [--steps 20] [--accuracy 1e-5]

Fixed charges +-1 on a rattled rock-salt supercell (a = 5.64 Å): NVE steps per second
(force evaluation, integration and neighbour-list update under one jit), after a
warm-up. jaxlr tunes its method (Ewald / PME) for the requested relative accuracy;
jax-md's ``energy.coulomb_neighbor_list`` (PME, 4th-order splines) is given the same
alpha and real-space cutoff and a mesh of the same spacing as jaxlr's (jaxlr's own mesh
when jaxlr picked PME, else spacing 0.5 / alpha), and both energies are compared
with a 1e-10 reference to state the accuracy actually reached (jax-md's energy leaves
out the constant self energy, added back for the comparison). The last table times
an ASE VelocityVerlet step with ``jaxlr.calculator.Calculator`` and the default
LatentCharges architecture on rock-salt cells (weights untrained: speed only).
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
parser.add_argument("--ase-sizes", type=int, nargs="+", default=[64, 512])
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
    t0 = time.perf_counter()
    s, nb = steps(state, nbrs)
    jax.block_until_ready(s.position)
    if bool(nb.did_buffer_overflow):
        raise RuntimeError("neighbour list overflowed during timing")
    return args.steps / (time.perf_counter() - t0)


rows = []
for n in args.sizes:
    atoms, q = crystal(n)
    cell = atoms.cell.array
    box = jnp.asarray(cell.T)
    displacement, shift = space.periodic_general(box)
    R = jnp.asarray(atoms.get_scaled_positions())
    masses = jnp.asarray(atoms.get_masses())[:, None]
    ref = float(jaxlr.electrostatic_energy(atoms.positions, q, cell, accuracy=1e-10, prefactor=1.0))
    nf, ef = md.coulomb_neighbor_list(
        displacement,
        box,
        q,
        accuracy=args.accuracy,
        prefactor=1.0,
        example_positions=atoms.positions,
    )
    err_ours = abs(float(ef(R, nf.allocate(R))) - ref) / abs(ref)
    rate_ours = time_nve(ef, nf, R, masses, shift)
    cfg = ef.config
    if ef.method == "pme":
        mesh = tuple(int(m) for m in cfg.mesh)
    else:
        lengths = np.linalg.norm(cell, axis=1)
        mesh = tuple(int(jaxlr.kernels.fft_size(int(np.ceil(L * 2 * cfg.alpha)))) for L in lengths)
    # jax-md takes one mesh size for all axes
    nf_j, ef_j = jmd_energy.coulomb_neighbor_list(
        displacement,
        box,
        jnp.asarray(q),
        int(max(mesh)),
        alpha=cfg.alpha,
        cutoff=cfg.r_cut,
        fractional_coordinates=True,
    )
    e_j = float(ef_j(R, nf_j.allocate(R)))
    # jax-md leaves out the self energy -alpha / sqrt(pi) sum q^2 (a constant here)
    self_energy = -cfg.alpha / np.sqrt(np.pi) * float(np.sum(q * q))
    err_j = abs(e_j + self_energy - ref) / abs(ref)
    rate_j = time_nve(ef_j, nf_j, R, masses, shift)
    rows.append(
        [
            len(atoms),
            ef.method,
            f"{err_ours:.1e}",
            f"{rate_ours:.2f}",
            f"{max(mesh)}^3",
            f"{err_j:.1e}",
            f"{rate_j:.2f}",
            f"{rate_ours / rate_j:.2f}",
        ]
    )
    print(rows[-1], flush=True)

device = f"{jax.devices()[0].platform} x{len(jax.devices())}"
print(f"\nNVE steps/s, fixed charges ({device}, float64, requested accuracy {args.accuracy:g})")
print(
    format_table(
        [
            "N",
            "jaxlr method",
            "jaxlr rel. error",
            "jaxlr steps/s",
            "jax-md mesh",
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
