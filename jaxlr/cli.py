"""Command line: ``jaxlr fit`` (the main job), ``jaxlr evaluate RUN --data FILE``,
``jaxlr energy FILE``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["main"]


def _charges(atoms, key):
    if key is not None:
        if key in ("initial_charges", "charges") and key not in atoms.arrays:
            return atoms.get_initial_charges()
        if key not in atoms.arrays:
            names = ", ".join(sorted(atoms.arrays)) or "none"
            raise SystemExit(
                f"jaxlr energy: --charges-from {key!r} is not a per-atom array "
                f"of this structure (it has: {names})"
            )
        q = np.asarray(atoms.arrays[key], dtype=np.float64)
        if q.shape != (len(atoms),):
            raise SystemExit(
                f"jaxlr energy: --charges-from {key!r} has shape {q.shape}, "
                f"expected ({len(atoms)},)"
            )
        return q
    for name in ("initial_charges", "charges", "REF_charges"):
        if name in atoms.arrays and np.any(atoms.arrays[name]):
            return np.asarray(atoms.arrays[name], dtype=np.float64)
    raise SystemExit(
        "jaxlr energy: the structure has no charges; set initial charges or "
        "name a per-atom array with --charges-from KEY"
    )


def energy_command(args) -> int:
    import ase.io
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    import jaxlr

    try:
        atoms = ase.io.read(args.file, index=args.index)
    except Exception as err:  # ASE raises many kinds
        raise SystemExit(f"jaxlr energy: cannot read {args.file!r}: {err}") from err
    q = _charges(atoms, args.charges_from)
    pbc = tuple(bool(p) for p in atoms.pbc)
    cell = np.asarray(atoms.cell.array) if any(pbc) else None
    pos = atoms.get_positions()
    try:
        fn = jaxlr.prepare_energy(
            pos, q, cell, pbc=pbc if any(pbc) else None, method=args.method, accuracy=args.accuracy
        )
    except ValueError as err:
        raise SystemExit(f"jaxlr energy: {err}") from err
    qj = jnp.asarray(q)
    f = jax.jit(lambda p, c: jaxlr.energy_forces_stress(lambda p, c: fn(p, qj, c), p, c))
    e, forces, stress = f(jnp.asarray(pos), None if cell is None else jnp.asarray(cell))
    forces = np.asarray(forces)
    params = {"method": fn.method}
    if fn.config is not None:
        params.update(alpha=fn.config.alpha, r_cut=fn.config.r_cut, k_max=list(fn.config.k_max))
    out = {
        "file": args.file,
        "n_atoms": len(atoms),
        "total_charge": float(q.sum()),
        "energy": float(e),
        "max_force": float(np.linalg.norm(forces, axis=1).max()) if len(forces) else 0.0,
        "stress": None if stress is None else np.asarray(stress).tolist(),
        "parameters": params,
        "estimated_error": float(fn.estimated_error),
        "requested_accuracy": args.accuracy,
        "units": {"energy": "eV", "force": "eV/A", "stress": "eV/A^3"},
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    charge = out["total_charge"]
    print(f"structure        {args.file} ({len(atoms)} atoms, total charge {charge:+.6g} e)")
    print(f"method           {fn.method}")
    if fn.config is not None:
        c = fn.config
        print(f"parameters       alpha={c.alpha:.6g} 1/A  r_cut={c.r_cut:.6g} A  k_max={c.k_max}")
    print(f"energy           {out['energy']:.12g} eV")
    print(f"max |force|      {out['max_force']:.6g} eV/A")
    if stress is not None:
        s = np.asarray(stress)
        for k, row in enumerate(s):
            label = "stress (eV/A^3)" if k == 0 else ""
            print(f"{label:17s}{row[0]: .6e} {row[1]: .6e} {row[2]: .6e}")
    print(
        f"estimated error  {out['estimated_error']:.3g} eV (requested relative {args.accuracy:g})"
    )
    return 0


def _x64(args):
    import jax

    jax.config.update("jax_enable_x64", args.dtype == "float64")


def fit_command(args) -> int:
    _x64(args)
    from jaxlr import _fitjob, train

    config = None
    if args.config:
        try:
            with open(args.config) as handle:
                config = json.load(handle)
        except (OSError, json.JSONDecodeError) as err:
            raise SystemExit(f"jaxlr fit: --config {args.config!r}: {err}") from err
        if not isinstance(config, dict):
            raise SystemExit(f"jaxlr fit: --config {args.config!r} must hold a JSON object")
    if args.weight:
        from jaxlr.train import TrainConfig

        config = dict(config or {})
        weights = dict(config.get("weights") or TrainConfig().weights)
        for item in args.weight:
            name, sep, value = item.partition("=")
            try:
                weights[name.strip()] = float(value)
            except ValueError:
                sep = ""
            if not sep:
                raise SystemExit(f"jaxlr fit: --weight {item!r} must be NAME=NUMBER")
        config["weights"] = weights
    if args.model_arg:
        config = dict(config or {})
        model_args = dict(config.get("model_args") or {})
        for item in args.model_arg:
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise SystemExit(f"jaxlr fit: --model-arg {item!r} must be NAME=VALUE")
            try:
                model_args[name.strip()] = json.loads(value)
            except json.JSONDecodeError:
                model_args[name.strip()] = value  # a bare string
        config["model_args"] = model_args
    try:
        summary = _fitjob.run_fit(
            data=args.data,
            model=args.model,
            config=config,
            epochs=args.epochs,
            out=args.out,
            seed=args.seed,
            baseline=not args.no_baseline,
            progress=not args.quiet,
            resume=args.resume,
            max_frames=args.max_frames,
        )
    except train.TrainingDiverged as err:
        raise SystemExit(f"jaxlr fit: {err}") from err
    except (ValueError, FileExistsError, FileNotFoundError, train.CheckpointError) as err:
        raise SystemExit(f"jaxlr fit: {err}") from err
    print((Path(summary["run"]) / "report.txt").read_text())
    print(f"run folder: {summary['run']}")
    return 0


def evaluate_command(args) -> int:
    _x64(args)
    from jaxlr import _fitjob

    _fitjob.run_evaluate(args.run, args.data, out=args.out, which=args.which)
    return 0


def md_command(args) -> int:
    _x64(args)
    import ase.io

    from jaxlr import md, train

    try:
        model = train.load(args.run)
    except (train.CheckpointError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"jaxlr md: {err}") from err
    try:
        atoms = ase.io.read(args.structure, index=args.index)
    except Exception as err:  # ASE raises many kinds
        raise SystemExit(f"jaxlr md: cannot read {args.structure!r}: {err}") from err
    try:
        train.check_species(model, [_frame_of(atoms)], source=args.structure)
        result = md.run(
            model,
            atoms,
            steps=args.steps,
            dt=args.dt,
            temperature=args.temperature,
            ensemble=args.ensemble,
            pressure=args.pressure,
            field=args.field,
            every=args.every,
            out=args.out,
            seed=args.seed,
            progress=not args.quiet,
        )
    except (ValueError, FloatingPointError) as err:
        raise SystemExit(f"jaxlr md: {err}") from err
    log = result["log"]
    drift = log["total"][-1] - log["total"][0]
    print(
        f"{args.steps} steps of {args.dt} fs ({args.ensemble}): "
        f"final T {log['temperature'][-1]:.1f} K,"
        f" total-energy change {drift:+.3e} eV; files in {args.out}"
    )
    return 0


def _frame_of(atoms):
    from jaxlr.data import Frame

    return Frame(atoms.positions, atoms.numbers)


def build_parser():
    parser = argparse.ArgumentParser(prog="jaxlr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("energy", help="electrostatic energy, forces and stress of a structure")
    p.add_argument("file", help="any structure file ASE can read (extxyz, cif, POSCAR, ...)")
    p.add_argument(
        "--charges-from",
        default=None,
        metavar="KEY",
        help="per-atom array holding the charges (default: initial charges, "
        "'charges' or 'REF_charges')",
    )
    p.add_argument("--accuracy", type=float, default=1e-6, help="relative energy accuracy")
    p.add_argument("--method", default="auto", choices=["auto", "direct", "ewald", "pme"])
    p.add_argument("--index", default="-1", help="which frame of a trajectory (ASE index)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=energy_command)

    f = sub.add_parser("fit", help="train a long-range model (the main job)")
    f.add_argument(
        "--data",
        default="nacl_clusters",
        help="extxyz file or shipped dataset name "
        "(nacl_clusters, nacl_bulk, random_charges, water_clusters, water_wannier, ...; "
        "default nacl_clusters)",
    )
    f.add_argument(
        "--model",
        default=None,
        choices=[
            "latent",
            "explicit",
            "latent_dipoles",
            "wannier",
            "qeq",
            "lode",
            "attention",
            "ewald-mp",
            "short_range",
        ],
        help="model (default: latent, or the config file's)",
    )
    f.add_argument("--config", default=None, help="JSON file of TrainConfig fields")
    f.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="loss weight (repeatable): energy, forces, stress, charges, dipole, "
        "polarization, born_charges, wannier_centres; e.g. --weight born_charges=100",
    )
    f.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="model hyper-parameter (repeatable, VALUE as JSON); e.g. --model-arg sigma=0 "
        "(point charges) --model-arg features=64",
    )
    f.add_argument("--epochs", type=int, default=None, help="maximum epochs (default 60)")
    f.add_argument("--out", default=None, help="run folder (default runs/fit-DATE-TIME)")
    f.add_argument("--seed", type=int, default=None, help="split, shuffle and init seed")
    f.add_argument("--no-baseline", action="store_true", help="skip the ShortRange baseline")
    f.add_argument("--resume", action="store_true", help="continue the run in --out")
    f.add_argument("--max-frames", type=int, default=None, help="random subset of the data")
    f.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=fit_command)

    e = sub.add_parser("evaluate", help="MAE / RMSE of a trained run on a dataset")
    e.add_argument("run", help="run folder written by jaxlr fit")
    e.add_argument("--data", required=True, help="extxyz file or shipped dataset name")
    e.add_argument(
        "--out", default=None, help="predictions extxyz (default RUN/predictions.extxyz)"
    )
    e.add_argument("--which", default="best", choices=["best", "last"])
    e.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    e.set_defaults(func=evaluate_command)

    m = sub.add_parser("md", help="molecular dynamics with a trained model (jax-md)")
    m.add_argument("run", help="run folder written by jaxlr fit")
    m.add_argument("--structure", required=True, help="starting structure (any ASE format)")
    m.add_argument("--index", default="0", help="frame of a trajectory file (ASE index)")
    m.add_argument("--steps", type=int, default=1000)
    m.add_argument("--dt", type=float, default=1.0, help="time step (fs)")
    m.add_argument("--temperature", type=float, default=300.0, help="K")
    m.add_argument("--ensemble", default="nve", choices=["nve", "nvt", "npt"])
    m.add_argument("--pressure", type=float, default=0.0, help="GPa (npt)")
    m.add_argument(
        "--field",
        type=float,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="external field (V/Å), molecules with a charge model",
    )
    m.add_argument("--every", type=int, default=10, help="steps between log lines / frames")
    m.add_argument("--out", default="md", help="folder for thermo.csv, trajectory, plot")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=md_command)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
