"""QEq dense path (work in progress on the QEq issue)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

import jaxlr
import jaxlr.qeq as qeq
from jaxlr.kernels.qeq import coulomb_matrix, qeq_energy


def molecule(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.uniform(0, 6, (n, 3)),
        rng.normal(size=n),
        rng.uniform(8, 12, n),
        rng.uniform(0.6, 1.0, n),
    )


def numpy_qeq(pos, chi, hard, sig, constraints, totals):
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    s2 = sig[:, None] ** 2 + sig[None] ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        a = erf(d / np.sqrt(2 * s2)) / d
    np.fill_diagonal(a, 1 / (np.sqrt(np.pi) * sig))
    h = np.diag(hard) + jaxlr.units.COULOMB * a
    f = len(totals)
    kkt = np.block([[h, constraints.T], [constraints, np.zeros((f, f))]])
    return np.linalg.solve(kkt, np.concatenate([-chi, totals]))[: len(chi)]


def test_molecule_matches_numpy_and_fragments():
    pos, chi, hard, sig = molecule()
    q = qeq.solve(pos, chi, hard, sig, total_charge=0.5)
    ref = numpy_qeq(pos, chi, hard, sig, np.ones((1, 12)), np.array([0.5]))
    np.testing.assert_allclose(np.asarray(q), ref, atol=1e-12)
    frag = np.repeat([0, 1, 2], 4)
    q = qeq.solve(pos, chi, hard, sig, fragments=frag, fragment_charges=[1.0, -1.0, 0.0])
    b = np.zeros((3, 12))
    b[frag, np.arange(12)] = 1
    ref = numpy_qeq(pos, chi, hard, sig, b, np.array([1.0, -1.0, 0.0]))
    np.testing.assert_allclose(np.asarray(q), ref, atol=1e-12)
    np.testing.assert_allclose(b @ np.asarray(q), [1.0, -1.0, 0.0], atol=1e-12)


def test_gradients_and_hellmann_feynman():
    pos, chi, hard, sig = molecule(10, seed=1)

    def charge3(p, c, j, s):
        return qeq.solve(p, c, j, s, total_charge=0.2)[3]

    grads = jax.grad(charge3, argnums=(0, 1, 2, 3))(
        jnp.asarray(pos), jnp.asarray(chi), jnp.asarray(hard), jnp.asarray(sig)
    )
    h = 1e-5
    args = [pos, chi, hard, sig]
    for k, index in ((0, (2, 1)), (1, (4,)), (2, (3,)), (3, (7,))):
        plus = [a.copy() for a in args]
        minus = [a.copy() for a in args]
        plus[k][index] += h
        minus[k][index] -= h
        fd = (float(charge3(*plus)) - float(charge3(*minus))) / (2 * h)
        assert float(grads[k][index]) == pytest.approx(fd, rel=1e-6, abs=1e-10)
    # at the solution, dE/dR equals the partial derivative at fixed charges
    g_total = jax.grad(lambda p: qeq.energy(p, chi, hard, sig, total_charge=0.2))(jnp.asarray(pos))
    q = qeq.solve(pos, chi, hard, sig, total_charge=0.2)
    g_fixed = jax.grad(
        lambda p: qeq_energy(q, jnp.asarray(chi), jnp.asarray(hard), coulomb_matrix(p, sig))
    )(jnp.asarray(pos))
    np.testing.assert_allclose(np.asarray(g_total), np.asarray(g_fixed), atol=1e-10)


def test_periodic_solution_equalises_the_electronegativity():
    """chi_i + J_i q_i + phi_i(q) is the same for every atom, with phi from the
    (separately tested) Ewald potential of the Gaussian charges."""
    pos, chi, hard, sig = molecule(16, seed=2)
    cell = np.array([[7.0, 0.0, 0.0], [1.0, 7.5, 0.0], [0.5, -0.4, 6.5]])
    q = np.asarray(qeq.solve(pos, chi, hard, sig, cell, total_charge=0.3))
    assert q.sum() == pytest.approx(0.3, abs=1e-12)
    phi = jaxlr.electrostatic_potential(pos, q, cell, sigma=sig, method="ewald", accuracy=1e-10)
    mu = chi + hard * q + np.asarray(phi)
    assert np.ptp(mu) < 1e-6 * np.abs(mu).max()


def test_not_positive_definite_raises():
    pos, chi, hard, sig = molecule(6)
    with pytest.raises(ValueError, match="positive definite"):
        qeq.solve(pos, chi, -30.0 * np.ones(6), sig)
    with pytest.raises(ValueError, match="fragment_charges"):
        qeq.solve(pos, chi, hard, sig, fragments=np.repeat([0, 1], 3))


def test_matrix_free_matches_dense_and_reports_convergence():
    pos, chi, hard, sig = molecule(40, seed=3)
    cell = 9.0 * np.eye(3)
    args = (jnp.asarray(pos), jnp.asarray(chi), jnp.asarray(hard), jnp.asarray(sig))
    for c, kernel in ((None, "ewald"), (cell, "ewald"), (cell, "pme")):
        solver = qeq.prepare(pos, sig, c, accuracy=1e-9, kernel=kernel)
        cj = None if c is None else jnp.asarray(c)
        dense = jax.jit(lambda *a: solver.solve(*a, cj, jnp.asarray([0.4])))(*args)
        run = jax.jit(
            lambda p, x, j, s, g: solver.solve(
                p, x, j, s, cj, jnp.asarray([0.4]), method="matrix_free", tol=1e-10, guess=g
            )
        )
        free = run(*args, jnp.zeros(40))
        assert bool(dense.ok) and bool(free.ok) and 0 < int(free.iterations) < 100
        np.testing.assert_allclose(np.asarray(free.charges), np.asarray(dense.charges), atol=1e-6)
        # a warm start from the solution needs (almost) no iterations
        warm = run(*args, free.charges)
        assert int(warm.iterations) < int(free.iterations) / 2
    with pytest.raises(ValueError, match="did not converge"):
        qeq.solve(pos, chi, hard, sig, cell, method="matrix_free", max_iter=2)


def test_bad_input_names_the_argument():
    pos, chi, hard, sig = molecule(6)
    with pytest.raises(ValueError, match="electronegativity"):
        qeq.solve(pos, chi[:5], hard, sig)
    with pytest.raises(ValueError, match="sigma"):
        qeq.solve(pos, chi, hard, -sig)
    with pytest.raises(ValueError, match="method"):
        qeq.solve(pos, chi, hard, sig, method="cg")


def test_matrix_free_converges_on_ten_thousand_atoms():
    """10^4 atoms at 0.1 atoms/A^3 in a periodic cell, PME mat-vec: the solve
    converges, keeps the total charge, and the charges equalise chi + J q + phi(q)
    with phi from a separately prepared PME potential."""
    n = 10_000
    rng = np.random.default_rng(5)
    box = (n / 0.1) ** (1 / 3)
    pos = rng.uniform(0, box, (n, 3))
    chi = rng.normal(0.0, 1.0, n)
    hard = rng.uniform(8.0, 12.0, n)
    sig = 1.0
    result = qeq.prepare(pos, sig, box * np.eye(3), accuracy=1e-6, kernel="pme")
    res = jax.jit(
        lambda p, c, j: result.solve(
            p,
            c,
            j,
            sig,
            jnp.asarray(box * np.eye(3)),
            jnp.asarray([0.0]),
            method="matrix_free",
            tol=1e-6,
        )
    )(jnp.asarray(pos), jnp.asarray(chi), jnp.asarray(hard))
    assert bool(res.ok) and float(res.residual) <= 1e-6
    assert 2 < int(res.iterations) < 200
    q = np.asarray(res.charges)
    assert abs(q.sum()) < 1e-9 and np.std(q) > 0.01
    phi = jaxlr.electrostatic_potential(
        pos, q, box * np.eye(3), sigma=sig, method="pme", accuracy=1e-6
    )
    mu = chi + hard * q + np.asarray(phi)
    assert np.std(mu) < 1e-4 * np.std(chi)


@pytest.mark.parametrize("pbc", [None, (True, True, False)])
def test_periodic_energy_gradients_match_finite_differences(pbc):
    """Prepared solver under jit: dE/dR, dE/dcell, dE/dsigma of the QEq energy at
    the solution, in a 3D cell and a slab, against central differences."""
    pos, chi, hard, sig = molecule(12, seed=4)
    cell = np.array([[7.0, 0.0, 0.0], [1.0, 7.5, 0.0], [0.5, -0.4, 6.5]])
    solver = qeq.prepare(pos, sig, cell, pbc=pbc, accuracy=1e-10)

    @jax.jit
    def e(p, c, s):
        res = solver.solve(p, chi, hard, s, c, jnp.asarray([0.1]))
        return solver.energy(p, chi, hard, s, c, res.charges)

    args = [jnp.asarray(pos), jnp.asarray(cell), jnp.asarray(sig)]
    grads = jax.grad(e, argnums=(0, 1, 2))(*args)
    h = 1e-5
    for k, index in ((0, (3, 1)), (1, (0, 0)), (1, (1, 0)), (2, (5,))):
        plus = [np.array(a) for a in args]
        minus = [np.array(a) for a in args]
        plus[k][index] += h
        minus[k][index] -= h
        fd = (float(e(*plus)) - float(e(*minus))) / (2 * h)
        assert float(grads[k][index]) == pytest.approx(fd, rel=1e-6, abs=1e-8), (k, index)
