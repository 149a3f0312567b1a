"""jax-md adapters: fixed-charge electrostatics and trained jaxlr models as jax-md
energy functions with jax-md neighbour lists.

Both factories are shaped like jax-md's own ``*_neighbor_list`` ones and return
``(neighbor_fn, energy_fn)``; ``energy_fn(R, neighbor, **kwargs)`` honours jax-md's
contract:

- ``box`` is jax-md's: a scalar side, a (3,) vector of sides or a (3, 3) matrix whose
  COLUMNS are the lattice vectors (``box = cell.T``);
- with ``fractional_coordinates=True`` (the default, as ``space.periodic_general``)
  ``R`` is fractional and the energy is a function of the Cartesian positions
  ``R @ box.T``, so ``grad`` w.r.t. Cartesian positions through ``space.transform``
  gives Cartesian forces; with ``False``, ``R`` is Cartesian;
- the keyword arguments ``box=`` / ``new_box=`` (a changed box, NPT) and
  ``perturbation=`` (``quantity.stress``: the box becomes ``perturbation @ box``) are
  honoured; other keyword arguments are accepted and ignored;
- pairs come from ``jax_md.partition.neighbor_list`` (the caller allocates, updates
  under jit with the skin ``dr_threshold`` and reallocates when
  ``neighbor.did_buffer_overflow`` is set — jax-md's own protocol; :func:`run`
  does this); pair vectors use the minimum image, so the real-space cutoff must stay
  below half the smallest box height (checked on the host).

jax-md's stress ``quantity.stress`` is ``-(1/V) dU/d(eps)``, the opposite sign of
jaxlr's (ASE's) stress.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr.response import output_dipole
from jaxlr.units import COULOMB

__all__ = ["coulomb_neighbor_list", "model_neighbor_list", "box_to_cell", "run"]


def box_to_cell(box):
    """(3, 3) cell (rows are lattice vectors) of a jax-md box (scalar, (3,) or (3, 3)
    with columns the lattice vectors)."""
    box = jnp.asarray(box)
    if box.ndim == 0:
        return box * jnp.eye(3, dtype=box.dtype)
    if box.ndim == 1:
        return jnp.diag(box)
    return box.T


def _host_cell(box):
    cell = np.asarray(box_to_cell(np.asarray(box, np.float64)))
    if cell.shape != (3, 3) or abs(np.linalg.det(cell)) < 1e-9:
        raise ValueError(f"box must describe a non-singular 3D cell, got shape {np.shape(box)}")
    return cell


def _check_min_image(cell, r_cut, name="box"):
    from jaxlr.cell import host_heights

    heights = host_heights(cell)
    if r_cut >= 0.5 * min(heights):
        raise ValueError(
            f"{name}: the pair cutoff {r_cut:.3f} Å is not below half the smallest box height "
            f"({0.5 * min(heights):.3f} Å), so minimum-image pairs would miss images; "
            "use a larger box (a supercell) or jaxlr.prepare_energy"
        )


def _current_cell(box0, kwargs):
    b = kwargs.get("new_box", kwargs.get("box", box0))
    cell = box_to_cell(b)
    p = kwargs.get("perturbation")
    if p is not None:  # box -> perturbation @ box (a scalar in isotropic NPT)
        p = jnp.asarray(p)
        cell = cell * p if p.ndim == 0 else cell @ p.T
    return box_to_cell(b), cell


def _cartesian(R, cell_unperturbed, cell, fractional):
    """(Cartesian positions, fractional positions). Fractional input goes through
    ``jax_md.space.transform``, whose derivative treats the tangent of ``R`` as
    Cartesian: ``-grad`` w.r.t. fractional ``R`` is then the Cartesian force."""
    from jax_md import space

    if fractional:
        return space.transform(cell.T, R), R
    frac = jnp.linalg.solve(cell_unperturbed.T, R.T).T
    return frac @ cell, frac


def _pairs_from(neighbor, frac, n, cutoff, half):
    from jaxlr.neighbors import Pairs

    idx = neighbor.idx
    i, j = idx[0], idx[1]
    mask = (i < n) & (j < n)
    i = jnp.where(mask, i, 0).astype(jnp.int32)
    j = jnp.where(mask, j, 0).astype(jnp.int32)
    d = jax.lax.stop_gradient(frac[j] - frac[i])
    shifts = -jnp.round(d).astype(jnp.int32)
    return Pairs(i, j, jnp.where(mask[:, None], shifts, 0), mask, cutoff, half)


def _example_positions(n, cell, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, 3)) @ cell


def coulomb_neighbor_list(
    displacement_fn,
    box,
    charges,
    *,
    accuracy=1e-5,
    method="auto",
    sigma=None,
    prefactor=COULOMB,
    fractional_coordinates=True,
    dr_threshold=0.5,
    capacity_multiplier=1.25,
    example_positions=None,
    **neighbor_kwargs,
):
    """Electrostatic energy of fixed charges in a periodic box for jax-md.

    Args:
      displacement_fn: jax-md displacement (``space.periodic_general(box,
        fractional_coordinates=...)``); only the neighbour list uses it.
      box: jax-md box (see the module docstring).
      charges: (N,) charges (e); fixed (closed over).
      accuracy, method, sigma, prefactor: as :func:`jaxlr.prepare_energy` (method
        ``auto``, ``ewald`` or ``pme``; tuned once on the host for this box).
      fractional_coordinates: whether ``R`` is fractional (jax-md's default for
        ``periodic_general``).
      dr_threshold: neighbour-list skin (Å).
      capacity_multiplier: neighbour capacity headroom.
      example_positions: Cartesian positions for tuning (default: uniform random).

    Returns:
      ``(neighbor_fn, energy_fn)``; ``energy_fn(R, neighbor, **kwargs)`` in eV.
    """
    from jax_md import partition

    import jaxlr
    from jaxlr.kernels.ewald import ewald_energy
    from jaxlr.kernels.pme import pme_energy

    cell = _host_cell(box)
    q = np.asarray(charges, np.float64)
    if q.ndim != 1:
        raise ValueError(f"charges must be (N,), got shape {q.shape}")
    n = len(q)
    pos = (
        _example_positions(n, cell) if example_positions is None else np.asarray(example_positions)
    )
    prepared = jaxlr.prepare_energy(
        pos, q, cell, method=method, accuracy=accuracy, sigma=sigma, prefactor=prefactor
    )
    if prepared.method not in ("ewald", "pme"):
        raise ValueError(f"method {prepared.method!r} is not available for a periodic box")
    config = prepared.config
    r_cut = float(config.r_cut)
    _check_min_image(cell, r_cut + dr_threshold)
    kernel = ewald_energy if prepared.method == "ewald" else pme_energy
    neighbor_fn = partition.neighbor_list(
        displacement_fn,
        box,
        r_cut,
        dr_threshold=dr_threshold,
        capacity_multiplier=capacity_multiplier,
        fractional_coordinates=fractional_coordinates,
        format=partition.OrderedSparse,
        **neighbor_kwargs,
    )
    box0 = jnp.asarray(box)
    charges_j = jnp.asarray(q)

    def energy_fn(R, neighbor, **kwargs):
        base, c = _current_cell(box0, kwargs)
        c = c.astype(R.dtype)
        cart, frac = _cartesian(R, base.astype(R.dtype), c, fractional_coordinates)
        pairs = _pairs_from(neighbor, frac, n, r_cut, True)
        qs = charges_j.astype(R.dtype)
        return kernel(cart, qs, c, pairs, config=config, sigma=sigma, prefactor=prefactor)

    energy_fn.method = prepared.method
    energy_fn.config = config
    return neighbor_fn, energy_fn


def model_neighbor_list(
    model_or_run,
    displacement_fn,
    box,
    species,
    *,
    total_charge=0.0,
    accuracy=1e-5,
    fractional_coordinates=True,
    dr_threshold=0.5,
    capacity_multiplier=1.25,
    field=None,
    **neighbor_kwargs,
):
    """A trained jaxlr model (or a ``jaxlr fit`` run folder) as a jax-md energy.

    Args:
      model_or_run: a :mod:`jaxlr.models` model or a run folder path.
      displacement_fn: as :func:`coulomb_neighbor_list` (so are ``box``,
        ``fractional_coordinates``, ``dr_threshold`` and ``capacity_multiplier``).
      species: (N,) atomic numbers.
      total_charge: the system's total charge (e) for charge models.
      accuracy: relative Ewald accuracy of the charge models.
      field: optional (3,) external field (V/Å, charge models): the energy becomes
        the electric enthalpy ``U - V P . field`` with the cell dipole ``V P`` of
        :mod:`jaxlr.response` (atoms at their images inside the cell, so the field
        force ``Z_i^T field`` uses image-independent Born charges with an exact sum
        rule). A field does work on a conducting cell: use a thermostat.

    Returns:
      ``(neighbor_fn, energy_fn)``; ``energy_fn(R, neighbor, **kwargs)`` in eV,
      ``energy_fn.charges(R, neighbor, **kwargs)`` the model's charges and
      ``energy_fn.dipole(R, neighbor, **kwargs)`` the cell dipole ``V P`` (e·Å;
      charge models). A QEq model with the matrix-free solver takes ``guess=``
      (charges, e.g. the previous step's) in ``**kwargs`` to warm-start its solve.
    """
    from jax_md import partition

    from jaxlr.data import Frame
    from jaxlr.models import _potentials as pot

    model = model_or_run
    if not hasattr(model, "cutoff"):
        from jaxlr import train

        model = train.load(model_or_run)
    cell = _host_cell(box)
    numbers = np.asarray(species, np.int64)
    if numbers.ndim != 1:
        raise ValueError(f"species must be (N,) atomic numbers, got shape {numbers.shape}")
    known = getattr(model, "trained_species", None)
    if known:
        bad = sorted(set(numbers.tolist()) - set(known))
        if bad:
            raise ValueError(f"species: atomic number(s) {bad} the model was not trained on")
    n = len(numbers)
    frame = Frame(_example_positions(n, cell), numbers, cell, (True,) * 3, float(total_charge))
    cutoff = pot.pair_cutoff(model, [frame], accuracy)
    _check_min_image(cell, cutoff + dr_threshold)
    el = model.route([frame], "periodic", cutoff=cutoff, accuracy=accuracy)
    neighbor_fn = partition.neighbor_list(
        displacement_fn,
        box,
        cutoff,
        dr_threshold=dr_threshold,
        capacity_multiplier=capacity_multiplier,
        fractional_coordinates=fractional_coordinates,
        format=partition.Sparse,
        **neighbor_kwargs,
    )
    box0 = jnp.asarray(box)
    numbers_j = jnp.asarray(numbers, jnp.int32)
    mask = jnp.ones(n, bool)

    e_field = _field(field, model)

    def outputs(R, neighbor, guess=None, **kwargs):
        base, c = _current_cell(box0, kwargs)
        c = c.astype(R.dtype)
        cart, frac = _cartesian(R, base.astype(R.dtype), c, fractional_coordinates)
        pairs = _pairs_from(neighbor, frac, n, cutoff, False)
        args = (cart, numbers_j, mask, pairs, c, jnp.asarray(total_charge, R.dtype), el)
        extra = {"guess": guess} if _warm_start(model) else {}
        if getattr(model, "couples_field", False) and e_field is not None:
            extra["field"] = e_field.astype(R.dtype)
        out = model(*args, **extra)
        if model.has_charges:
            out = dict(out, dipole=output_dipole(out, cart, None, c))
        return out

    def energy_fn(R, neighbor, **kwargs):
        out = outputs(R, neighbor, **kwargs)
        if e_field is None or getattr(model, "couples_field", False):  # QEq: the enthalpy already
            return out["energy"]
        return out["energy"] - jnp.dot(out["dipole"], e_field.astype(R.dtype))

    energy_fn.charges = lambda R, neighbor, **kw: outputs(R, neighbor, **kw)["charges"]
    energy_fn.dipole = lambda R, neighbor, **kw: outputs(R, neighbor, **kw)["dipole"]
    energy_fn.cutoff = cutoff
    return neighbor_fn, energy_fn


def _warm_start(model):
    """True for models whose charge solve takes a ``guess`` (matrix-free QEq)."""
    return getattr(model, "solver", None) == "matrix_free"


def _field(field, model):
    if field is None:
        return None
    e = np.asarray(field, np.float64)
    if e.shape != (3,) or not np.all(np.isfinite(e)):
        raise ValueError(f"field must be 3 finite numbers (V/Å), got {field!r}")
    if not model.has_charges:
        raise ValueError("a field needs a charge model (explicit or latent)")
    return jnp.asarray(e)


# ---------------------------------------------------------------------- driver

#: fs per jax-md time unit with Å, eV and amu (Å sqrt(amu / eV))
TIME_UNIT_FS = 10.180505710774743
KB = 8.617333262e-5  # eV/K
GPA = 1.0 / 160.21766208  # eV/Å^3 per GPa


def _free_pairs(n):
    """A static all-pairs 'neighbour list' for molecules (full list)."""
    from jaxlr.neighbors import all_pairs

    return all_pairs(n, half=False)


def run(
    model,
    atoms,
    *,
    steps,
    dt=1.0,
    temperature=300.0,
    ensemble="nve",
    pressure=0.0,
    field=None,
    every=10,
    out=None,
    seed=0,
    progress=True,
    accuracy=1e-5,
    warm_start=False,
):
    """Molecular dynamics of ``atoms`` (ASE) with a trained model in jax-md.

    Args:
      model: a :mod:`jaxlr.models` model (``jaxlr.train.load(run)``).
      atoms: the starting structure; ``info["charge"]`` its total charge. Periodic
        (3D) cells use :func:`model_neighbor_list`; molecules all pairs.
      steps: MD steps; dt: time step (fs); temperature: K (initial velocities, and
        the thermostat for ``nvt`` / ``npt``); ensemble: ``nve``, ``nvt`` (Nose-Hoover
        chain) or ``npt`` (Nose-Hoover, isotropic, cells only) at ``pressure`` (GPa).
      field: optional (3,) external field (V/Å, charge models) through the electric
        enthalpy ``U - mu . field``: ``mu = sum_i q_i r_i`` for a molecule, the cell
        dipole ``V P`` of :mod:`jaxlr.response` for a cell. ``potential`` and ``total``
        in the log are then the enthalpy (conserved in NVE for a molecule); in a
        conducting cell the field does work (Joule heating), so use ``nvt``. The log
        gains the dipole ``dipole_x/y/z`` (e·Å) for charge models.
      every: steps between log lines / trajectory frames. out: folder for
        ``thermo.csv``, ``trajectory.extxyz`` and ``energy.png`` (None: no files).
      warm_start: QEq models with ``solver="matrix_free"`` only: start each step's
        charge solve from the previous step's charges. jax-md's integrators do not
        return the charges of their force call, so this costs one more (warm) solve
        per step; it pays off only when a cold solve takes more than twice the
        iterations of a warm one (not the case for the Jacobi-preconditioned QEq
        systems measured, 12 -> 10 iterations), hence off by default.

    Returns:
      dict with the thermo log (lists) and the final ASE atoms.
    """
    from jax_md import quantity, simulate, space

    ensemble = ensemble.lower()
    if ensemble not in ("nve", "nvt", "npt"):
        raise ValueError(f"ensemble must be nve, nvt or npt, got {ensemble!r}")
    if steps < 1 or every < 1:
        raise ValueError(f"steps and every must be positive, got {steps}, {every}")
    pbc = tuple(bool(p) for p in atoms.pbc)
    periodic = all(pbc)
    if any(pbc) and not periodic:
        raise ValueError(f"atoms: pbc={pbc}; MD takes molecules or 3D cells")
    if ensemble == "npt" and not periodic:
        raise ValueError("npt needs a periodic cell")
    numbers = np.asarray(atoms.numbers)
    charge = float(atoms.info.get("charge", 0.0))
    n = len(numbers)
    dtype = jnp.asarray(1.0).dtype
    field = _field(field, model)
    if field is not None:
        field = field.astype(dtype)
    if periodic:
        cell = np.asarray(atoms.cell.array, np.float64)
        box = jnp.asarray(cell.T, dtype)
        displacement, shift = space.periodic_general(box)
        neighbor_fn, energy_fn = model_neighbor_list(
            model,
            displacement,
            box,
            numbers,
            total_charge=charge,
            accuracy=accuracy,
            field=field,
        )
        dipole_fn = energy_fn.dipole if model.has_charges else None
        R = jnp.asarray(atoms.get_scaled_positions(), dtype)
        nbrs = neighbor_fn.allocate(R)
    else:
        from jaxlr.models import _potentials as pot

        displacement, shift = space.free()
        pairs = _free_pairs(n)
        el = pot.Electrostatics("molecule")
        numbers_j = jnp.asarray(numbers, jnp.int32)
        mask = jnp.ones(n, bool)

        def molecule(R, guess=None):
            args = (R, numbers_j, mask, pairs, None, jnp.asarray(charge, R.dtype), el)
            extra = {"guess": guess} if _warm_start(model) else {}
            if getattr(model, "couples_field", False) and field is not None:
                extra["field"] = field.astype(R.dtype)
            return model(*args, **extra)

        def energy_fn(R, neighbor=None, guess=None, **kw):
            out = molecule(R, guess)
            e = out["energy"]
            if field is not None and not getattr(model, "couples_field", False):
                e = e - jnp.dot(output_dipole(out, R), field)
            return e

        def dipole_fn(R, neighbor=None, guess=None, **kw):
            return output_dipole(molecule(R, guess), R)

        energy_fn.charges = lambda R, neighbor=None, guess=None, **kw: molecule(R, guess)["charges"]

        if not model.has_charges:
            dipole_fn = None

        neighbor_fn = None
        R = jnp.asarray(atoms.positions, dtype)
        nbrs = None
    masses = jnp.asarray(atoms.get_masses(), dtype)
    kT = KB * float(temperature)
    dt_internal = float(dt) / TIME_UNIT_FS
    if ensemble == "nve":
        init, apply = simulate.nve(energy_fn, shift, dt_internal)
    elif ensemble == "nvt":
        init, apply = simulate.nvt_nose_hoover(energy_fn, shift, dt_internal, kT)
    else:
        init, apply = simulate.npt_nose_hoover(
            energy_fn, shift, dt_internal, float(pressure) * GPA, kT
        )
    key = jax.random.PRNGKey(seed)
    kw = {} if nbrs is None else {"neighbor": nbrs}
    if ensemble == "npt":
        state = init(key, R, box, mass=masses, **kw)
    else:
        state = init(key, R, kT=kT, mass=masses[:, None], **kw)

    def current_box(state):
        return simulate.npt_box(state) if ensemble == "npt" else (box if periodic else None)

    if warm_start and not _warm_start(model):
        raise ValueError(
            "warm_start=True needs a QEq model with solver='matrix_free' (it warm-starts "
            "the matrix-free charge solve)"
        )
    warm = bool(warm_start)

    def chunk(state, nbrs, guess, k):
        def body(_, carry):
            state, nbrs, guess = carry
            kwargs = {} if nbrs is None else {"neighbor": nbrs}
            if warm:  # the QEq solve starts from the previous step's charges
                kwargs["guess"] = guess
            state = apply(state, **kwargs)
            if nbrs is not None:
                b = current_box(state)
                nbrs = (
                    nbrs.update(state.position, box=b)
                    if ensemble == "npt"
                    else nbrs.update(state.position)
                )
            if warm:
                kw = {"neighbor": nbrs} if nbrs is not None else {}
                if ensemble == "npt":
                    kw["box"] = current_box(state)
                guess = energy_fn.charges(state.position, guess=guess, **kw)
            return state, nbrs, guess

        return jax.lax.fori_loop(0, k, body, (state, nbrs, guess))

    chunk = jax.jit(chunk, static_argnums=3)
    guess = jnp.zeros(n, dtype) if warm else None

    @jax.jit
    def energies(state, nbrs):
        kwargs = {} if nbrs is None else {"neighbor": nbrs}
        if ensemble == "npt":
            kwargs["box"] = simulate.npt_box(state)
        kin = quantity.kinetic_energy(momentum=state.momentum, mass=state.mass)
        mu = jnp.zeros(3) if dipole_fn is None else dipole_fn(state.position, **kwargs)
        return energy_fn(state.position, **kwargs), kin, mu

    def thermo(state, nbrs):
        pot_e, kin, mu = energies(state, nbrs)
        pot_e, kin = float(pot_e), float(kin)
        return pot_e, kin, 2.0 * kin / (3 * n * KB), np.asarray(mu)

    from tqdm.auto import tqdm

    log = {
        "step": [],
        "time_fs": [],
        "potential": [],
        "kinetic": [],
        "total": [],
        "temperature": [],
        "volume": [],
    }
    if dipole_fn is not None:
        log.update(dipole_x=[], dipole_y=[], dipole_z=[])
    frames = []

    def record(step, state, nbrs):
        pot_e, kin, temp, mu = thermo(state, nbrs)
        b = current_box(state)
        volume = float(abs(np.linalg.det(np.asarray(b)))) if b is not None else float("nan")
        values = (step, step * dt, pot_e, kin, pot_e + kin, temp, volume, *mu.tolist())
        for k, v in zip(log, values):
            log[k].append(v)
        frames.append(_to_atoms(atoms, state, b, pot_e, periodic))
        if not np.isfinite(pot_e + kin):
            raise FloatingPointError(
                f"non-finite energy at step {step}; lower dt or check the model"
            )

    record(0, state, nbrs)
    bar = tqdm(total=steps, desc="md", disable=not progress)
    done = 0
    while done < steps:
        k = min(every, steps - done)
        new_state, new_nbrs, new_guess = chunk(state, nbrs, guess, k)
        if new_nbrs is not None and bool(new_nbrs.did_buffer_overflow):
            # reallocate on the host from the last good state and redo the chunk
            b = current_box(state)
            nbrs = (
                neighbor_fn.allocate(state.position, box=b)
                if ensemble == "npt"
                else neighbor_fn.allocate(state.position)
            )
            continue
        state, nbrs, guess = new_state, new_nbrs, new_guess
        done += k
        record(done, state, nbrs)
        bar.update(k)
        bar.set_postfix(T=f"{log['temperature'][-1]:.0f} K", E=f"{log['total'][-1]:.4f}")
    bar.close()
    if out is not None:
        _write_md(Path(out), log, frames)
    return {"log": log, "atoms": frames[-1]}


def _to_atoms(template, state, box, energy, periodic):
    a = template.copy()
    pos = np.asarray(state.position, np.float64)
    if periodic:
        cell = np.asarray(box, np.float64).T
        a.set_cell(cell)
        a.positions = pos @ cell
    else:
        a.positions = pos
    a.info["MODEL_energy"] = energy
    return a


def _write_md(out, log, frames):
    import csv
    import os
    import tempfile

    import ase.io

    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=out)
    with os.fdopen(fd, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(list(log))
        w.writerows(zip(*log.values()))
    os.replace(tmp, out / "thermo.csv")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".extxyz", dir=out)
    with os.fdopen(fd, "w") as handle:
        ase.io.write(handle, frames, format="extxyz")
    os.replace(tmp, out / "trajectory.extxyz")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(5, 5), sharex=True)
    t = np.asarray(log["time_fs"])
    a1.plot(t, np.asarray(log["total"]) - log["total"][0], label="total")
    a1.plot(t, np.asarray(log["potential"]) - log["potential"][0], label="potential")
    a1.set_ylabel("E - E(0) (eV)")
    a1.legend(fontsize=7)
    a2.plot(t, log["temperature"])
    a2.set_ylabel("T (K)")
    a2.set_xlabel("time (fs)")
    fig.tight_layout()
    fig.savefig(out / "energy.png", dpi=110)
    plt.close(fig)
