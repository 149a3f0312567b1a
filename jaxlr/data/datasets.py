"""Datasets shipped inside the package, and the command that regenerates them.

======================= ======================================================================
 name                    content
======================= ======================================================================
 ``nacl_clusters``       the default: Na8Cl8 (neutral) and Na9Cl8+ (charge +1) clusters,
                         300 frames each, GFN2-xTB energies, forces, Mulliken charges and
                         dipoles (tblite), sampled by Langevin MD at 600 K plus 0.05 Å
                         noise; then 150 further frames of each in which one Na of the
                         outer half (by distance from the centroid) is moved radially
                         0-7 Å away (``info["pull_distance"]``, ``info["pull_atom"]``;
                         a draw whose SCC fails within 1000 iterations is replaced by
                         the next): 900 frames
 ``nacl_path``           Na9Cl8+ with its outermost Na pulled radially away, 0 to 6 Å in 25
                         steps, GFN2-xTB labels (the physics check of ``jaxlr fit``)
 ``nacl_bulk``           periodic rock-salt NaCl, 8-atom cubic cells, each under a random
                         symmetric strain (+-3 %) with 0.15 Å Gaussian displacements, 200
                         frames, GFN2-xTB energies, forces, charges and stress
 ``random_charges``      classical benchmark: 32 point charges +-1 (Na +1, Cl -1) at random in
                         a periodic cube with a Born-Mayer repulsion; energies, forces and
                         stress from jaxlr's own Ewald; the true charges as ``REF_charges``
 ``water_clusters``      (H2O)_n, n = 1 to 5 (cyclic for n >= 3; 30, 40, 40, 40, 50 frames),
                         relaxed then sampled by Langevin MD at 300 K (0.5 fs steps, a frame
                         every 20) plus 0.02 Å noise; GFN2-xTB (accuracy 1e-5) energies,
                         forces, Mulliken charges, dipoles, Born charges ``REF_born_charges``
                         ((N, 9), e, route "dipole", 1e-3 Å steps) and polarizabilities
                         ``REF_polarizability`` (9, e·Å^2/V, 5e-3 V/Å steps); 20 % of the
                         frames (40) labelled under a uniform field ``info["field"]`` of
                         0.05-0.1 V/Å in a random direction (all labels at that field)
 ``ag3_charge_states``   Ag3 triangles (Ag-Ag 2.5-3.1 Å) from Langevin MD of Ag3+ at 300 K
                         (2 fs steps, a frame every 20) plus 0.02 Å noise; each of the 100
                         geometries labelled twice, as Ag3+ (charge +1) and Ag3- (charge
                         -1), ``info["geometry"]`` pairing them (200 frames): identical
                         inputs for a local model, energies 16.5-17.2 eV apart. GFN2-xTB
                         energies, forces, Mulliken charges, dipoles at an electronic
                         temperature of 2000 K (at tblite's 300 K the Ag3- SCC fails or
                         lands on different solutions near D3h, see below)
 ``carbon_chains``       C10H2 (linear polyyne H-C#C-...-C#C-H, neutral) and C10H3+ (the
                         first carbon protonated to CH2, charge +1), 100 frames each,
                         relaxed then Langevin MD at 400 K (0.5 fs steps, a frame every
                         20) plus 0.01 Å noise; GFN2-xTB labels. The chain is ~12 Å long:
                         in the cation ~0.44 e of the extra charge sits more than 6 Å from
                         the protonated carbon
 ``dimer_curves``        rigid-monomer binding curves of three dimers, ``info["dimer"]``:
                         "charged" NH4+ ... BF4- (overall neutral; H3 face to F3 face,
                         staggered), "polar" the water dimer (the relaxed dimer's
                         orientation), "apolar" the methane dimer (H3 face to H3 face,
                         staggered); monomers relaxed with GFN2-xTB, B placed along +x at
                         28 centre-of-mass separations ``info["separation"]`` from the
                         scanned equilibrium (2.72, 2.84, 3.81 Å) minus 0.5 Å to 12 Å,
                         each as the reference frame (``info["copy"] = 0``) and 6 copies
                         with both monomers turned at random about their centres of mass
                         and rattled by 0.02 Å (centres kept; no closer contact than 0.9
                         times the reference's, capped at 2.5 Å), plus the two monomers of
                         each dimer (``info["monomer"]`` 0 or 1): 594 frames. Per atom
                         ``arrays["fragment"]`` (0 or 1); per dimer frame
                         ``info["REF_fragment_energies"]`` (2,), eV, the energies of the
                         two isolated fragments at their geometry in that frame, so the
                         binding energy is ``REF_energy - sum(REF_fragment_energies)``;
                         per dimer frame ``info["fragment_charges"]`` (2,), e, the charge
                         of each fragment: models that honour fragment constraints read it.
                         GFN2-xTB at tblite accuracy 1e-5 (the apolar tail is ~1e-5 eV)
 ``water_wannier``       (H2O)_n, n = 1 to 6 (cyclic for n >= 3; 60, 50, 20, 10, 6, 4
                         frames: 150), relaxed and sampled with GFN2-xTB (Langevin MD at
                         350 K, 0.5 fs steps, a frame every 20, plus 0.02 Å noise), each
                         frame turned at random about its centre of mass; labelled with
                         pyscf PBE0/aug-cc-pVDZ (density fitting): energies, forces,
                         dipoles and ``REF_wannier_centres`` (N, 3), Å: per O the mean of
                         its 4 valence Foster-Boys orbital centroids (ion charges O +6,
                         H +1, centre -8), per H its own position; ``info
                         ["wannier_core_dipole"]`` (3,), e·Å, the O 1s term the DPLR
                         dipole misses (see :mod:`jaxlr.data.qm`; the ``qm`` extra)
======================= ======================================================================

Born charges are stored row-major, ``arrays["REF_born_charges"][i] = Z[i].reshape(9)``
with ``Z[i, a, b] = d mu_a / d R_ib``; the polarizability row-major,
``alpha[a, b] = d mu_a / d E_b`` (see :mod:`jaxlr.data.reference`). A reader that does
not know these keys (:func:`jaxlr.data.from_atoms`, hence :func:`load`) ignores them,
and ``wannier_core_dipole``, and the descriptive keys (``geometry``, ``dimer``,
``monomer``, ``separation``, ``copy``, ``pull_distance``, ``pull_atom``) too; read
them with ``ase.io.read(path(NAME), index=":")``. ``fragment`` with
``fragment_charges`` (the dimer frames) becomes :attr:`Frame.fragments` and
:attr:`Frame.fragment_charges` (each fragment's charge constrained by the charge
models).

SCC notes. Ag3- near the equilateral geometry has a (nearly) degenerate, half-filled
HOMO pair. With tblite's default Fermi smearing (300 K) the SCC of 7 of the 100
shipped anion geometries does not converge in 250 iterations (5 still fail with 1000,
2-3 with mixer damping 0.2 or 0.1 or the EEQ initial guess, one with all of them), and
3 converge to solutions up to 0.16 eV apart depending on those settings. At 2000 K
every geometry converges, to the same energy (within 5e-8 eV) for mixer damping
0.1-0.4 and both initial guesses; the labels are then the Mermin free energy (0.1-0.5
eV below the 300 K energies of Ag3-, 1-2 meV for Ag3+) and its exact gradient. Both
charge states use 2000 K. The ion pair of ``dimer_curves`` is NH4+ ... BF4- because
GFN2-xTB keeps integer fragment charges there (+-1 to 1e-6 e beyond 6 Å; the tail is
0.4 % weaker than ``-COULOMB / r`` at 12 Å), whereas in trials with Na+ or K+ and Cl-
or BF4-, or NH4+ and Cl-, the SCC did not converge (500 iterations) beyond 6-10 Å,
and where it did, Na+ and K+ kept only 0.6-0.8 e (fractional charge transfer).

Each file is gzip-compressed extxyz (no pickle); every frame records the generator's
settings (``gen_*`` keys). ``manifest.json`` beside the files records, per dataset,
the settings, the number of frames and the SHA-256 of the uncompressed text, which
:func:`load` checks. Regenerate bit-for-bit (tblite on one OpenMP thread) with::

    python -m jaxlr.data.datasets generate [NAME ...] [--out DIR]

(the ``reference`` extra, tblite, for the GFN2-xTB sets; ``water_wannier`` also
needs the ``qm`` extra, pyscf, and takes ~20 min of CPU: run it with
``OMP_NUM_THREADS=1`` so that numpy's BLAS is single-threaded too, ``--jobs N`` to
label in N single-threaded processes (same bytes), and check a prefix quickly with
``--limit K --out DIR``, whose text is the first K frames of the shipped file).
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
        "pull_frames": 150,
        "pull_distance": [0.0, 7.0],
        "pull_max_iterations": 1000,
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
    "ag3_charge_states": {
        "method": "GFN2-xTB",
        "electronic_temperature": 2000.0,
        "bond": 2.8,
        "sample_charge": 1.0,
        "relax_fmax": 0.005,
        "relax_steps": 2000,
        "n_geometries": 100,
        "charges": [1.0, -1.0],
        "temperature": 300.0,
        "timestep": 2.0,
        "interval": 20,
        "displacement": 0.02,
        "seed": 20261128,
    },
    "carbon_chains": {
        "method": "GFN2-xTB",
        "n_carbon": 10,
        "charges": [0.0, 1.0],
        "n_frames": [100, 100],
        "relax_fmax": 0.01,
        "relax_steps": 3000,
        "temperature": 400.0,
        "timestep": 0.5,
        "interval": 20,
        "displacement": 0.01,
        "seed": 20261128,
    },
    "dimer_curves": {
        "method": "GFN2-xTB",
        "accuracy": 1e-5,
        "dimers": [
            ["charged", "NH4", 1.0, "BF4", -1.0],
            ["polar", "H2O", 0.0, "H2O", 0.0],
            ["apolar", "CH4", 0.0, "CH4", 0.0],
        ],
        "relax_fmax": 0.005,
        "relax_steps": 3000,
        "scan": [2.4, 6.0, 0.01],
        "inner_offset": 0.5,
        "max_separation": 12.0,
        "n_separations": 28,
        "copies": 6,
        "min_contact": [0.9, 2.5],
        "displacement": 0.02,
        "seed": 20261128,
    },
    "water_wannier": {
        "method": "PBE0/aug-cc-pVDZ",
        "xc": "PBE0",
        "basis": "aug-cc-pVDZ",
        "auxbasis": "aug-cc-pVDZ-jkfit",
        "grid_level": 3,
        "conv_tol": 1e-10,
        "boys_conv_tol": 1e-10,
        "boys_conv_tol_grad": 1e-3,
        "boys_init_guess": "atomic",
        "systems": [1, 2, 3, 4, 5, 6],
        "n_frames": [60, 50, 20, 10, 6, 4],
        "sampler": "GFN2-xTB",
        "relax_fmax": 0.02,
        "relax_steps": 2000,
        "temperature": 350.0,
        "timestep": 0.5,
        "interval": 20,
        "displacement": 0.02,
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


def _nacl_thermal(s, k, n_frames, seed):
    """``n_frames`` unlabelled 600 K frames of system ``k`` of ``nacl_clusters``."""
    from jaxlr.data import reference

    n_na, n_cl = s["systems"][k]
    start = reference.nacl_cluster(n_na, n_cl, seed=s["seed"])
    return reference.sample(
        start,
        n_frames,
        temperature=s["temperature"],
        timestep=s["timestep"],
        interval=s["interval"],
        displacement=s["displacement"],
        seed=seed,
    )


def _nacl_clusters(s):
    from jaxlr.data import reference

    out = []
    for k in range(len(s["systems"])):
        frames = _nacl_thermal(s, k, s["n_frames"], s["seed"] + k)
        out += reference.label_frames(frames, method=s["method"])
    # pulled-out frames, after the thermal ones (whose bytes do not change): further
    # thermal frames, each with one Na of the outer half (its distance from the
    # centroid at least the median Na's, so it is not dragged through the cluster)
    # moved radially away, so that the training data covers what the nacl_path check
    # asks; a draw whose SCC does not converge is replaced by the next draw
    for k in range(len(s["systems"])):
        rng = np.random.default_rng(s["seed"] + 20 + k)
        for a in _nacl_thermal(s, k, s["pull_frames"], s["seed"] + 10 + k):
            out.append(_pulled(a, rng, s, reference))
    return out


def _pulled(atoms, rng, s, reference):
    """``atoms`` with one outer Na pulled radially by a random distance, labelled."""
    na = np.flatnonzero(atoms.numbers == 11)
    for _ in range(20):
        centre = atoms.positions.mean(axis=0)
        radius = np.linalg.norm(atoms.positions[na] - centre, axis=1)
        i = int(rng.choice(na[radius >= np.median(radius)]))
        d = float(rng.uniform(*s["pull_distance"]))
        a = atoms.copy()
        radial = a.positions[i] - centre
        a.positions[i] += d * radial / np.linalg.norm(radial)
        a.info["pull_distance"], a.info["pull_atom"] = d, i
        try:
            return reference.label_frames(
                [a], method=s["method"], max_iterations=s["pull_max_iterations"]
            )[0]
        except Exception as err:  # tblite's SCC failure ("SCF not converged"): draw again
            if type(err).__name__ != "TBLiteRuntimeError":
                raise
    raise RuntimeError("20 pull-out draws in a row did not converge")


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


def _ag3_charge_states(s):
    import ase

    from jaxlr.data import reference

    d = s["bond"]
    triangle = ase.Atoms("Ag3", positions=[[0, 0, 0], [d, 0, 0], [d / 2, d * 3**0.5 / 2, 0]])
    triangle.positions -= triangle.positions.mean(axis=0)
    triangle.info["charge"] = s["sample_charge"]
    start = reference.relax(triangle, fmax=s["relax_fmax"], max_steps=s["relax_steps"])
    frames = reference.sample(
        start,
        s["n_geometries"],
        temperature=s["temperature"],
        timestep=s["timestep"],
        interval=s["interval"],
        displacement=s["displacement"],
        seed=s["seed"],
    )
    out = []
    for k, frame in enumerate(frames):  # geometry-major: +1 then -1 at each geometry
        frame.info["geometry"] = k
        for q in s["charges"]:
            out += reference.label_frames(
                [frame],
                charge=q,
                method=s["method"],
                electronic_temperature=s["electronic_temperature"],
            )
    return out


def _polyyne(n_carbon, protonated):
    """Linear H-(C#C)_n/2-H along x (alternating 1.21/1.36 Å bonds, C-H 1.06 Å);
    ``protonated``: a second H on the first carbon, both at 120 degrees (a CH2 end)."""
    import ase

    x = [0.0]
    for k in range(n_carbon - 1):
        x.append(x[-1] + (1.21 if k % 2 == 0 else 1.36))
    carbons = [[c, 0.0, 0.0] for c in x]
    if protonated:
        c, s = 1.08 * np.cos(np.pi / 3), 1.08 * np.sin(np.pi / 3)
        ends = [[-c, s, 0.0]], [[x[-1] + 1.06, 0.0, 0.0], [-c, -s, 0.0]]
    else:
        ends = [[-1.06, 0.0, 0.0]], [[x[-1] + 1.06, 0.0, 0.0]]
    positions = ends[0] + carbons + ends[1]
    symbols = "H" + "C" * n_carbon + "H" * len(ends[1])
    atoms = ase.Atoms(symbols, positions=positions)
    atoms.info["charge"] = 1.0 if protonated else 0.0
    return atoms


def _carbon_chains(s):
    from jaxlr.data import reference

    out = []
    for k, (q, count) in enumerate(zip(s["charges"], s["n_frames"])):
        start = reference.relax(
            _polyyne(s["n_carbon"], protonated=q > 0),
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
        out += reference.label_frames(frames, method=s["method"])
    return out


def _tetrahedron(symbols, bond, apex):
    """XY4 with a C3 axis along x: one Y on the axis at ``apex`` (+1 or -1) times
    ``bond`` Å, the other three forming a face on the opposite side (staggered by 60
    degrees when ``apex`` is +1)."""
    import ase

    phase = np.pi / 3 if apex > 0 else 0.0
    ring = [phase + 2 * np.pi * k / 3 for k in range(3)]
    side = 2 * np.sqrt(2) / 3
    face = [[-apex / 3, side * np.cos(t), side * np.sin(t)] for t in ring]
    return ase.Atoms(symbols, positions=bond * np.array([[0, 0, 0], [apex, 0, 0]] + face))


def _rotation_onto(a, b):
    """Proper rotation R minimising |a @ R.T - b| (Kabsch; a, b centred, (N, 3))."""
    u, _, vt = np.linalg.svd(b.T @ a)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def _random_rotation(rng):
    """A uniformly distributed rotation matrix (unit quaternion, Shoemake)."""
    u1, u2, u3 = rng.uniform(size=3)
    w, x, y, z = (
        np.sqrt(1 - u1) * np.sin(2 * np.pi * u2),
        np.sqrt(1 - u1) * np.cos(2 * np.pi * u2),
        np.sqrt(u1) * np.sin(2 * np.pi * u3),
        np.sqrt(u1) * np.cos(2 * np.pi * u3),
    )
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _dimer_monomers(name, s):
    """The two relaxed monomers of dimer ``name``, each centred on its centre of mass,
    in the reference orientation of the curve (B is placed at +separation along x)."""
    from jaxlr.data import reference

    relax = {"fmax": s["relax_fmax"], "max_steps": s["relax_steps"], "method": s["method"]}
    if name == "charged":  # NH4+ showing an H3 face to BF4-'s F3 face, staggered
        pair = [_tetrahedron("NH4", 1.03, -1), _tetrahedron("BF4", 1.40, 1)]
        charges = [1.0, -1.0]
    elif name == "apolar":  # methane: H3 face to H3 face, staggered (D3d)
        pair = [_tetrahedron("CH4", 1.09, -1), _tetrahedron("CH4", 1.09, 1)]
        charges = [0.0, 0.0]
    elif name == "polar":  # the relaxed water dimer's orientation, rigid relaxed monomers
        dimer = reference.relax(reference.water_cluster(2), **relax)
        water = reference.relax(reference.water_cluster(1), **relax)
        w = water.positions - water.get_center_of_mass()
        pair, centres = [], []
        for part in (dimer[:3], dimer[3:]):
            centre = part.get_center_of_mass()
            rot = _rotation_onto(w, part.positions - centre)
            atoms = water.copy()
            atoms.positions = w @ rot.T
            pair.append(atoms)
            centres.append(centre)
        axis = (centres[1] - centres[0]) / np.linalg.norm(centres[1] - centres[0])
        # the rotation taking the O...O-like axis onto x (Rodrigues, axis x cross axis)
        v, c = np.cross(axis, [1.0, 0.0, 0.0]), axis[0]
        vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
        turn = np.eye(3) + vx + vx @ vx / (1 + c)
        for atoms in pair:
            atoms.positions = atoms.positions @ turn.T
            atoms.info["charge"] = 0.0
        return pair
    else:
        raise ValueError(f"unknown dimer {name!r}")
    out = []
    for atoms, q in zip(pair, charges):
        atoms.info["charge"] = q
        atoms = reference.relax(atoms, **relax)  # symmetric start: stays symmetric
        atoms.positions -= atoms.get_center_of_mass()
        out.append(atoms)
    return out


def _dimer(a, b, separation):
    """Monomer ``a`` plus monomer ``b`` shifted by ``separation`` Å along x; charge,
    fragment indices and separation recorded."""
    shifted = b.copy()
    shifted.positions = shifted.positions + [separation, 0.0, 0.0]
    atoms = a.copy() + shifted
    atoms.info = {"charge": a.info["charge"] + b.info["charge"]}
    atoms.arrays["fragment"] = np.repeat([0, 1], [len(a), len(b)])
    return atoms


def _min_contact(atoms):
    """Shortest distance between an atom of fragment 0 and one of fragment 1 (Å)."""
    part = atoms.arrays["fragment"]
    p = atoms.positions
    d = p[part == 0][:, None, :] - p[part == 1][None, :, :]
    return float(np.sqrt((d * d).sum(-1)).min())


def _dimer_curves(s):
    from jaxlr.data import reference

    rng = np.random.default_rng(s["seed"])
    opts = {"method": s["method"], "accuracy": s["accuracy"]}
    scale, ceiling = s["min_contact"]
    out = []
    for name, *_ in s["dimers"]:
        monomers = _dimer_monomers(name, s)
        for k, m in enumerate(monomers):
            m.info["dimer"], m.info["monomer"] = name, k
            m.arrays["fragment"] = np.full(len(m), k)
        out += reference.label_frames(monomers, **opts)
        # equilibrium of the rigid reference orientation on a grid
        grid = np.arange(s["scan"][0], s["scan"][1] + 0.5 * s["scan"][2], s["scan"][2])
        scan = reference.label_frames([_dimer(*monomers, r) for r in grid], **opts)
        r_eq = float(grid[np.argmin([a.info["REF_energy"] for a in scan])])
        if r_eq in (grid[0], grid[-1]):
            raise RuntimeError(f"dimer {name!r}: no minimum inside the scan {s['scan']}")
        separations = np.linspace(r_eq - s["inner_offset"], s["max_separation"], s["n_separations"])
        for r in separations:
            reference_frame = _dimer(*monomers, r)
            threshold = min(scale * _min_contact(reference_frame), ceiling)
            frames = [reference_frame]
            while len(frames) < 1 + s["copies"]:
                a, b = (m.copy() for m in monomers)
                for m in (a, b):
                    m.positions = m.positions @ _random_rotation(rng).T
                    noise = s["displacement"] * rng.standard_normal(m.positions.shape)
                    masses = m.get_masses()[:, None]
                    m.positions += noise - (masses * noise).sum(0) / masses.sum()  # COM kept
                trial = _dimer(a, b, r)
                if _min_contact(trial) >= threshold:
                    frames.append(trial)
            for copy, frame in enumerate(frames):
                frame.info.update(dimer=name, separation=float(r), copy=copy)
                frame.info["fragment_charges"] = np.array([m.info["charge"] for m in monomers])
                part = frame.arrays["fragment"]
                isolated = []
                for k, m in enumerate(monomers):
                    fragment = frame[part == k]
                    fragment.info = {"charge": m.info["charge"]}
                    isolated.append(reference.label(fragment, **opts)["energy"])
                frame.info["REF_fragment_energies"] = np.array(isolated)
            out += reference.label_frames(frames, **opts)
    return out


def _wannier_one(args):
    """Label one frame (a top-level function, so a process pool can call it)."""
    from jaxlr.data import qm

    atoms, where, settings = args
    return qm.wannier_label(atoms, where=where, **settings)


def _water_wannier(s, limit=None, jobs=1):
    """Water clusters (H2O)_n sampled with GFN2-xTB (relax, Langevin MD, noise), each
    frame turned at random about its centre of mass, labelled with PBE0 Wannier
    centres (:func:`jaxlr.data.qm.wannier_label`). ``limit``: only the first ``limit``
    frames (the same bytes as the full set's first frames). ``jobs``: label in that
    many single-threaded processes (each frame's computation, hence its bytes, is the
    same as in one process)."""
    from jaxlr.data import qm, reference

    qm_settings = {k: s[k] for k in qm.DEFAULTS if k in s}
    frames = []
    for k, (n, count) in enumerate(zip(s["systems"], s["n_frames"])):
        if limit is not None:
            count = min(count, limit - len(frames))
            if count <= 0:
                break
        start = reference.relax(
            reference.water_cluster(n), fmax=s["relax_fmax"], max_steps=s["relax_steps"]
        )
        sampled = reference.sample(
            start,
            count,
            temperature=s["temperature"],
            timestep=s["timestep"],
            interval=s["interval"],
            displacement=s["displacement"],
            seed=s["seed"] + k,
        )
        rng = np.random.default_rng(s["seed"] + 1000 + k)  # one rotation per frame
        for frame in sampled:
            centre = frame.get_center_of_mass()
            frame.positions = (frame.positions - centre) @ _random_rotation(rng).T + centre
        frames += sampled
    tasks = [(a, f"water_wannier: frame {i}", qm_settings) for i, a in enumerate(frames)]
    if jobs == 1:
        return [_wannier_one(t) for t in tasks]
    import concurrent.futures

    # largest frames first keeps the pool busy; results are put back in order
    order = sorted(range(len(tasks)), key=lambda i: -len(frames[i]))
    with concurrent.futures.ProcessPoolExecutor(jobs) as pool:
        done = dict(zip(order, pool.map(_wannier_one, [tasks[i] for i in order])))
    return [done[i] for i in range(len(tasks))]


_GENERATORS = {
    "nacl_clusters": _nacl_clusters,
    "nacl_path": _nacl_path,
    "nacl_bulk": _nacl_bulk,
    "random_charges": _random_charges,
    "water_clusters": _water_clusters,
    "ag3_charge_states": _ag3_charge_states,
    "carbon_chains": _carbon_chains,
    "dimer_curves": _dimer_curves,
    "water_wannier": _water_wannier,
}
#: generators that can produce only the first frames (``generate(..., limit=k)``)
_LIMITED = ("water_wannier",)

#: labels that :func:`jaxlr.data.from_atoms` may not know, carried from the generator's
#: frames into the file as they are (key, place, per-frame shape with N = atoms);
#: always written after the known labels, so the bytes do not depend on the reader.
_EXTRA_LABELS = (
    ("REF_born_charges", "arrays", ("N", 9)),
    ("REF_polarizability", "info", (9,)),
    ("REF_fragment_energies", "info", (2,)),
    ("wannier_core_dipole", "info", (3,)),
)
#: descriptive keys carried from the generator's frames into the file (after the
#: labels, in this order): key, place, type (of the value or, for a vector, its entries)
_METADATA = (
    ("geometry", "info", int),
    ("dimer", "info", str),
    ("monomer", "info", int),
    ("separation", "info", float),
    ("copy", "info", int),
    ("fragment_charges", "info", float),
    ("fragment", "arrays", int),
    ("pull_distance", "info", float),
    ("pull_atom", "info", int),
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


def _with_metadata(atoms, source):
    """``atoms`` with the descriptive keys of :data:`_METADATA` that ``source`` has."""
    for key, place, kind in _METADATA:
        origin = source.info if place == "info" else source.arrays
        if key not in origin:
            continue
        if place == "info" and np.ndim(origin[key]) == 0:
            atoms.info[key] = kind(origin[key])
        elif place == "info":  # a per-frame vector, e.g. fragment_charges
            atoms.info[key] = np.asarray(origin[key]).astype(kind)
        else:
            atoms.arrays[key] = np.asarray(origin[key]).astype(kind)
    return atoms


def _extxyz_text(images) -> str:
    import ase.io

    handle = io.StringIO()
    ase.io.write(handle, images, format="extxyz")
    return handle.getvalue()


def generate(name: str, out=None, *, limit: int | None = None, jobs: int = 1) -> Path:
    """Regenerate dataset ``name`` into folder ``out`` (default: the package's own),
    writing ``NAME.extxyz.gz`` (gzip mtime 0, so the bytes are reproducible) and its
    manifest entry, both atomically. Returns the file's path.

    ``limit`` (only for ``water_wannier``): write only the first ``limit`` frames, whose
    text is then the start of the full file's text; needs ``out`` and leaves the
    manifest alone (a quick bit-for-bit check). ``jobs`` (only for ``water_wannier``):
    label in that many processes (same bytes)."""
    _check_name(name)
    if limit is not None:
        if name not in _LIMITED:
            raise ValueError(f"limit is supported for {', '.join(_LIMITED)} only, not {name!r}")
        if out is None:
            raise ValueError("limit needs out (a partial set never replaces the shipped one)")
        if not (isinstance(limit, int) and limit >= 1):
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
    if jobs != 1 and name not in _LIMITED:
        raise ValueError(f"jobs is supported for {', '.join(_LIMITED)} only, not {name!r}")
    folder = Path(out) if out else path(name).parent
    folder.mkdir(parents=True, exist_ok=True)
    settings = SETTINGS[name]
    if name in _LIMITED:
        made = _GENERATORS[name](settings, limit, int(jobs))
    else:
        made = _GENERATORS[name](settings)
    images = [_record(a, name, settings) for a in made]
    # validate through the reader's checks before writing
    frames = [from_atoms(a, source=name, index=i) for i, a in enumerate(images)]
    atoms = [
        _with_metadata(_with_extra_labels(to_atoms(f), a, f"{name}: frame {i}"), a)
        for i, (f, a) in enumerate(zip(frames, images))
    ]
    text = _extxyz_text([_record(a, name, settings) for a in atoms])
    target = folder / f"{name}.extxyz.gz"
    _atomic_write(target, _gzip(text.encode()))
    if limit is not None:
        return target
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
    gen.add_argument(
        "--limit", type=int, default=None, help="only the first frames (water_wannier; needs --out)"
    )
    gen.add_argument("--jobs", type=int, default=1, help="labelling processes (water_wannier)")
    sub.add_parser("list", help="the shipped datasets")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name, record in manifest().items():
            print(f"{name:16s} {record['n_frames']:5d} frames  sha256 {record['sha256'][:16]}")
        return 0
    for name in args.names:
        _check_name(name)
    for name in args.names:
        file = generate(name, args.out, limit=args.limit, jobs=args.jobs)
        print(f"{name}: {file} ({checksum(file)[:16]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
