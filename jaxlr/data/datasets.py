"""Datasets shipped inside the package, and the command that regenerates them.

=================== ======================================================================
 name                content
=================== ======================================================================
 ``nacl_clusters``   the default: Na8Cl8 (neutral) and Na9Cl8+ (charge +1) clusters,
                     300 frames each, GFN2-xTB energies, forces, Mulliken charges and
                     dipoles (tblite), sampled by Langevin MD at 600 K plus 0.05 Å noise
 ``nacl_path``       Na9Cl8+ with its outermost Na pulled radially away, 0 to 6 Å in 25
                     steps, GFN2-xTB labels (the physics check of ``jaxlr fit``)
 ``nacl_bulk``       periodic rock-salt NaCl, 8-atom cubic cells, each under a random
                     symmetric strain (+-3 %) with 0.15 Å Gaussian displacements, 200
                     frames, GFN2-xTB energies, forces, charges and stress
 ``random_charges``  classical benchmark: 32 point charges +-1 (Na +1, Cl -1) at random in
                     a periodic cube with a Born-Mayer repulsion; energies, forces and
                     stress from jaxlr's own Ewald; the true charges as ``REF_charges``
 ``water_clusters``  (H2O)_n, n = 1 to 5 (cyclic for n >= 3; 30, 40, 40, 40, 50 frames),
                     relaxed then sampled by Langevin MD at 300 K (0.5 fs steps, a frame
                     every 20) plus 0.02 Å noise; GFN2-xTB (accuracy 1e-5) energies,
                     forces, Mulliken charges, dipoles, Born charges ``REF_born_charges``
                     ((N, 9), e, route "dipole", 1e-3 Å steps) and polarizabilities
                     ``REF_polarizability`` (9, e·Å^2/V, 5e-3 V/Å steps); 20 % of the
                     frames (40) labelled under a uniform field ``info["field"]`` of
                     0.05-0.1 V/Å in a random direction (all labels at that field)
=================== ======================================================================

Born charges are stored row-major, ``arrays["REF_born_charges"][i] = Z[i].reshape(9)``
with ``Z[i, a, b] = d mu_a / d R_ib``; the polarizability row-major,
``alpha[a, b] = d mu_a / d E_b`` (see :mod:`jaxlr.data.reference`). A reader that does
not know these two keys (:func:`jaxlr.data.from_atoms`) ignores them; read them with
``ase.io.read(path("water_clusters"), index=":")``.

Each file is gzip-compressed extxyz (no pickle); every frame records the generator's
settings (``gen_*`` keys). ``manifest.json`` beside the files records, per dataset,
the settings, the number of frames and the SHA-256 of the uncompressed text, which
:func:`load` checks. Regenerate bit-for-bit (tblite on one OpenMP thread) with::

    python -m jaxlr.data.datasets generate [NAME ...] [--out DIR]

(the ``reference`` extra, tblite, for the GFN2-xTB sets).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from jaxlr.data._io import Frame, from_atoms, to_atoms

__all__ = ["NAMES", "SETTINGS", "load", "path", "manifest", "generate", "checksum"]

#: generator settings per dataset (recorded in the files and the manifest)
SETTINGS = {
    "nacl_clusters": {
        "method": "GFN2-xTB",
        "systems": [[8, 8], [9, 8]],
        "n_frames": 300,
        "temperature": 600.0,
        "timestep": 1.0,
        "interval": 10,
        "displacement": 0.05,
        "seed": 20261128,
    },
    "nacl_path": {
        "method": "GFN2-xTB",
        "systems": [[9, 8]],
        "distances": [0.0, 6.0],
        "n_frames": 25,
        "max_iterations": 1000,
        "seed": 20261128,
    },
    "nacl_bulk": {
        "method": "GFN2-xTB",
        "lattice_constant": 5.64,
        "strain": 0.03,
        "displacement": 0.15,
        "n_frames": 200,
        "max_iterations": 300,
        "seed": 20261128,
    },
    "random_charges": {
        "n_atoms": 32,
        "box": 9.3,
        "min_distance": 2.0,
        "born_mayer_a": 1200.0,
        "born_mayer_rho": 0.32,
        "repulsion_cutoff": 4.5,
        "n_frames": 300,
        "seed": 20261128,
    },
    "water_clusters": {
        "method": "GFN2-xTB",
        "accuracy": 1e-5,
        "systems": [1, 2, 3, 4, 5],
        "n_frames": [30, 40, 40, 40, 50],
        "relax_fmax": 0.02,
        "relax_steps": 2000,
        "temperature": 300.0,
        "timestep": 0.5,
        "interval": 20,
        "displacement": 0.02,
        "field_fraction": 0.2,
        "field_magnitude": [0.05, 0.1],
        "born_delta": 1e-3,
        "field_delta": 5e-3,
        "seed": 20261128,
    },
}
NAMES = tuple(SETTINGS)
_DIR = "datasets"


def path(name: str) -> Path:
    """Path of a shipped dataset file (``name`` in :data:`NAMES`)."""
    _check_name(name)
    return Path(str(resources.files("jaxlr.data").joinpath(_DIR, f"{name}.extxyz.gz")))


def _check_name(name):
    if name not in SETTINGS:
        raise ValueError(f"unknown dataset {name!r}; the shipped ones are {', '.join(NAMES)}")


def manifest(folder=None) -> dict:
    """The manifest: ``{name: {"settings", "n_frames", "sha256"}}``."""
    folder = Path(folder) if folder else path(NAMES[0]).parent
    file = folder / "manifest.json"
    if not file.exists():
        return {}
    return json.loads(file.read_text())


def checksum(file) -> str:
    """SHA-256 of the uncompressed text of a ``.extxyz.gz`` file."""
    with gzip.open(file, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def load(name: str, *, verify: bool = True) -> list[Frame]:
    """Frames of a shipped dataset; ``verify`` checks the manifest's checksum."""
    import ase.io

    file = path(name)
    if not file.exists():
        raise FileNotFoundError(
            f"dataset {name!r} is not shipped at {file}; regenerate it with "
            f"`python -m jaxlr.data.datasets generate {name}`"
        )
    with gzip.open(file, "rt") as handle:
        text = handle.read()
    if verify:
        record = manifest().get(name)
        digest = hashlib.sha256(text.encode()).hexdigest()
        if record is None or record["sha256"] != digest:
            raise ValueError(f"dataset {name!r} ({file}) does not match its manifest checksum")
    images = ase.io.read(io.StringIO(text), index=":", format="extxyz")
    return [from_atoms(a, source=str(file), index=i) for i, a in enumerate(images)]


# ------------------------------------------------------------------ generators


def _record(atoms, name, settings):
    atoms.info["gen_dataset"] = name
    for key, value in settings.items():
        if isinstance(value, list):
            value = json.dumps(value).replace(" ", "")
        atoms.info[f"gen_{key}"] = value
    return atoms


def _nacl_clusters(s):
    from jaxlr.data import reference

    out = []
    for k, (n_na, n_cl) in enumerate(s["systems"]):
        start = reference.nacl_cluster(n_na, n_cl, seed=s["seed"])
        frames = reference.sample(
            start,
            s["n_frames"],
            temperature=s["temperature"],
            timestep=s["timestep"],
            interval=s["interval"],
            displacement=s["displacement"],
            seed=s["seed"] + k,
        )
        out += reference.label_frames(frames, method=s["method"])
    return out


def _nacl_path(s):
    from jaxlr.data import reference

    (n_na, n_cl) = s["systems"][0]
    start = reference.nacl_cluster(n_na, n_cl, seed=s["seed"])
    pos = start.positions
    centre = pos.mean(axis=0)
    na = np.flatnonzero(start.numbers == 11)
    k = na[np.argmax(np.linalg.norm(pos[na] - centre, axis=1))]
    direction = (pos[k] - centre) / np.linalg.norm(pos[k] - centre)
    frames = []
    for d in np.linspace(*s["distances"], s["n_frames"]):
        a = start.copy()
        a.positions[k] = pos[k] + d * direction
        a.info["path_distance"] = float(d)
        a.info["path_atom"] = int(k)
        frames.append(a)
    return reference.label_frames(frames, method=s["method"], max_iterations=s["max_iterations"])


def _nacl_bulk(s):
    from ase.build import bulk

    from jaxlr.data import reference

    rng = np.random.default_rng(s["seed"])
    out = []
    while len(out) < s["n_frames"]:
        a = bulk("NaCl", "rocksalt", a=s["lattice_constant"], cubic=True)
        eps = rng.uniform(-s["strain"], s["strain"], (3, 3))
        a.set_cell(a.cell.array @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
        a.positions = a.positions + s["displacement"] * rng.standard_normal(a.positions.shape)
        a.info["charge"] = 0.0
        try:
            out += reference.label_frames(
                [a], method=s["method"], max_iterations=s["max_iterations"]
            )
        except Exception as err:  # an SCC that does not converge: skip the frame
            if type(err).__name__ != "TBLiteRuntimeError":
                raise
    return out


def random_charges_energy(positions, cell, pairs, a, rho, r_cut):
    """Repulsion (eV) of the classical random-charge system: a Born-Mayer term
    ``a (exp(-r / rho) - exp(-r_cut / rho))`` (``a`` eV, ``rho`` and ``r_cut`` Å) for
    every pair of ``pairs`` (a half list) closer than ``r_cut``; positions (N, 3) Å."""
    import jax.numpy as jnp

    from jaxlr.neighbors import pair_vectors

    d = pair_vectors(positions, pairs, cell)
    r = jnp.sqrt(jnp.sum(d * d, axis=-1) + (~pairs.mask))
    v = a * (jnp.exp(-r / rho) - np.exp(-r_cut / rho))
    rep = jnp.sum(jnp.where(pairs.mask & (r < r_cut), v, 0.0))
    return rep


def _random_charges(s):
    import ase
    import jax
    import jax.numpy as jnp

    import jaxlr
    from jaxlr.neighbors import Pairs, _host_pairs

    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(s["seed"])
    n, box = s["n_atoms"], s["box"]
    cell = box * np.eye(3)
    q = np.array([1.0] * (n // 2) + [-1.0] * (n - n // 2))
    numbers = np.where(q > 0, 11, 17)
    template = jaxlr.prepare_energy(rng.uniform(0, box, (n, 3)), q, cell, accuracy=1e-8)
    out = []
    while len(out) < s["n_frames"]:
        pos = np.zeros((n, 3))
        placed = 0
        while placed < n:  # random sequential placement with a minimum distance
            trial = rng.uniform(0, box, 3)
            d = pos[:placed] - trial
            d -= box * np.round(d / box)
            if placed == 0 or np.min(np.linalg.norm(d, axis=1)) >= s["min_distance"]:
                pos[placed] = trial
                placed += 1
        i, j, shifts = _host_pairs(pos, s["repulsion_cutoff"], cell, (True,) * 3, True)
        pairs = Pairs(
            jnp.asarray(i),
            jnp.asarray(j),
            jnp.asarray(shifts),
            jnp.ones(len(i), bool),
            s["repulsion_cutoff"],
            True,
        )

        def energy(p, c):
            rep = random_charges_energy(
                p, c, pairs, s["born_mayer_a"], s["born_mayer_rho"], s["repulsion_cutoff"]
            )
            return template(p, jnp.asarray(q), c) + rep

        e, f, stress = jaxlr.energy_forces_stress(energy, jnp.asarray(pos), jnp.asarray(cell))
        atoms = ase.Atoms(numbers=numbers, positions=pos, cell=cell, pbc=True)
        atoms.info["charge"] = 0.0
        atoms.info["REF_energy"] = float(e)
        atoms.info["REF_stress"] = np.asarray(stress)
        atoms.arrays["REF_forces"] = np.asarray(f)
        atoms.arrays["REF_charges"] = q.copy()
        out.append(atoms)
    return out


def _water_clusters(s):
    from jaxlr.data import reference

    rng = np.random.default_rng(s["seed"])  # which frames get a field, and the fields
    low, high = s["field_magnitude"]
    out = []
    for k, (n, count) in enumerate(zip(s["systems"], s["n_frames"])):
        start = reference.relax(
            reference.water_cluster(n),
            fmax=s["relax_fmax"],
            max_steps=s["relax_steps"],
            method=s["method"],
        )
        frames = reference.sample(
            start,
            count,
            temperature=s["temperature"],
            timestep=s["timestep"],
            interval=s["interval"],
            displacement=s["displacement"],
            seed=s["seed"] + k,
        )
        n_field = int(round(s["field_fraction"] * count))
        for i in np.sort(rng.choice(count, size=n_field, replace=False)):
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            frames[i].info["field"] = rng.uniform(low, high) * direction
        out += reference.label_frames(
            frames,
            method=s["method"],
            accuracy=s["accuracy"],
            response=True,
            born_delta=s["born_delta"],
            field_delta=s["field_delta"],
        )
    return out


_GENERATORS = {
    "nacl_clusters": _nacl_clusters,
    "nacl_path": _nacl_path,
    "nacl_bulk": _nacl_bulk,
    "random_charges": _random_charges,
    "water_clusters": _water_clusters,
}

#: labels that :func:`jaxlr.data.from_atoms` may not know, carried from the generator's
#: frames into the file as they are (key, place, per-frame shape with N = atoms);
#: always written after the known labels, so the bytes do not depend on the reader.
_EXTRA_LABELS = (
    ("REF_born_charges", "arrays", ("N", 9)),
    ("REF_polarizability", "info", (9,)),
)


def _with_extra_labels(atoms, source, where):
    """``atoms`` (from :func:`to_atoms`) with the extra labels of ``source``."""
    for key, place, shape in _EXTRA_LABELS:
        store = atoms.info if place == "info" else atoms.arrays
        store.pop(key, None)
        origin = source.info if place == "info" else source.arrays
        if key not in origin:
            continue
        value = np.asarray(origin[key], np.float64)
        expected = tuple(len(source) if d == "N" else d for d in shape)
        if value.shape != expected or not np.all(np.isfinite(value)):
            raise ValueError(f"{where}: {key!r} has shape {value.shape} (expected {expected})")
        store[key] = value
    return atoms


def _extxyz_text(images) -> str:
    import ase.io

    handle = io.StringIO()
    ase.io.write(handle, images, format="extxyz")
    return handle.getvalue()


def generate(name: str, out=None) -> Path:
    """Regenerate dataset ``name`` into folder ``out`` (default: the package's own),
    writing ``NAME.extxyz.gz`` (gzip mtime 0, so the bytes are reproducible) and its
    manifest entry, both atomically. Returns the file's path."""
    _check_name(name)
    folder = Path(out) if out else path(name).parent
    folder.mkdir(parents=True, exist_ok=True)
    settings = SETTINGS[name]
    images = [_record(a, name, settings) for a in _GENERATORS[name](settings)]
    # validate through the reader's checks before writing
    frames = [from_atoms(a, source=name, index=i) for i, a in enumerate(images)]
    atoms = [
        _with_extra_labels(to_atoms(f), a, f"{name}: frame {i}")
        for i, (f, a) in enumerate(zip(frames, images))
    ]
    text = _extxyz_text([_record(a, name, settings) for a in atoms])
    target = folder / f"{name}.extxyz.gz"
    _atomic_write(target, _gzip(text.encode()))
    record = manifest(folder)
    record[name] = {
        "settings": settings,
        "n_frames": len(frames),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
    }
    _atomic_write(folder / "manifest.json", (json.dumps(record, indent=1) + "\n").encode())
    return target


def _gzip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as g:
        g.write(data)
    return buf.getvalue()


def _atomic_write(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxlr.data.datasets", description="jaxlr's shipped datasets"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="regenerate datasets bit-for-bit")
    gen.add_argument("names", nargs="*", default=list(NAMES), help=f"of {', '.join(NAMES)}")
    gen.add_argument("--out", default=None, help="folder (default: the package's)")
    sub.add_parser("list", help="the shipped datasets")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name, record in manifest().items():
            print(f"{name:16s} {record['n_frames']:5d} frames  sha256 {record['sha256'][:16]}")
        return 0
    for name in args.names:
        _check_name(name)
    for name in args.names:
        file = generate(name, args.out)
        print(f"{name}: {file} ({checksum(file)[:16]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
