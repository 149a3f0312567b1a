"""Induced dipoles (jaxlr.induction): Thole-damped polarizable atoms."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf, erfc

import jaxlr
import jaxlr.induction as induction
from jaxlr.kernels.induction import charge_field, dipole_tensor, thole_factors

K = jaxlr.units.COULOMB
A_THOLE = 0.39


def molecule(n=8, seed=0):
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 5, (n, 3))
    alpha = rng.uniform(0.5, 1.5, n)
    q = 0.5 * rng.normal(size=n)
    return pos, alpha, q


# ------------------------------------------------------- independent numpy model


def numpy_lambdas(d, ai, aj, a):
    if not a:
        return 1.0, 1.0
    x = a * d**3 / np.sqrt(ai * aj)
    return 1 - np.exp(-x), 1 - (1 + x) * np.exp(-x)


def numpy_matrix(pos, alpha, a):
    """A = diag(1/alpha) - T, T built element by element from Thole's formulas."""
    n = len(pos)
    m = np.zeros((3 * n, 3 * n))
    for i in range(n):
        m[3 * i : 3 * i + 3, 3 * i : 3 * i + 3] = np.eye(3) / alpha[i]
        for j in range(n):
            if i != j:
                r = pos[j] - pos[i]
                d = np.linalg.norm(r)
                l3, l5 = numpy_lambdas(d, alpha[i], alpha[j], a)
                t = 3 * l5 * np.outer(r, r) / d**5 - l3 * np.eye(3) / d**3
                m[3 * i : 3 * i + 3, 3 * j : 3 * j + 3] = -t
    return m


def numpy_field(pos, q, alpha, a, sigma=None):
    """Permanent field (V/Å) of point or Gaussian charges, Thole lambda3-damped."""
    n = len(pos)
    e = np.zeros((n, 3))
    for i in range(n):
        for j in range(n):
            if i != j:
                r = pos[i] - pos[j]
                d = np.linalg.norm(r)
                l3, _ = numpy_lambdas(d, alpha[i], alpha[j], a)
                frac = 1.0
                if sigma is not None:
                    x = d / (np.sqrt(2) * sigma[j])
                    frac = erf(x) - 2 / np.sqrt(np.pi) * x * np.exp(-x * x)
                e[i] += K * q[j] * l3 * frac * r / d**3
    return e


def numpy_dipoles(pos, alpha, q, field, a=A_THOLE, damp_field=True, sigma=None):
    e0 = numpy_field(pos, q, alpha, a if damp_field else None, sigma) + field
    mu = np.linalg.solve(numpy_matrix(pos, alpha, a), e0.reshape(-1) / K)
    return mu.reshape(-1, 3), -0.5 * np.sum(mu * e0.reshape(-1))


# ----------------------------------------------- independent numpy Ewald (tin foil)


def numpy_ewald_tensors(pos, cell, beta=1.2, n_real=4, n_k=10):
    """Tin-foil Ewald sums (Gaussian units): (N,N,3,3) dipole field tensor Tp with
    E_i = sum_j Tp_ij mu_j (all images, own images included, self excluded) and
    (N,N,3) charge field vectors Cp with E_i = sum_j Cp_ij q_j (neutral cell)."""
    n = len(pos)
    vol = abs(np.linalg.det(cell))
    recip = 2 * np.pi * np.linalg.inv(cell).T
    tp = np.zeros((n, n, 3, 3))
    cp = np.zeros((n, n, 3))
    rng = range(-n_real, n_real + 1)
    for i, j in itertools.product(range(n), range(n)):
        for s in itertools.product(rng, rng, rng):
            if i == j and s == (0, 0, 0):
                continue
            r = pos[i] - pos[j] + np.array(s) @ cell  # source j (image) -> receiver i
            d = np.linalg.norm(r)
            g = 2 * beta / np.sqrt(np.pi) * np.exp(-(beta**2) * d**2)
            b = (erfc(beta * d) + d * g) / d**3
            c = (3 * erfc(beta * d) + d * g * (3 + 2 * beta**2 * d**2)) / d**5
            tp[i, j] += c * np.outer(r, r) - b * np.eye(3)
            cp[i, j] += b * r
    krng = range(-n_k, n_k + 1)
    for m in itertools.product(krng, krng, krng):
        if m == (0, 0, 0):
            continue
        k = np.array(m) @ recip
        k2 = k @ k
        a = 4 * np.pi / vol * np.exp(-k2 / (4 * beta**2)) / k2
        for i, j in itertools.product(range(n), range(n)):
            ph = k @ (pos[i] - pos[j])
            tp[i, j] -= a * np.cos(ph) * np.outer(k, k)
            cp[i, j] += a * np.sin(ph) * k
    for i in range(n):
        tp[i, i] += 4 * beta**3 / (3 * np.sqrt(np.pi)) * np.eye(3)
    return tp, cp


def numpy_periodic(pos, cell, alpha, q, field, a, n_img=2):
    """Dipoles and energy in a cell: Ewald tensors plus Thole's correction summed
    over every image within n_img cells (no neighbour list)."""
    n = len(pos)
    tp, cp = numpy_ewald_tensors(pos, cell)
    rng = range(-n_img, n_img + 1)
    for i, j in itertools.product(range(n), range(n)):
        for s in itertools.product(rng, rng, rng):
            if i == j and s == (0, 0, 0):
                continue
            r = pos[i] - pos[j] + np.array(s) @ cell
            d = np.linalg.norm(r)
            x = a * d**3 / np.sqrt(alpha[i] * alpha[j])
            l3, l5 = 1 - np.exp(-x), 1 - (1 + x) * np.exp(-x)
            tp[i, j] += 3 * (l5 - 1) * np.outer(r, r) / d**5 - (l3 - 1) * np.eye(3) / d**3
            cp[i, j] += (l3 - 1) * r / d**3
    m = np.diag(np.repeat(1 / alpha, 3)) - tp.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)
    e0 = K * np.einsum("ija,j->ia", cp, q) + field
    mu = np.linalg.solve(m, e0.reshape(-1) / K).reshape(n, 3)
    return mu, -0.5 * np.sum(mu * e0), m


# ------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(thole=None),
        dict(damp_field=False),
        dict(thole=1.2, sigma=0.7),
    ],
)
def test_matches_numpy_dense_and_matrix_free(options):
    pos, alpha, q = molecule()
    field = np.array([0.1, -0.2, 0.05])
    if options.get("thole", 1) is None:
        pos = pos * 2.0  # undamped: keep the atoms apart
    a = options.get("thole", A_THOLE)
    sig = options.get("sigma")
    ref, u_ref = numpy_dipoles(
        pos,
        alpha,
        q,
        field,
        a,
        options.get("damp_field", True),
        None if sig is None else np.full(len(q), sig),
    )
    for method, atol in (("dense", 1e-13), ("matrix_free", 1e-9)):
        mu = induction.solve(pos, alpha, charges=q, field=field, method=method, **options)
        np.testing.assert_allclose(np.asarray(mu), ref, atol=atol * np.abs(ref).max())
        u = induction.energy(pos, alpha, charges=q, field=field, method=method, **options)
        np.testing.assert_allclose(float(u), u_ref, rtol=1e-12)


def test_field_and_tensor_pieces():
    pos, alpha, q = molecule(6, seed=3)
    sig = np.linspace(0.3, 0.9, 6)
    for a, s in ((A_THOLE, None), (None, sig), (A_THOLE, sig)):
        e = K * charge_field(jnp.asarray(pos), q, alpha, a, None if s is None else s)
        np.testing.assert_allclose(np.asarray(e), numpy_field(pos, q, alpha, a, s), rtol=1e-12)
    # lambda5 = lambda3 - (r/3) d lambda3 / dr (T is minus the Hessian of the damped 1/r)
    r = jnp.linspace(0.2, 4.0, 20)
    l3, l5 = thole_factors(r, 1.1, 0.7, A_THOLE)
    dl3 = jax.vmap(jax.grad(lambda x: thole_factors(x, 1.1, 0.7, A_THOLE)[0]))(r)
    np.testing.assert_allclose(np.asarray(l5), np.asarray(l3 - r / 3 * dl3), rtol=1e-12)
    # coincident atoms: the finite limit -a / sqrt(alpha_i alpha_j) I, smooth around it
    t0 = dipole_tensor(jnp.zeros((1, 3)), 1.1, 0.7, A_THOLE)
    np.testing.assert_allclose(np.asarray(t0[0]), -A_THOLE / np.sqrt(0.77) * np.eye(3))
    t1 = dipole_tensor(jnp.array([[1e-4, 0.0, 0.0]]), 1.1, 0.7, A_THOLE)
    np.testing.assert_allclose(np.asarray(t1), np.asarray(t0), atol=1e-9)


@pytest.mark.parametrize("thole", [A_THOLE, None])
def test_dimer_against_analytic_thole(thole):
    """Two atoms at distance r: the dimer's polarizability along and across the bond,
    alpha_mol = (a1 + a2 + 2 a1 a2 t) / (1 - a1 a2 t^2) with t_par = (3 lambda5 -
    lambda3) / r^3, t_perp = -lambda3 / r^3 (Applequist's dimer with Thole's
    damping); for identical atoms 2a / (1 - a t)."""
    a1, a2, r = 1.3, 0.8, 1.7
    x = (A_THOLE * r**3 / np.sqrt(a1 * a2)) if thole else np.inf
    l3 = 1 - np.exp(-x)
    l5 = 1 - (1 + x) * np.exp(-x) if thole else 1.0
    t_par, t_perp = (3 * l5 - l3) / r**3, -l3 / r**3
    rng = np.random.default_rng(5)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    across = np.cross(axis, [1.0, 0.0, 0.0])
    across /= np.linalg.norm(across)
    pos = np.array([[0.2, -0.1, 0.3], [0.2, -0.1, 0.3] + r * axis])
    e = 0.3  # V/Å
    for t, direction in ((t_par, axis), (t_perp, across)):
        alpha_mol = (a1 + a2 + 2 * a1 * a2 * t) / (1 - a1 * a2 * t * t)
        mu = induction.solve(pos, np.array([a1, a2]), field=e * direction, thole=thole)
        np.testing.assert_allclose(np.asarray(mu.sum(0)), alpha_mol * e / K * direction, atol=1e-14)
        # each atom: mu_1 = a1 (1 + a2 t) E / (1 - a1 a2 t^2)
        mu1 = a1 * (1 + a2 * t) / (1 - a1 * a2 * t * t) * e / K
        np.testing.assert_allclose(np.asarray(mu[0]), mu1 * direction, atol=1e-14)
        u = induction.energy(pos, np.array([a1, a2]), field=e * direction, thole=thole)
        np.testing.assert_allclose(float(u), -0.5 * alpha_mol * e * e / K, rtol=1e-12)
    # identical atoms: 2a / (1 - a t_par)
    mu = induction.solve(pos, 1.1, field=e * axis, thole=thole)
    x = (A_THOLE * r**3 / 1.1) if thole else np.inf
    l3 = 1 - np.exp(-x)
    l5 = 1 - (1 + x) * np.exp(-x) if thole else 1.0
    t = (3 * l5 - l3) / r**3
    np.testing.assert_allclose(
        np.asarray(mu.sum(0)), 2 * 1.1 / (1 - 1.1 * t) * e / K * axis, atol=1e-14
    )


def test_lone_atom_and_zero_polarizability():
    mu = induction.solve(np.zeros((1, 3)), 2.5, field=np.array([0.0, 0.4, 0.0]))
    np.testing.assert_allclose(np.asarray(mu), [[0.0, 2.5 * 0.4 / K, 0.0]], atol=1e-15)
    # a non-polarizable ion polarizes the others and carries no dipole itself
    pos, alpha, q = molecule(6, seed=2)
    alpha[2] = 0.0
    field = np.array([0.0, 0.1, 0.0])
    mu = np.asarray(induction.solve(pos, alpha, charges=q, field=field))
    assert np.all(mu[2] == 0.0)
    keep = np.arange(6) != 2
    with np.errstate(divide="ignore", invalid="ignore"):  # the ion's pairs: x = inf, lambda3 = 1
        e0 = numpy_field(pos, q, alpha, A_THOLE) + field
    m = numpy_matrix(pos[keep], alpha[keep], A_THOLE)
    ref = np.linalg.solve(m, e0[keep].reshape(-1) / K).reshape(-1, 3)
    np.testing.assert_allclose(mu[keep], ref, atol=1e-13)
    mf = induction.solve(pos, alpha, charges=q, field=field, method="matrix_free")
    np.testing.assert_allclose(np.asarray(mf), mu, atol=1e-10)
    g = jax.grad(lambda p: induction.energy(p, alpha, charges=q, field=field))(jnp.asarray(pos))
    assert np.all(np.isfinite(np.asarray(g)))


def test_hellmann_feynman_forces():
    pos, alpha, q = molecule(6, seed=1)
    field = np.array([0.05, 0.0, -0.1])
    solver = induction.prepare(pos)

    @jax.jit
    def total(p):
        return solver.solve(p, alpha, q, field).energy

    def at_fixed_dipoles(p, mu):
        return solver.energy(p, alpha, mu, q, field)

    p0 = jnp.asarray(pos)
    mu0 = jax.jit(solver.solve)(p0, alpha, q, field).dipoles
    g_total = np.asarray(jax.jit(jax.grad(total))(p0))
    g_fixed = np.asarray(jax.jit(jax.grad(at_fixed_dipoles))(p0, mu0))
    np.testing.assert_allclose(g_total, g_fixed, atol=1e-12 * np.abs(g_fixed).max())
    # the energy is stationary in the dipoles
    g_mu = np.asarray(jax.jit(jax.grad(at_fixed_dipoles, argnums=1))(p0, mu0))
    assert np.abs(g_mu).max() < 1e-12
    # the public energy's gradient, against central differences
    g_api = np.asarray(jax.grad(lambda p: induction.energy(p, alpha, charges=q, field=field))(p0))
    np.testing.assert_allclose(g_api, g_total, atol=1e-12 * np.abs(g_total).max())
    h = 1e-5
    for i, k in ((0, 0), (3, 2), (5, 1)):
        dp = np.zeros_like(pos)
        dp[i, k] = h
        fd = (float(total(p0 + dp)) - float(total(p0 - dp))) / (2 * h)
        np.testing.assert_allclose(g_total[i, k], fd, rtol=1e-7, atol=1e-9)
    # matrix-free: the same forces
    g_mf = jax.jit(
        jax.grad(lambda p: solver.solve(p, alpha, q, field, method="matrix_free").energy)
    )(p0)
    np.testing.assert_allclose(np.asarray(g_mf), g_total, atol=1e-8 * np.abs(g_total).max())


def test_gradients_against_finite_differences():
    pos, alpha, q = molecule(5, seed=4)
    field = np.array([0.1, 0.2, -0.05])
    solver = induction.prepare(pos, sigma=0.6)
    p0 = jnp.asarray(pos)

    def dipole(alpha, q, field, method):
        return solver.solve(p0, alpha, q, field, method=method).dipoles[1, 2]

    def en(alpha, q, field):
        return solver.solve(p0, alpha, q, field).energy

    args = [jnp.asarray(alpha), jnp.asarray(q), jnp.asarray(field)]
    h = 1e-6
    for fn in (jax.jit(lambda *a: dipole(*a, "dense")), jax.jit(en)):
        grads = jax.jit(jax.grad(fn, argnums=(0, 1, 2)))(*args)
        for k, g in enumerate(grads):
            for idx in range(args[k].shape[0]):
                plus = [x.at[idx].add(h) if m == k else x for m, x in enumerate(args)]
                minus = [x.at[idx].add(-h) if m == k else x for m, x in enumerate(args)]
                fd = (float(fn(*plus)) - float(fn(*minus))) / (2 * h)
                scale = max(abs(fd), 1e-3 * float(jnp.abs(g).max()))
                assert abs(float(g[idx]) - fd) < 1e-6 * scale, (k, idx, float(g[idx]), fd)
    # the energy's derivative with respect to the external field is minus the total dipole
    g_field = jax.jit(jax.grad(en, argnums=2))(*args)
    mu = solver.solve(p0, *args).dipoles
    np.testing.assert_allclose(np.asarray(g_field), -np.asarray(mu.sum(0)), rtol=1e-10)


def test_second_derivatives_finite_and_symmetric():
    pos, alpha, q = molecule(4, seed=6)
    solver = induction.prepare(pos)
    field = np.array([0.0, 0.0, 0.2])
    hess = jax.jit(jax.hessian(lambda p: solver.solve(p, alpha, q, field).energy))(jnp.asarray(pos))
    hess = np.asarray(hess).reshape(12, 12)
    assert np.all(np.isfinite(hess))
    np.testing.assert_allclose(hess, hess.T, atol=1e-10 * np.abs(hess).max())


def test_rotation_equivariance():
    pos, alpha, q = molecule(7, seed=7)
    field = np.array([0.1, -0.3, 0.2])
    rot, _ = np.linalg.qr(np.random.default_rng(8).normal(size=(3, 3)))
    mu = np.asarray(induction.solve(pos, alpha, charges=q, field=field))
    mu_rot = np.asarray(induction.solve(pos @ rot.T + 1.5, alpha, charges=q, field=rot @ field))
    np.testing.assert_allclose(mu_rot, mu @ rot.T, atol=1e-13)
    u = induction.energy(pos, alpha, charges=q, field=field)
    u_rot = induction.energy(pos @ rot.T, alpha, charges=q, field=rot @ field)
    np.testing.assert_allclose(float(u_rot), float(u), rtol=1e-12)


def test_polarization_catastrophe():
    pos = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    field = np.array([0.0, 0.0, 0.1])
    # undamped, r^6 < 4 a1 a2: the parallel mode has 1/alpha - 2/r^3 < 0
    for method in ("dense", "matrix_free"):
        with pytest.raises(
            ValueError, match=r"polarization catastrophe.*smallest eigenvalue.* is -1 "
        ):
            induction.solve(pos, 1.0, field=field, thole=0, method=method)
    # Thole damping removes it
    mu = induction.solve(pos, 1.0, field=field)
    assert np.all(np.isfinite(np.asarray(mu)))
    # inside jit: a flag
    solver = induction.prepare(pos, thole=None)
    result = jax.jit(lambda p: solver.solve(p, 1.0, field=field))(jnp.asarray(pos))
    assert not bool(result.ok)
    result = jax.jit(lambda p: solver.solve(p, 1.0, field=field, method="matrix_free"))(
        jnp.asarray(pos)
    )
    assert not bool(result.ok) and float(result.curvature) < 0


def test_jit_no_recompile_vmap_and_float32():
    pos, alpha, q = molecule(5, seed=9)
    solver = induction.prepare(pos)
    traces = []

    @jax.jit
    def run(p, a, c):
        traces.append(1)
        return solver.solve(p, a, c, jnp.array([0.0, 0.1, 0.0])).dipoles

    batch = jnp.stack([jnp.asarray(pos), jnp.asarray(pos) + 0.1 * np.eye(3)[0]])
    a = run(batch[0], alpha, q)
    b = run(batch[1], alpha * 1.1, q)
    assert len(traces) == 1
    both = jax.vmap(run, in_axes=(0, None, None))(batch, alpha, q)
    np.testing.assert_allclose(np.asarray(both[0]), np.asarray(a), atol=1e-14)
    assert not np.allclose(np.asarray(a), np.asarray(b))
    mu32 = induction.solve(pos.astype(np.float32), alpha.astype(np.float32), charges=q)
    assert mu32.dtype == jnp.float32
    mu64 = induction.solve(pos, alpha, charges=q)
    np.testing.assert_allclose(np.asarray(mu32), np.asarray(mu64), rtol=2e-4, atol=1e-6)
    mf32 = induction.solve(
        pos.astype(np.float32), alpha.astype(np.float32), charges=q, method="matrix_free"
    )
    assert mf32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(mf32), np.asarray(mu64), rtol=1e-3, atol=1e-5)


def test_bad_input():
    pos, alpha, q = molecule(3)
    with pytest.raises(ValueError, match="positions"):
        induction.solve(pos[:, :2], alpha)
    with pytest.raises(ValueError, match="polarizability"):
        induction.solve(pos, alpha[:2])
    with pytest.raises(ValueError, match="polarizability"):
        induction.solve(pos, -alpha)
    with pytest.raises(ValueError, match="charges"):
        induction.solve(pos, alpha, charges=q[:2])
    with pytest.raises(ValueError, match="field"):
        induction.solve(pos, alpha, field=np.zeros(2))
    with pytest.raises(ValueError, match="thole"):
        induction.solve(pos, alpha, thole=-1.0)
    with pytest.raises(ValueError, match="sigma"):
        induction.solve(pos, alpha, charges=q, sigma=-0.5)
    with pytest.raises(ValueError, match="method"):
        induction.solve(pos, alpha, method="cg")
    with pytest.raises(ValueError, match="did not converge"):
        induction.solve(pos, alpha, charges=q, method="matrix_free", max_iter=1)


@pytest.mark.slow
def test_periodic_against_numpy_ewald():
    """A tiny triclinic cell (the Thole range exceeds the cell: each atom's own
    images are damped too) against a dense solve built from an independent Ewald
    sum plus Thole's correction over all images: the matrix-free periodic route.
    (Compiling the Ewald dipolar field dominates this test's time.)"""
    cell = np.array([[3.0, 0.0, 0.0], [0.4, 3.2, 0.0], [0.3, -0.2, 3.5]])
    pos = np.random.default_rng(0).uniform(0, 3, (3, 3))
    q = np.array([0.5, -0.2, -0.3])
    alpha = np.array([1.0, 0.8, 1.2])
    field = np.array([0.1, 0.0, -0.2])
    ref, u_ref, _ = numpy_periodic(pos, cell, alpha, q, field, A_THOLE)
    solver = induction.prepare(pos, cell, polarizability=alpha, accuracy=1e-9)
    assert solver.thole_cutoff > 3.5
    c = jnp.asarray(cell)
    run = jax.jit(lambda p: solver.solve(p, alpha, q, field, c, method="matrix_free"))
    result = run(jnp.asarray(pos))
    assert bool(result.ok) and int(result.iterations) > 0
    np.testing.assert_allclose(np.asarray(result.dipoles), ref, atol=1e-9)
    np.testing.assert_allclose(float(result.energy), u_ref, rtol=1e-8)


def test_public_names_and_periodic_errors():
    assert jaxlr.induction is induction
    for name in induction.__all__:
        assert getattr(induction, name) is not None
    pos, alpha, q = molecule(3)
    cell = 6.0 * np.eye(3)
    with pytest.raises(NotImplementedError, match="sigma"):
        induction.prepare(pos, cell, polarizability=alpha, sigma=0.5)
    with pytest.raises(ValueError, match="polarizability"):
        induction.prepare(pos, cell)
    with pytest.raises(ValueError, match="pbc"):
        induction.prepare(pos, pbc=(True, True, True))
    solver = induction.prepare(pos, cell, polarizability=alpha)
    with pytest.raises(ValueError, match="pass cell"):
        solver.solve(jnp.asarray(pos), alpha, q)
