r"""Slabs: two periodic axes (the first two cell vectors) and one open direction.

The slab is embedded in a 3D-periodic cell whose third vector is ``length * n``,
``n = (a x b) / |a x b|`` the unit normal of the periodic plane (any in-plane
triclinic cell), and summed by Ewald or PME with the correction of Yeh & Berkowitz
(J. Chem. Phys. 111, 3155 (1999)) extended to charged slabs by Ballenegger, Arnold
& Cerdà (J. Chem. Phys. 131, 094107 (2009)), in Gaussian units:

    E_corr = (2 pi / V) [M_z^2 - Q sum_i q_i (z_i^2 + sigma_i^2) - Q^2 L^2 / 12],

``z_i = r_i . n``, ``M_z = sum q_i z_i``, ``Q = sum q_i``, ``V = |a x b| L``. It
removes the interaction of the slab with the dipole sheets of its images and, for a
charged slab, the background's dependence on ``L``: the energy no longer depends
on the vacuum once the gap between images is large against the in-plane period
(the residual falls as ``exp(-2 pi gap / L_plane)``). ``M_z`` and the second
moment use the positions as given (a contiguous slab); the 3D sum does not care
where the slab sits along ``n``.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxlr.kernels.coulomb import _sigma_per_atom

__all__ = [
    "slab_normal",
    "slab_cell",
    "slab_correction",
    "slab_correction_matrix",
    "slab_length",
    "slab_thickness",
]


def slab_normal(cell):
    """Unit normal of the plane of the first two lattice vectors (jax)."""
    n = jnp.cross(cell[0], cell[1])
    return n / jnp.linalg.norm(n)


def slab_cell(cell, length):
    """(3, 3) periodic cell for the slab sum: rows a, b and ``length * n``."""
    return jnp.stack([cell[0], cell[1], length * slab_normal(cell)])


def slab_correction(positions, charges, cell, length, sigma=None, dipoles=None):
    """Yeh-Berkowitz / Ballenegger slab correction (Gaussian units, times prefactor).

    Atomic dipoles (point or Gaussian) enter through the moments of the charge
    density along the normal: ``M_z += sum mu_iz`` and the second moment
    ``sum q_i (z_i^2 + sigma_i^2) += 2 sum mu_iz z_i``.

    Args:
      positions: (N, 3) positions in Å.
      charges: (N,) charges in e.
      cell: (3, 3) cell whose first two rows are the periodic vectors.
      length: extent of the periodic cell along the normal in Å (static).
      sigma: None or Gaussian widths in Å (their second moment adds sigma^2).
      dipoles: None or (N, 3) atomic dipoles in e·Å.
    """
    n = slab_normal(cell)
    z = positions @ n
    area = jnp.linalg.norm(jnp.cross(cell[0], cell[1]))
    volume = area * length
    total = jnp.sum(charges)
    dipole = jnp.sum(charges * z)
    second = z * z
    sig = _sigma_per_atom(sigma, charges)
    if sig is not None:
        second = second + sig * sig
    moment2 = jnp.sum(charges * second)
    if dipoles is not None:
        mu_z = dipoles @ n
        dipole = dipole + jnp.sum(mu_z)
        moment2 = moment2 + 2.0 * jnp.sum(mu_z * z)
    return (2.0 * jnp.pi / volume) * (
        dipole * dipole - total * moment2 - total * total * length * length / 12.0
    )


def slab_correction_matrix(positions, cell, length, sigma=None):
    """(N, N) Hessian of :func:`slab_correction` in the charges (Gaussian units):
    ``(4 pi / V) [z_i z_j - (w_i + w_j) / 2 - L^2 / 12]``, ``w = z^2 + sigma^2``."""
    n = slab_normal(cell)
    z = positions @ n
    area = jnp.linalg.norm(jnp.cross(cell[0], cell[1]))
    w = z * z
    sig = _sigma_per_atom(sigma, z)
    if sig is not None:
        w = w + sig * sig
    a = z[:, None] * z[None, :] - 0.5 * (w[:, None] + w[None, :]) - length * length / 12.0
    return (4.0 * jnp.pi / (area * length)) * a


def slab_thickness(positions, cell, sigma=None):
    """Host: extent of the atoms along the normal, plus 4 sigma on each side."""
    cell = np.asarray(cell, dtype=np.float64)
    n = np.cross(cell[0], cell[1])
    z = np.asarray(positions, dtype=np.float64) @ (n / np.linalg.norm(n))
    smax = 0.0 if sigma is None else float(np.max(sigma))
    return float(z.max() - z.min()) + 8.0 * smax


def slab_length(positions, cell, accuracy, sigma=None, r_cut=0.0):
    """Host choice of the periodic length along the normal for a slab.

    The gap between the slab and its images is the largest of: the slab's own
    thickness, ``r_cut``, 10 Å and ``L_plane ln(10 / accuracy) / (2 pi)`` (the
    residual image interaction falls as ``exp(-2 pi gap / L_plane)``), with
    ``L_plane`` the larger in-plane period (plane height)."""
    cell = np.asarray(cell, dtype=np.float64)
    area = np.linalg.norm(np.cross(cell[0], cell[1]))
    thickness = slab_thickness(positions, cell, sigma)
    # in-plane periods: the heights of the 2D cell
    plane = max(area / np.linalg.norm(cell[0]), area / np.linalg.norm(cell[1]))
    gap = max(thickness, r_cut, 10.0, plane * math.log(10.0 / accuracy) / (2.0 * math.pi))
    return float(thickness + gap)
