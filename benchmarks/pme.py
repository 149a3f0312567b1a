#!/usr/bin/env python
"""Particle-mesh Ewald benchmark: jaxlr's PME vs the mesh methods of jax-md, jax-pme and
torch-pme (energy + forces, CPU, float64).

    python benchmarks/pme.py                      # N = 1000, 8000, 32000, 128000
    python benchmarks/pme.py --quick              # N = 1000 only
    python benchmarks/pme.py --sizes 8000 --methods jaxlr,torch-pme-p3m
    python benchmarks/pme.py --sizes 1000000      # 1M atoms: only when asked for

Every (method, N) runs in its own worker subprocess (peak RSS is the worker's; a worker
above --mem-limit-gib RSS or --timeout seconds is killed and reported as OOM / timeout).
All methods see the same structure (random uniform positions in a cubic box at
0.1 atoms/A^3, charges +-1, neutral, fixed seed), written once to a cache directory.

Accuracy: every method must MEASURE, against a tight reference, a relative energy error
<= --target-energy (1e-5) AND a relative RMS force error <= --target-force (1e-4). The
reference is jaxlr Ewald at accuracy 1e-10 up to --ref-ewald-max atoms (32000), jaxlr PME
at accuracy 1e-9 above. jaxlr: the accuracy it is asked for walks down a ladder (1e-4,
3e-5, 1e-5, ...) until the measured errors pass (plus one tighter step); the fastest
passing one is kept. Peers: a small grid of real-space cutoffs; for each, alpha from the
Kolafa-Perram real-space estimate and, per interpolation order, the mesh predicted by an
error model err ~ A_p (alpha h)^p whose constant A_p is refitted to the measurements
(sizes restricted to what each peer can build); on failure a higher order on the same mesh,
then a finer mesh; shrunk once when it passed with room; meshes above what fits the memory
limit are not run. The fastest passing setting is re-timed in a fresh worker.

torch runs with --torch-threads intra-op threads (default: all cores). On a machine shared
with other jobs, torch's OpenMP threads can slow down by 10-60x (spin-waiting); use
--torch-threads 1 there (or OMP_WAIT_POLICY=PASSIVE) and say so with the numbers.

Method keys for --methods: jaxlr, jax-md, jax-pme-pme, jax-pme-p3m, torch-pme-pme,
torch-pme-p3m (jax-pme / torch-pme select both of a package's methods).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import _common as C  # noqa: E402
import ewald as EW  # noqa: E402  (System, worker-message and error helpers)
import numpy as np  # noqa: E402

METHODS = ["jaxlr", "jax-md", "jax-pme-pme", "jax-pme-p3m", "torch-pme-pme", "torch-pme-p3m"]
ALIASES = {
    "jax-pme": ["jax-pme-pme", "jax-pme-p3m"],
    "torch-pme": ["torch-pme-pme", "torch-pme-p3m"],
    "jaxpme": ["jax-pme-pme", "jax-pme-p3m"],
    "torchpme": ["torch-pme-pme", "torch-pme-p3m"],
}
JAXLR_LADDER = (1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7, 3e-8)
#: real-space cutoffs the peers try (A); PME's optimal cutoff does not grow with N
RC_LADDER = (4.5, 5.5, 7.0, 9.0, 11.5)
RC_FIRST = (5.5, 7.0, 9.0, 4.5)


# ======================================================================================
# worker side: method implementations
# ======================================================================================


def _pow2_at_least(x):
    return 1 << max(3, math.ceil(math.log2(max(x, 1.0)) - 1e-12))


def _smooth_at_least(x, minimum=8):
    """Smallest integer >= max(x, minimum) whose prime factors are 2, 3, 5 and 7."""
    k = max(int(math.ceil(x - 1e-9)), minimum)
    while True:
        m = k
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        if m == 1:
            return k
        k += 1


def _mesh_desc(m):
    return f"{m}^3"


class JaxLR:
    key = name = "jaxlr"
    backend = "jax"

    def version(self):
        import jax

        jaxlr = EW._import_jaxlr()
        return f"jaxlr {getattr(jaxlr, '__version__', '(dev)')} (jax {jax.__version__})"

    def describe(self, p):
        return p.get("config", f"accuracy={p['accuracy']:g}")

    def build(self, system, p):
        jax = EW._setup_jax()
        import jax.numpy as jnp

        jaxlr = EW._import_jaxlr()
        t0 = time.perf_counter()
        fn = jaxlr.prepare_energy(
            system.positions, system.charges, system.cell, method="pme", accuracy=p["accuracy"]
        )
        cfg = fn.config
        p["config"] = (
            f"accuracy={p['accuracy']:g}: alpha={cfg.alpha:.4f} mesh={'x'.join(map(str, cfg.mesh))} "
            f"order={cfg.order} r_cut={cfg.r_cut:.2f} {getattr(cfg, 'influence', '')}"
        ).strip()
        p["estimated_error_eV"] = float(fn.estimated_error)
        # forces = -d/d positions; charges and cell are arguments (not baked-in constants);
        # the neighbour list is rebuilt inside fn, i.e. inside the jitted call
        vg = jax.jit(jax.value_and_grad(fn))
        r = jnp.asarray(system.positions)
        q = jnp.asarray(system.charges)
        c = jnp.asarray(system.cell)
        setup = time.perf_counter() - t0

        def step():
            e, g = jax.block_until_ready(vg(r, q, c))
            return float(e), -np.asarray(g)

        return setup, step


class Peer:
    """A peer mesh method: parameters (rc, alpha, mesh M (cube), order)."""

    key = name = "?"
    orders = (4,)
    backend = "jax"
    #: starting guess of A_p in  max(err_E/target_E, err_F/target_F) ~ A_p (alpha h)^p
    #: (measured at N = 1000, cutoff 7 A); refitted to every measurement of the search
    model0 = {4: 100.0, 5: 250.0}

    def version(self):
        raise NotImplementedError

    def max_rc(self, system):
        return None

    def mesh_at_least(self, x):
        return _pow2_at_least(x)

    def mesh_below(self, m):
        """Next smaller buildable mesh (or None)."""
        return m // 2 if m >= 16 else None

    def mesh_above(self, m):
        return 2 * m

    def params(self, system, rc, alpha, mesh, order):
        p = {
            "rc": rc,
            "alpha": alpha,
            "smearing": 1.0 / (math.sqrt(2.0) * alpha),
            "mesh": int(mesh),
            "order": int(order),
        }
        # jax-pme: ns = pow2 >= 2 ceil(L/h) + 1; torch-pme: ns = pow2 >= 2 L/h + 1.
        # h = L / (M/2 - 1.5) gives ns = M in both (M >= 8, a power of two).
        p["mesh_spacing"] = system.length / (mesh / 2 - 1.5)
        return p

    def describe(self, p):
        return (
            f"smearing={p['smearing']:.3f} cutoff={p['rc']:.2f} mesh={_mesh_desc(p['mesh'])} "
            f"(mesh_spacing={p['mesh_spacing']:.3f}) nodes={p['order']}"
        )

    def build(self, system, p):
        raise NotImplementedError


class TorchPMEMesh(Peer):
    backend = "torch"
    calculator = "?"
    threads = 0  # torch intra-op threads; 0: all cores (set from --torch-threads)

    def version(self):
        import torch
        import torchpme
        import vesin

        return f"torch-pme {torchpme.__version__} (torch {torch.__version__}, vesin {vesin.__version__})"

    def build(self, system, p):
        import torch
        import torchpme
        import vesin
        from torchpme.lib.kvectors import get_ns_mesh

        torch.set_num_threads(self.threads or len(os.sched_getaffinity(0)))
        t0 = time.perf_counter()
        dtype = torch.float64
        cell_t = torch.tensor(system.cell, dtype=dtype)
        ns = get_ns_mesh(cell_t, p["mesh_spacing"]).tolist()
        if ns != [p["mesh"]] * 3:
            raise RuntimeError(f"mesh_spacing {p['mesh_spacing']} gives mesh {ns}, not {p['mesh']}")
        pot = torchpme.CoulombPotential(smearing=p["smearing"], prefactor=torchpme.prefactors.eV_A)
        cls = getattr(torchpme, self.calculator)
        calc = cls(
            pot,
            mesh_spacing=p["mesh_spacing"],
            interpolation_nodes=p["order"],
            full_neighbor_list=False,
        )
        calc.to(dtype=dtype)
        nl = vesin.NeighborList(cutoff=p["rc"], full_list=False)
        q_t = torch.tensor(system.charges, dtype=dtype)[:, None]
        pos_np, cell_np = system.positions, system.cell
        setup = time.perf_counter() - t0

        def step():
            # vesin on the host every call (as torch-pme's examples do), half list
            i, j, s = nl.compute(points=pos_np, box=cell_np, periodic=True, quantities="ijS")
            idx = torch.from_numpy(np.stack([i.astype(np.int64), j.astype(np.int64)], axis=1))
            shifts = torch.from_numpy(s.astype(np.float64))
            pos_t = torch.tensor(pos_np, dtype=dtype, requires_grad=True)
            rij = pos_t[idx[:, 1]] - pos_t[idx[:, 0]] + shifts @ cell_t
            dist = torch.linalg.norm(rij, dim=1)
            potentials = calc(q_t, cell_t, pos_t, idx, dist)
            energy = torch.sum(q_t * potentials)
            energy.backward()
            return float(energy.detach()), (-pos_t.grad).numpy()

        return setup, step


class TorchPMEPME(TorchPMEMesh):
    key = "torch-pme-pme"
    name = "torch-pme (PME)"
    calculator = "PMECalculator"
    # Lagrange interpolation, 3..7 nodes; odd orders measured better than even (at N = 1000,
    # 64^3, cutoff 7 A: 5 nodes 8e-6, 6 nodes 1.0e-5, 7 nodes 4e-6 energy error)
    orders = (4, 5, 7)
    model0 = {4: 6e4, 5: 1.5e4, 7: 3.6e5}  # no influence-function correction: large energy bias


class TorchPMEP3M(TorchPMEMesh):
    key = "torch-pme-p3m"
    name = "torch-pme (P3M)"
    calculator = "P3MCalculator"
    orders = (4, 5)  # B-splines, 1..5 nodes


class JaxPMEMesh(Peer):
    factory = "?"

    def version(self):
        import jax
        import jaxpme
        import vesin

        return f"jax-pme {jaxpme.__version__} (jax {jax.__version__}, vesin {vesin.__version__})"

    def build(self, system, p):
        jax = EW._setup_jax()
        import jax.numpy as jnp
        import jaxpme
        import vesin
        from jaxpme.kspace import get_kgrid_mesh

        t0 = time.perf_counter()
        calc = getattr(jaxpme, self.factory)(
            prefactor=jaxpme.prefactors.eV_A, interpolation_nodes=p["order"]
        )
        k_grid = get_kgrid_mesh(system.cell, p["mesh_spacing"])  # numpy; only its shape is used
        if k_grid.shape != (p["mesh"],) * 3:
            raise RuntimeError(
                f"mesh_spacing {p['mesh_spacing']} gives mesh {k_grid.shape}, not {p['mesh']}"
            )
        smearing = p["smearing"]

        @jax.jit
        def energy_forces(charges, cell, positions, i, j, shifts):
            return calc.energy_forces(charges, cell, positions, i, j, shifts, k_grid, smearing)

        nl = vesin.NeighborList(cutoff=p["rc"], full_list=False)
        q = jnp.asarray(system.charges)
        cell = jnp.asarray(system.cell)
        pos_np, cell_np = system.positions, system.cell
        setup = time.perf_counter() - t0

        def step():
            # as jaxpme.utils.atoms_to_graph: vesin half list on the host, every call
            i, j, s = nl.compute(points=pos_np, box=cell_np, periodic=True, quantities="ijS")
            e, f = energy_forces(
                q,
                cell,
                jnp.asarray(pos_np),
                jnp.asarray(i.astype(np.int64)),
                jnp.asarray(j.astype(np.int64)),
                jnp.asarray(s.astype(np.float64)),
            )
            e, f = jax.block_until_ready((e, f))
            return float(e), np.asarray(f)

        return setup, step


class JaxPMEPME(JaxPMEMesh):
    key = "jax-pme-pme"
    name = "jax-pme (PME)"
    factory = "PME"
    orders = (4,)  # Lagrange interpolation: only 4 nodes are implemented
    model0 = {4: 6e4}


class JaxPMEP3M(JaxPMEMesh):
    key = "jax-pme-p3m"
    name = "jax-pme (P3M)"
    factory = "P3M"
    orders = (4, 5)  # B-splines, 1..5 nodes


class JaxMD(Peer):
    key = name = "jax-md"
    orders = (4,)  # coulomb_recip_pme: fourth-order B-splines only (SPME)
    model0 = {4: 6e3}

    def version(self):
        from importlib.metadata import version

        import jax
        import jax_md  # noqa: F401

        return f"jax-md {version('jax-md')} (jax {jax.__version__})"

    def max_rc(self, system):
        # periodic displacement is minimum-image: the cutoff must stay below L/2
        return round(0.995 * system.length / 2.0, 2)

    def mesh_at_least(self, x):
        return _smooth_at_least(x)

    def mesh_below(self, m):
        smaller = _smooth_at_least(0.8 * m)
        return smaller if smaller < m else None

    def mesh_above(self, m):
        return _smooth_at_least(1.25 * m)

    def params(self, system, rc, alpha, mesh, order):
        return {"rc": rc, "alpha": alpha, "mesh": int(mesh), "order": 4}

    def describe(self, p):
        return f"alpha={p['alpha']:.4f} cutoff={p['rc']:.2f} grid_points={p['mesh']} (order 4)"

    def build(self, system, p):
        jax = EW._setup_jax()
        import jax.numpy as jnp
        from jax_md import energy, space

        t0 = time.perf_counter()
        length = float(system.cell[0, 0])
        if not np.allclose(system.cell, np.eye(3) * length):
            raise ValueError("jax-md PME is used with a cubic box here")
        alpha = p["alpha"]
        q = jnp.asarray(system.charges)
        displacement, _ = space.periodic(length)
        neighbor_fn, energy_fn = energy.coulomb_neighbor_list(
            displacement, length, q, grid_points=p["mesh"], alpha=alpha, cutoff=p["rc"]
        )
        # jax-md is in Gaussian units (prefactor 1) and omits the Ewald self term
        self_term = -alpha / math.sqrt(math.pi) * float(np.sum(system.charges**2))

        def total(r, nbrs):
            return C.COULOMB * (energy_fn(r, neighbor=nbrs) + self_term)

        @jax.jit
        def energy_forces(r, nbrs):
            nbrs = nbrs.update(r)  # rebuilt every call, inside jit
            e, g = jax.value_and_grad(total)(r, nbrs)
            return e, -g, nbrs.did_buffer_overflow

        r0 = jnp.asarray(system.positions)
        nbrs0 = neighbor_fn.allocate(r0)
        jax.block_until_ready(nbrs0.idx)
        setup = time.perf_counter() - t0

        def step():
            e, f, overflow = jax.block_until_ready(energy_forces(r0, nbrs0))
            if bool(overflow):
                raise RuntimeError("jax-md neighbor list overflow")
            return float(e), np.asarray(f)

        return setup, step


METHOD_CLASSES = {
    cls.key: cls for cls in (JaxLR, JaxMD, JaxPMEPME, JaxPMEP3M, TorchPMEPME, TorchPMEP3M)
}


def display_name(key):
    return METHOD_CLASSES[key].name


# ======================================================================================
# worker side: error model for the peers' mesh
# ======================================================================================


def alpha_for_rc(rc, abs_err, sum_q2, volume):
    """alpha where the Kolafa-Perram real-space energy error at rc is abs_err."""
    return C._bisect_decreasing(
        lambda a: C.kp_real_energy_error(a, rc, sum_q2, volume), abs_err, 1e-3, 20.0 / rc
    )


def ewald_mesh_floor(alpha, abs_err, sum_q2, length):
    """Smallest mesh holding the k sphere that Ewald would need for abs_err."""
    kc = C._bisect_decreasing(
        lambda k: C.kp_recip_energy_error(alpha, k, sum_q2, length),
        abs_err,
        2.0 * math.pi / length,
        60.0 * alpha,
    )
    return 2 * math.ceil(kc * length / (2.0 * math.pi)) + 1


def predict_mesh(method, model, order, alpha, length, floor, goal=0.5):
    h = (goal / model[order]) ** (1.0 / order) / alpha
    return method.mesh_at_least(max(length / h, floor, 2 * order))


# ======================================================================================
# worker side: tasks
# ======================================================================================


def _load_ref(path):
    data = np.load(path)
    return float(data["energy"]), np.asarray(data["forces"])


def _evaluate(method, system, p, e_ref, f_ref, targets):
    setup, step = method.build(system, p)
    t0 = time.perf_counter()
    e, f = step()
    t_first = time.perf_counter() - t0
    t_warm = None
    # warm runs -- used only to rank candidates (min of two when cheap)
    for _ in range(2 if t_first < 2.0 else 1):
        t0 = time.perf_counter()
        e, f = step()
        dt = time.perf_counter() - t0
        t_warm = dt if t_warm is None else min(t_warm, dt)
    err_e = C.rel_energy_error(e, e_ref)
    err_f = C.rel_rms_force_error(f, f_ref)
    ratio = max(err_e / targets[0], err_f / targets[1])
    return {
        "params": p,
        "desc": method.describe(p),
        "energy": e,
        "err_e": err_e,
        "err_f": err_f,
        "ratio": ratio,
        "ok": ratio <= 1.0,
        "t_setup": setup,
        "t_first": t_first,
        "t_warm": t_warm,
    }


def task_version(task):
    try:
        C.emit(
            {"kind": "version", "ok": True, "version": METHOD_CLASSES[task["method"]]().version()}
        )
    except Exception as exc:  # noqa: BLE001
        C.emit({"kind": "version", "ok": False, "reason": EW._exc_msg(exc)})


def task_search(task):
    """Find the fastest passing parameters of one method on one system."""
    method = METHOD_CLASSES[task["method"]]()
    method.threads = task.get("torch_threads", 0)
    system = EW.System(task["system"])
    e_ref, f_ref = _load_ref(task["reference"])
    targets = (task["target_energy"], task["target_force"])
    t_start = time.perf_counter()
    budget = task["budget_s"]
    last_cost = 0.0

    def over_budget():
        return time.perf_counter() - t_start + 1.5 * last_cost > budget

    def run(p, tag):
        nonlocal last_cost
        C.emit({"kind": "start", "tag": tag, "params": p})
        t0 = time.perf_counter()
        try:
            res = _evaluate(method, system, p, e_ref, f_ref, targets)
        except Exception as exc:  # noqa: BLE001 (XLA / torch allocation failures, ...)
            res = {"params": p, "ok": False, "failed": EW._exc_msg(exc)}
        last_cost = time.perf_counter() - t0
        res.update(kind="eval", tag=tag)
        C.emit(res)
        return res

    if task["method"] == "jaxlr":
        passed = 0
        for acc in task["ladder"]:
            if over_budget():
                C.emit({"kind": "skipped", "tag": f"acc={acc:g}", "why": "search budget"})
                break
            res = run({"accuracy": acc}, f"acc={acc:g}")
            if "failed" in res:
                break
            if res["ok"]:
                passed += 1
                if passed == 2:  # the first passing accuracy and one tighter step
                    break
        C.emit({"kind": "done"})
        return

    # peers: per cutoff alpha from Kolafa-Perram, per order the mesh from the model
    model = {int(k): v for k, v in (task.get("model") or method.model0).items()}
    error_abs = targets[0] * abs(e_ref) / C.COULOMB  # Gaussian units
    volume = system.length**3
    max_mesh = task["max_mesh"]

    def refit(order, alpha, mesh, ratio, ok):
        # the measured ratio bounds the mesh part from above (it includes real space):
        # a pass may only lower A_p, a failure only raise it
        if ratio > 0:
            fit = ratio / (alpha * system.length / mesh) ** order
            model[order] = min(model[order], fit) if ok else max(model[order], fit)
            C.emit({"kind": "model", "model": model})

    def predicted_ratio(order, alpha, mesh):
        return model[order] * (alpha * system.length / mesh) ** order

    orders = sorted(method.orders)
    for rc in task["rcs"]:
        if over_budget():
            C.emit({"kind": "skipped", "tag": f"rc={rc}", "why": "search budget"})
            continue
        alpha = alpha_for_rc(rc, 0.5 * error_abs, system.sum_q2, volume)
        floor = ewald_mesh_floor(alpha, 0.5 * error_abs, system.sum_q2, system.length)
        # start on the smallest predicted mesh (lowest order among equals)
        m, order = min(
            (predict_mesh(method, model, o, alpha, system.length, floor), o) for o in orders
        )
        tried, last_ratio = set(), {}
        passed = shrunk = False
        for _ in range(5):  # at most 5 evaluations per cutoff
            if over_budget():
                C.emit({"kind": "skipped", "tag": f"rc={rc}", "why": "search budget"})
                break
            if m > max_mesh:
                C.emit(
                    {
                        "kind": "skipped",
                        "tag": f"rc={rc}",
                        "why": "mesh",
                        "mesh": m,
                        "order": order,
                        "max_mesh": max_mesh,
                    }
                )
                break
            tried.add((m, order))
            res = run(method.params(system, rc, alpha, m, order), f"rc={rc}")
            if "failed" in res:
                break
            ratio = res["ratio"]
            refit(order, alpha, m, ratio, res["ok"])
            if res["ok"]:
                passed = True
                # once: a smaller mesh when the model says it passes with room
                smaller = method.mesh_below(m)
                if (
                    not shrunk
                    and smaller is not None
                    and smaller >= max(floor, 2 * order)
                    and (smaller, order) not in tried
                    and ratio * (m / smaller) ** order < 0.7
                ):
                    m, shrunk = smaller, True
                    continue
                break
            if passed:
                break  # the smaller mesh failed; the larger one passed
            # failed: first a higher order on the same mesh if the model expects a pass
            higher = [o for o in orders if o > order and (m, o) not in tried]
            if higher and predicted_ratio(higher[0], alpha, m) <= 1.0:
                order = higher[0]
                continue
            # then a finer mesh, unless the last refinement of this order did not help
            if order in last_ratio and ratio > 0.5 * last_ratio[order]:
                break  # real space (cutoff / alpha) limits, not the mesh
            last_ratio[order] = ratio
            m_new = predict_mesh(method, model, order, alpha, system.length, floor)
            m = m_new if m_new > m else method.mesh_above(m)
        C.emit({"kind": "rc_done", "rc": rc})
    C.emit({"kind": "done"})


def task_time(task):
    """Fresh process: first call (compile) + warm median, peak RSS."""
    method = METHOD_CLASSES[task["method"]]()
    method.threads = task.get("torch_threads", 0)
    system = EW.System(task["system"])
    e_ref, f_ref = _load_ref(task["reference"])
    p = task["params"]
    try:
        if method.backend == "torch":
            import torch  # noqa: F401
        else:
            EW._setup_jax()
            import jax.numpy as jnp

            jnp.zeros(1).block_until_ready()
        base = C.peak_rss_mib_self()
        setup, step = method.build(system, p)
        t0 = time.perf_counter()
        e, f = step()
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        step()  # one more warm-up
        slow = time.perf_counter() - t0 > 10.0
        repeats = min(task["repeats"], 3) if slow else task["repeats"]
        times = C.time_calls(step, repeats=repeats, min_total=task.get("min_total", 0.0))
        e, f = step()
        C.emit(
            {
                "kind": "timing",
                "params": p,
                "desc": method.describe(p),
                "energy": e,
                "err_e": C.rel_energy_error(e, e_ref),
                "err_f": C.rel_rms_force_error(f, f_ref),
                "t_setup": setup,
                "t_first": t_first,
                "times": times,
                "t_median": statistics.median(times),
                "peak_rss_mib": C.peak_rss_mib_self(),
                "base_rss_mib": base,
            }
        )
    except Exception as exc:  # noqa: BLE001
        C.emit(
            {"kind": "timing", "failed": EW._exc_msg(exc), "peak_rss_mib": C.peak_rss_mib_self()}
        )


def task_reference(task):
    system = EW.System(task["system"])
    t0 = time.perf_counter()
    jax = EW._setup_jax()
    import jax.numpy as jnp

    jaxlr = EW._import_jaxlr()
    method, acc = task["method"], task["accuracy"]
    fn = jaxlr.prepare_energy(
        system.positions, system.charges, system.cell, method=method, accuracy=acc
    )
    e, g = jax.jit(jax.value_and_grad(fn))(
        jnp.asarray(system.positions), jnp.asarray(system.charges), jnp.asarray(system.cell)
    )
    e, f = float(e), -np.asarray(g)
    np.savez(task["out"], energy=e, forces=f)
    msg = {
        "kind": "reference",
        "energy": e,
        "source": f"jaxlr {method} accuracy={acc:g} ({EW._format_config(fn.config)})",
        "short": f"jaxlr {method} accuracy={acc:g}",
        "estimated_error_eV": float(fn.estimated_error),
        "seconds": time.perf_counter() - t0,
    }
    if task.get("crosscheck"):
        # independent NumPy Ewald (tight) for small N: energy and forces
        rc = min(0.99 * system.length / 2.0, 12.0)
        alpha, kc = C.ewald_params_for(rc, 1e-12 * system.n, system.sum_q2, system.length)
        e_np, f_np = C.numpy_ewald(
            system.positions, system.charges, system.cell, alpha, rc, 1.15 * kc
        )
        msg["crosscheck"] = {
            "source": f"numpy Ewald alpha={alpha:.3f} rc={rc:.1f} kc={1.15 * kc:.2f}",
            "err_e": C.rel_energy_error(e_np, e),
            "err_f": C.rel_rms_force_error(f_np, f),
        }
    C.emit(msg)


def worker_main(task):
    sys.path.insert(0, REPO)
    {
        "version": task_version,
        "search": task_search,
        "time": task_time,
        "reference": task_reference,
    }[task["task"]](task)


# ======================================================================================
# parent side
# ======================================================================================


class Runner:
    def __init__(self, args):
        self.args = args
        self.mem_limit = int(args.mem_limit_gib * 2**30)
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = REPO + os.pathsep + self.env.get("PYTHONPATH", "")
        self.log = args.verbose

    def worker(self, task, timeout=None):
        def on_message(msg):
            if self.log and msg.get("kind") in ("eval", "start", "timing", "skipped"):
                keep = {
                    k: v
                    for k, v in msg.items()
                    if k not in ("params", "energy", "t_setup", "kind", "times")
                }
                print("    ", json.dumps(keep)[:400], flush=True)

        return C.run_worker(
            [os.path.abspath(__file__), "--worker", json.dumps(task)],
            self.mem_limit,
            timeout or self.args.timeout,
            env=self.env,
            on_message=on_message,
        )


def rc_candidates(method, system, hint, args):
    """Real-space cutoffs to search, most promising first (around the previous N's winner)."""
    if hint is None:
        order = list(RC_FIRST)
    else:
        i = min(range(len(RC_LADDER)), key=lambda k: abs(RC_LADDER[k] - hint))
        order = [RC_LADDER[i]] + [
            RC_LADDER[k] for k in (i - 1, i + 1, i - 2, i + 2) if 0 <= k < len(RC_LADDER)
        ]
    limit = args.max_cutoffs or (4 if system.n <= 8000 else 3)
    rcs = []
    cap = method.max_rc(system)
    for rc in order:
        rc = min(rc, cap) if cap is not None else rc
        if rc not in rcs:
            rcs.append(rc)
    return rcs[:limit]


def max_mesh_for(args):
    """Largest cubic mesh a peer may try: ~12 mesh-sized float64 arrays within the memory
    limit (measured: 7-8 at 256^3 for jax-pme; the worker is killed above it anyway)."""
    m = int((args.mem_limit_gib * 2**30 / (12 * 8)) ** (1.0 / 3.0))
    return max(m, 16)


def _fail_status(evals, skips, killed_note, args):
    errs = [(e["ratio"], e["err_e"], e["err_f"]) for e in evals if "ratio" in e]
    big = [k for k in skips if k.get("why") == "mesh"]
    if big:
        k = min(big, key=lambda k: k["mesh"])
        gib = 8 * k["mesh"] ** 3 / 2**30
        too_big = (
            f"not run: the accuracy needs a mesh of {k['mesh']}^3 or more ({gib:.0f} GiB per "
            f"float64 mesh array; above the {k['max_mesh']}^3 cap for the {args.mem_limit_gib:g} "
            "GiB memory limit)"
        )
    oom = [
        f"{e['tag'].replace('rc=', 'cutoff ')}: {EW._oom_detail(e['failed'])}"
        for e in evals
        if e.get("failed") and EW._is_oom(e["failed"])
    ]
    oom += [
        k.replace(": oom", f": OOM above {args.mem_limit_gib:g} GiB")
        for k in killed_note
        if k.endswith(": oom")
    ]
    other = [e["failed"] for e in evals if e.get("failed") and not EW._is_oom(e["failed"])]
    other += [k for k in killed_note if not k.endswith(": oom")]
    extra = oom + sorted(set(other))
    if big and not errs and not oom and not other:
        return too_big
    if big:
        extra.append(too_big)
    if errs:
        _, ee, ef = min(errs)
        status = f"no setting reached the accuracy (best: E err {ee:.1e}, F err {ef:.1e})"
        if extra:
            status += " (" + "; ".join(extra) + ")"
    elif oom:
        status = f"OOM above {args.mem_limit_gib:g} GiB (" + "; ".join(extra) + ")"
    elif other:
        status = "failed: " + "; ".join(extra)
    else:
        status = "failed: no candidate evaluated (search budget?)"
    return status


def bench_method(runner, method, sys_path, ref_path, n, rcs, model, args):
    """Search + timing for one (method, N); returns a row dict."""
    row = {"method": method, "name": display_name(method)}
    evals, skips = [], []
    remaining = list(rcs) if rcs else [None]
    killed_note = []
    t_search0 = time.perf_counter()
    while remaining:
        budget = args.search_budget - (time.perf_counter() - t_search0)
        task = {
            "task": "search",
            "method": method,
            "system": sys_path,
            "reference": ref_path,
            "target_energy": args.target_energy,
            "target_force": args.target_force,
            "rcs": [r for r in remaining if r is not None],
            "ladder": list(JAXLR_LADDER),
            "model": model,
            "max_mesh": max_mesh_for(args),
            "budget_s": budget,
            "torch_threads": args.torch_threads,
        }
        out = runner.worker(task)
        evals += [m for m in out.messages if m["kind"] == "eval"]
        skips += [m for m in out.messages if m["kind"] == "skipped"]
        models = [m["model"] for m in out.messages if m["kind"] == "model"]
        if models:
            model = models[-1]
        done_rcs = {m["rc"] for m in out.messages if m["kind"] == "rc_done"}
        if out.status == "ok":
            break
        started = [m for m in out.messages if m["kind"] == "start"]
        what = started[-1]["tag"].replace("rc=", "cutoff ") if started else "startup"
        if started and "mesh" in started[-1]["params"]:
            what += f" mesh {started[-1]['params']['mesh']}"
        reason = (
            out.status
            if out.status != "crashed"
            else f"crashed: {out.stderr_tail.strip().splitlines()[-1:]}"
        )
        killed_note.append(f"{what}: {reason}")
        if method == "jaxlr" or not started:
            break
        bad = started[-1]["params"]["rc"]
        remaining = [r for r in remaining if r not in done_rcs and r != bad]
        if budget <= 0:
            break
    row["model"] = model
    row["search_s"] = time.perf_counter() - t_search0
    row["search_log"] = [
        {
            "desc": e.get("desc") or json.dumps(e["params"]),
            "err_e": e.get("err_e"),
            "err_f": e.get("err_f"),
            "t_warm": e.get("t_warm"),
            "failed": e.get("failed"),
        }
        for e in evals
    ]
    row["killed"] = killed_note
    passing = [e for e in evals if e.get("ok")]
    if not passing:
        row["status"] = _fail_status(evals, skips, killed_note, args)
        return row, model
    best = min(passing, key=lambda e: e["t_warm"])
    row["rc"] = best["params"].get("rc")
    task = {
        "task": "time",
        "method": method,
        "system": sys_path,
        "reference": ref_path,
        "params": best["params"],
        "repeats": args.repeats,
        "min_total": args.min_time,
        "torch_threads": args.torch_threads,
    }
    out = runner.worker(task)
    timing = EW._first(out.messages, "timing")
    row["desc"] = best["desc"]
    if out.status != "ok" or timing is None:
        row["status"] = {
            "oom": f"OOM above {args.mem_limit_gib:g} GiB (timing run)",
            "timeout": "timeout (timing run)",
        }.get(out.status, f"crashed: {out.stderr_tail.strip().splitlines()[-1:]}")
        row["peak_mib"] = out.peak_rss_mib_sampled
        return row, model
    if "failed" in timing:
        row["status"] = (
            f"OOM ({EW._oom_detail(timing['failed'])})"
            if EW._is_oom(timing["failed"])
            else "failed: " + timing["failed"]
        )
        return row, model
    row.update(
        status="ok",
        desc=timing["desc"],
        err_e=timing["err_e"],
        err_f=timing["err_f"],
        t_setup=timing["t_setup"],
        t_first=timing["t_first"],
        t=timing["t_median"],
        times=timing["times"],
        peak_mib=timing["peak_rss_mib"],
        base_mib=timing["base_rss_mib"],
        peak_mib_sampled=out.peak_rss_mib_sampled,
    )
    if timing["err_e"] > args.target_energy or timing["err_f"] > args.target_force:
        row["status"] = "ok (re-timed error above target!)"
    return row, model


def select_methods(spec, ap):
    out = []
    for m in (s.strip() for s in spec.split(",")):
        if not m:
            continue
        names = {display_name(k): k for k in METHODS}
        keys = ALIASES.get(m) or ([names[m]] if m in names else [m])
        for k in keys:
            if k not in METHOD_CLASSES:
                ap.error(f"unknown method {m!r}; choose from {METHODS} (or jax-pme, torch-pme)")
            if k not in out:
                out.append(k)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="1000,8000,32000,128000", help="comma separated atom counts")
    ap.add_argument("--quick", action="store_true", help="only N=1000")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--charges", choices=["alternating", "random"], default="alternating")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-energy", type=float, default=1e-5, help="max relative energy error")
    ap.add_argument("--target-force", type=float, default=1e-4, help="max relative RMS force error")
    ap.add_argument(
        "--ref-ewald-max",
        type=int,
        default=32000,
        help="reference: jaxlr Ewald (1e-10) up to this N, jaxlr PME (1e-9) above",
    )
    ap.add_argument("--repeats", type=int, default=5, help="warm runs (median)")
    ap.add_argument(
        "--min-time",
        type=float,
        default=1.0,
        help="keep repeating warm runs until this many s (max 20 runs)",
    )
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch intra-op threads (0: all cores; jax always uses its own pool)",
    )
    ap.add_argument("--mem-limit-gib", type=float, default=18.0)
    ap.add_argument("--timeout", type=float, default=1800.0, help="per worker process, s")
    ap.add_argument(
        "--search-budget",
        type=float,
        default=150.0,
        help="parameter search time per (method, N), s",
    )
    ap.add_argument(
        "--max-cutoffs",
        type=int,
        default=0,
        help="real-space cutoffs searched per peer (0: 4 if N<=8000 else 3)",
    )
    ap.add_argument(
        "--cache-dir", default=None, help="where structures/references go (default: a temp dir)"
    )
    ap.add_argument("--json", default=None, help="also write all results to this file")
    ap.add_argument("--verbose", "-v", action="store_true", help="print every search step")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker is not None:
        worker_main(json.loads(args.worker))
        return 0

    sizes = [1000] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    methods = select_methods(args.methods, ap)
    cache = args.cache_dir or tempfile.mkdtemp(prefix="jaxlr_pme_bench_")
    if args.cache_dir is None:
        import atexit
        import shutil

        atexit.register(shutil.rmtree, cache, True)
    os.makedirs(cache, exist_ok=True)
    runner = Runner(args)

    print("PME benchmark: energy + forces, float64, CPU")
    machine = C.describe_machine()
    available = {}
    for m in methods:
        out = runner.worker({"task": "version", "method": m}, timeout=300)
        msg = EW._first(out.messages, "version")
        if msg is None:
            available[m] = (False, f"import crashed ({out.status})")
        elif msg["ok"]:
            available[m] = (True, msg["version"])
        else:
            available[m] = (False, msg["reason"])
    versions = []
    for m in methods:
        ok, text = available[m]
        text = text if ok else f"{display_name(m)}: not installed ({text})"
        if text not in versions:
            versions.append(text)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{machine}; load average {load:.2f} at start; " + "; ".join(versions))
    if any(METHOD_CLASSES[m].backend == "torch" and available[m][0] for m in methods):
        nt = args.torch_threads or len(os.sched_getaffinity(0))
        print(f"torch threads: {nt}")
    print(
        f"targets: relative energy error <= {args.target_energy:g} AND relative RMS force error "
        f"<= {args.target_force:g} (measured, every method)"
    )
    print(
        f"systems: random uniform positions, cubic box, {C.DENSITY} atoms/A^3, charges +-1 "
        f"({args.charges}), seed {args.seed}; float64 everywhere"
    )
    print(
        f"workers: one subprocess per (method, N) and task; killed above {args.mem_limit_gib:g} GiB "
        f"RSS or {args.timeout:g} s",
        flush=True,
    )
    print()

    results = {
        "machine": machine,
        "versions": {m: available[m][1] for m in methods},
        "args": vars(args),
        "sizes": {},
    }
    hints = {}  # method -> winning cutoff of the previous N
    models = {}  # method -> fitted mesh error model
    for n in sizes:
        positions, charges, cell = C.make_system(n, seed=args.seed, charges=args.charges)
        sys_path = os.path.join(cache, f"system_{n}_{args.charges}_{args.seed}.npz")
        np.savez(sys_path, positions=positions, charges=charges, cell=cell)
        ref_method, ref_acc = ("ewald", 1e-10) if n <= args.ref_ewald_max else ("pme", 1e-9)
        ref_path = os.path.join(cache, f"ref_{n}_{args.charges}_{args.seed}_{ref_method}.npz")
        print(f"=== N = {n}  (L = {cell[0, 0]:.2f} A) ===", flush=True)
        out = runner.worker(
            {
                "task": "reference",
                "system": sys_path,
                "out": ref_path,
                "method": ref_method,
                "accuracy": ref_acc,
                "crosscheck": n <= 1000,
            }
        )
        ref = EW._first(out.messages, "reference")
        if ref is None:
            print(f"  reference failed ({out.status}): {out.stderr_tail.strip().splitlines()[-3:]}")
            results["sizes"][n] = {"reference_failed": out.status}
            continue
        print(
            f"  reference: {ref['source']}: E = {ref['energy']:.10f} eV "
            f"({ref['energy'] / n:.5f} eV/atom), {ref['seconds']:.1f} s, "
            f"peak {out.peak_rss_mib_sampled:.0f} MiB"
        )
        if "crosscheck" in ref:
            cc = ref["crosscheck"]
            print(
                f"    cross-check vs {cc['source']}: E rel diff {cc['err_e']:.1e}, "
                f"F rel rms diff {cc['err_f']:.1e}"
            )
        rows = []
        system = EW.System(sys_path)
        for m in methods:
            if not available[m][0]:
                rows.append({"method": m, "name": display_name(m), "status": "not installed"})
                continue
            rcs = (
                rc_candidates(METHOD_CLASSES[m](), system, hints.get(m), args)
                if m != "jaxlr"
                else []
            )
            print(
                f"  running {display_name(m)} ..."
                + (f" (cutoffs {', '.join(f'{r:g}' for r in rcs)} A)" if rcs else ""),
                flush=True,
            )
            row, models[m] = bench_method(
                runner, m, sys_path, ref_path, n, rcs, models.get(m), args
            )
            rows.append(row)
            if row.get("rc"):
                hints[m] = row["rc"]
        results["sizes"][n] = {"reference": ref, "rows": rows}
        print_table(n, rows, ref, args)
        if args.json:
            write_json(args.json, results)
    print_scaling(results, methods)
    print_notes(args)
    if args.json:
        write_json(args.json, results)
    return 0


def write_json(path, results):
    with open(path, "w") as fh:
        json.dump(results, fh, indent=1, default=str)


def print_table(n, rows, ref, args):
    headers = [
        "method",
        "params",
        "E rel err",
        "F rel rms err",
        "time s (median)",
        "compile s",
        "setup s",
        "peak RSS MiB",
        "MiB / 1k atoms",
        "time / jaxlr",
    ]
    jl = next((r for r in rows if r["method"] == "jaxlr" and "t" in r), None)
    table = []
    for r in rows:
        if "t" in r:
            ratio = f"{r['t'] / jl['t']:.2f}" if jl else "-"
            status = "" if r["status"] == "ok" else f" [{r['status']}]"
            per_k = (r["peak_mib"] - r["base_mib"]) * 1000.0 / n
            table.append(
                [
                    r["name"],
                    r["desc"] + status,
                    C.fmt_sci(r["err_e"]),
                    C.fmt_sci(r["err_f"]),
                    C.fmt_s(r["t"]),
                    C.fmt_s(r["t_first"]),
                    C.fmt_s(r["t_setup"]),
                    f"{r['peak_mib']:.0f}",
                    f"{per_k:.1f}",
                    ratio,
                ]
            )
        else:
            peak = f"{r['peak_mib']:.0f}" if r.get("peak_mib") else "-"
            text = (r.get("desc", "") + " " + r["status"]).strip()
            if len(text) > 200:
                text = text[:197] + "..."
            table.append([r["name"], text, "-", "-", "-", "-", "-", peak, "-", "-"])
    print(f"\nN = {n}, reference {ref['short']}")
    print(C.format_table(headers, table))
    peers = [r for r in rows if r["method"] != "jaxlr" and "t" in r]
    if jl and peers:
        fastest = min(peers, key=lambda r: r["t"])
        print(
            f"  jaxlr vs fastest peer ({fastest['name']}): {fastest['t'] / jl['t']:.2f}x "
            f"({'jaxlr faster' if jl['t'] < fastest['t'] else 'jaxlr slower'})"
        )
    elif jl:
        print("  jaxlr vs fastest peer: no peer completed at this size")
    for r in rows:
        if r.get("search_log") is not None:
            tried = len(r["search_log"])
            extra = f"; killed: {'; '.join(r['killed'])}" if r.get("killed") else ""
            print(f"  {r['name']}: searched {tried} settings in {r['search_s']:.0f} s{extra}")
            if args.verbose:
                for e in r["search_log"]:
                    tw = e["t_warm"]
                    print(
                        f"      {e['desc']}: E err={C.fmt_sci(e['err_e'])} F err={C.fmt_sci(e['err_f'])} "
                        f"t={C.fmt_s(tw) if tw else '-'} {e['failed'] or ''}"
                    )
    print(flush=True)


def print_scaling(results, methods):
    sizes = [n for n, entry in results["sizes"].items() if "rows" in entry]
    if not sizes:
        return
    headers = ["time per atom (us)"] + [f"N={n}" for n in sizes]
    table = []
    for m in methods:
        line = [display_name(m)]
        for n in sizes:
            row = next((r for r in results["sizes"][n]["rows"] if r["method"] == m), None)
            line.append(f"{1e6 * row['t'] / n:.2f}" if row and "t" in row else "-")
        table.append(line)
    print("Scaling: median time / N (flat = linear, slow growth = N log N)")
    print(C.format_table(headers, table))
    print()


def print_notes(args):
    notes = [
        "time s = median of warm energy+forces calls (>= {r} runs after one warm-up; 3 when a call takes > 10 s),",
        "         each ended by block_until_ready / torch backward; it includes the neighbour list, built",
        "         every call: jaxlr (inside its jitted function), jax-md (nbrs.update inside jit), jax-pme",
        "         and torch-pme (vesin half list on the host). torch uses --torch-threads intra-op threads.",
        "compile s = first call in a fresh process (jit trace + compile + run; torch: first eager call).",
        "setup s = host work before it (jaxlr.prepare_energy incl. tuning; jax-md neighbor_fn.allocate).",
        "peak RSS = worker's ru_maxrss (interpreter + libraries + compilation included); MiB / 1k atoms =",
        "         (peak - RSS after imports) per 1000 atoms.",
        "E rel err = |E - E_ref| / |E_ref|; F rel rms err = rms|F - F_ref| / rms|F_ref|; reference: jaxlr",
        "         Ewald (accuracy 1e-10) for N <= {ref_max}, jaxlr PME (1e-9) above; at N <= 1000 it is",
        "         cross-checked against an independent NumPy Ewald (_common.numpy_ewald).",
        "jaxlr: jax.jit(jax.value_and_grad(fn)) of fn = prepare_energy(..., method='pme', accuracy=a), called",
        "         with (positions, charges, cell); a from the ladder "
        + ", ".join(f"{a:g}" for a in JAXLR_LADDER)
        + ", first passing + one tighter, fastest kept.",
        "jax-md: energy.coulomb_neighbor_list (SPME, 4th-order B-splines, cubic grid_points, cutoff < L/2);",
        "         Gaussian units x 14.3996 eV A, plus the omitted self term -alpha/sqrt(pi) sum q^2.",
        "jax-pme / torch-pme: PME = Lagrange interpolation (jax-pme: 4 nodes only), P3M = B-splines with",
        "         the influence function; meshes are powers of two (mesh_spacing chosen to hit M^3);",
        "         prefactor eV_A; smearing = 1/(sqrt(2) alpha).",
        "Peer search: cutoffs from {rcs} A (4 for N <= 8000, else 3, around the previous N's winner);",
        "         alpha from the Kolafa-Perram real-space error (half the energy budget); mesh and order",
        "         from err ~ A_p (alpha h)^p (A_p refitted to the measurements): smallest predicted mesh first;",
        "         on failure a higher order on the same mesh, then a finer mesh; shrunk once when passing with",
        "         room; <= 5 settings per cutoff; fastest passing (one warm run) re-timed in a fresh worker.",
    ]
    print("Notes:")
    for line in notes:
        print(
            "  "
            + line.format(
                r=args.repeats,
                rcs=", ".join(f"{x:g}" for x in RC_LADDER),
                ref_max=args.ref_ewald_max,
            )
        )


if __name__ == "__main__":
    sys.exit(main())
