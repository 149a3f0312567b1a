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

import jax
import jax.numpy as jnp
import numpy as np

from jaxlr.units import COULOMB

__all__ = ["coulomb_neighbor_list", "model_neighbor_list", "box_to_cell"]


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
    volume = abs(np.linalg.det(cell))
    heights = [
        volume / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) for k in range(3)
    ]
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
    **neighbor_kwargs,
):
    """A trained jaxlr model (or a ``jaxlr fit`` run folder) as a jax-md energy.

    Args:
      model_or_run: a :mod:`jaxlr.models` model or a run folder path.
      displacement_fn, box, fractional_coordinates, dr_threshold,
        capacity_multiplier: as :func:`coulomb_neighbor_list`.
      species: (N,) atomic numbers.
      total_charge: the system's total charge (e) for charge models.
      accuracy: relative Ewald accuracy of the charge models.

    Returns:
      ``(neighbor_fn, energy_fn)``; ``energy_fn(R, neighbor, **kwargs)`` in eV, and
      ``energy_fn.charges(R, neighbor, **kwargs)`` the model's charges (charge models).
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
    el = (
        pot.electrostatics_for(
            [frame], "periodic", sigma=model.sigma, cutoff=cutoff, accuracy=accuracy
        )
        if model.has_charges
        else pot.Electrostatics("periodic")
    )
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

    def outputs(R, neighbor, **kwargs):
        base, c = _current_cell(box0, kwargs)
        c = c.astype(R.dtype)
        cart, frac = _cartesian(R, base.astype(R.dtype), c, fractional_coordinates)
        pairs = _pairs_from(neighbor, frac, n, cutoff, False)
        return model(cart, numbers_j, mask, pairs, c, jnp.asarray(total_charge, R.dtype), el)

    def energy_fn(R, neighbor, **kwargs):
        return outputs(R, neighbor, **kwargs)["energy"]

    energy_fn.charges = lambda R, neighbor, **kw: outputs(R, neighbor, **kw)["charges"]
    energy_fn.cutoff = cutoff
    return neighbor_fn, energy_fn
