"""Shared helpers for the jaxlr benchmarks.

Contents:
  * deterministic random neutral ionic test systems,
  * error metrics,
  * Kolafa-Perram Ewald error estimates (used to seed the peers' parameter search),
  * an independent, chunked NumPy Ewald summation (fallback reference / cross-check),
  * a worker-subprocess runner that samples the child's RSS (psutil) and kills it
    above a memory limit or after a wall-clock timeout,
  * timing helpers and table formatting.

Nothing here imports jax or torch at module level, so the parent process of the
benchmark stays small; the workers import what they need.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

COULOMB = 14.399645478425668  # eV * Angstrom, e^2 / (4 pi eps0); same as jaxlr.units.COULOMB
RESULT_TAG = "@@RESULT "
DENSITY = 0.1  # atoms / Angstrom^3


# --------------------------------------------------------------------------------------
# test systems
# --------------------------------------------------------------------------------------


def make_system(n: int, seed: int = 0, charges: str = "alternating", density: float = DENSITY):
    """Random neutral ionic system: uniform positions in a cubic box.

    charges="alternating": +1,-1,+1,...; "random": a random permutation of equally
    many +1 and -1 (n must be even in both cases, so the cell is neutral).
    Returns (positions (n,3), charges (n,), cell (3,3) with lattice vectors as rows).
    """
    if n % 2:
        raise ValueError("n must be even for a neutral +-1 system")
    length = (n / density) ** (1.0 / 3.0)
    rng = np.random.default_rng(seed)
    positions = rng.uniform(0.0, length, size=(n, 3))
    q = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    if charges == "random":
        q = rng.permutation(q)
    elif charges != "alternating":
        raise ValueError(f"unknown charges mode {charges!r}")
    cell = np.eye(3) * length
    return positions, q, cell


def rel_energy_error(e, e_ref):
    return abs(float(e) - float(e_ref)) / abs(float(e_ref))


def rel_rms_force_error(f, f_ref):
    f = np.asarray(f, dtype=np.float64)
    f_ref = np.asarray(f_ref, dtype=np.float64)
    return float(
        np.sqrt(np.mean(np.sum((f - f_ref) ** 2, axis=1)) / np.mean(np.sum(f_ref**2, axis=1)))
    )


# --------------------------------------------------------------------------------------
# Ewald error estimates, Gaussian units (real space: Kolafa & Perram, Mol. Simul. 9, 351 (1992))
# --------------------------------------------------------------------------------------


def kp_real_energy_error(alpha, rc, sum_q2, volume):
    """RMS error of the real-space energy truncated at rc (units e^2/Angstrom)."""
    x = alpha * rc
    return sum_q2 * math.sqrt(rc / (2.0 * volume)) * math.exp(-x * x) / (x * x)


def kp_recip_energy_error(alpha, kc, sum_q2, length=None):
    """Error of the reciprocal energy truncated at |k| <= kc (sphere).

    Not the random Kolafa-Perram term but the systematic one, which dominates for
    N >~ 100: the truncated k-space self interaction of every ion,
    (2 pi / V) sum_{|k|>kc} exp(-k^2/4a^2)/k^2 * sum q^2 ~= sum q^2 a/sqrt(pi) erfc(kc/2a)
    (it grows like N while the random part grows like sqrt(N)).
    """
    return sum_q2 * alpha / math.sqrt(math.pi) * math.erfc(kc / (2.0 * alpha))


def _bisect_decreasing(f, target, lo, hi, iters=100):
    """x in [lo, hi] with f(x) = target for a decreasing f (clamped)."""
    if f(lo) <= target:
        return lo
    if f(hi) > target:
        return hi
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


def ewald_params_for(rc, abs_err, sum_q2, length):
    """(alpha, kc) so that each of the real/reciprocal energy errors is about abs_err / 2.

    abs_err is in Gaussian units (e^2/Angstrom), i.e. eV / COULOMB.
    """
    volume = length**3
    alpha = _bisect_decreasing(
        lambda a: kp_real_energy_error(a, rc, sum_q2, volume), abs_err / 2.0, 1e-3, 20.0 / rc
    )
    kc = _bisect_decreasing(
        lambda k: kp_recip_energy_error(alpha, k, sum_q2, length),
        abs_err / 2.0,
        2.0 * math.pi / length,
        60.0 * alpha,
    )
    return alpha, kc


# --------------------------------------------------------------------------------------
# Independent NumPy Ewald (float64, chunked over k vectors); energy and forces in eV, eV/A
# --------------------------------------------------------------------------------------


def numpy_ewald(positions, charges, cell, alpha, rc, kc, chunk_bytes=256 * 2**20):
    """Plain Ewald sum with a spherical k cutoff |k| <= kc (cubic or general cell).

    Real space uses a vesin half neighbour list. Used as a fallback reference when
    jaxlr cannot be imported and as an independent cross-check.
    """
    import vesin
    from scipy.special import erfc

    pos = np.asarray(positions, dtype=np.float64)
    q = np.asarray(charges, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    n = len(q)
    volume = abs(np.linalg.det(cell))

    # real space
    nl = vesin.NeighborList(cutoff=rc, full_list=False)
    i, j, s = nl.compute(points=pos, box=cell, periodic=True, quantities="ijS")
    i = i.astype(np.int64)
    j = j.astype(np.int64)
    rij = pos[j] - pos[i] + s.astype(np.float64) @ cell
    r = np.linalg.norm(rij, axis=1)
    qq = q[i] * q[j]
    e_real = np.sum(qq * erfc(alpha * r) / r)
    # dE/dr for erfc(a r)/r
    dedr = qq * (
        -erfc(alpha * r) / r**2 - 2.0 * alpha / math.sqrt(math.pi) * np.exp(-((alpha * r) ** 2)) / r
    )
    fvec = (dedr / r)[:, None] * rij  # dE/d r_j
    forces = np.zeros_like(pos)
    np.add.at(forces, i, fvec)
    np.add.at(forces, j, -fvec)
    del rij, r, qq, dedr, fvec, i, j, s

    # reciprocal space: half space of k (k and -k give equal contributions)
    recip = 2.0 * np.pi * np.linalg.inv(cell).T
    nmax = np.ceil(kc * np.linalg.norm(cell, axis=1) / (2.0 * np.pi)).astype(int) + 1
    grids = np.meshgrid(*[np.arange(-m, m + 1) for m in nmax], indexing="ij")
    nvec = np.stack([g.ravel() for g in grids], axis=1)
    # half space: first nonzero component positive
    half = (
        (nvec[:, 0] > 0)
        | ((nvec[:, 0] == 0) & (nvec[:, 1] > 0))
        | ((nvec[:, 0] == 0) & (nvec[:, 1] == 0) & (nvec[:, 2] > 0))
    )
    kvec = nvec[half] @ recip
    k2 = np.sum(kvec**2, axis=1)
    keep = k2 <= kc * kc
    kvec, k2 = kvec[keep], k2[keep]
    a_k = np.exp(-k2 / (4.0 * alpha**2)) / k2
    e_recip = 0.0
    chunk = max(1, int(chunk_bytes // (16 * n * 3)))
    for start in range(0, len(kvec), chunk):
        kv = kvec[start : start + chunk]
        ak = a_k[start : start + chunk]
        phase = pos @ kv.T  # (n, kchunk)
        eikr = np.exp(1j * phase)
        sk = q @ eikr  # (kchunk,)
        e_recip += np.sum(ak * np.abs(sk) ** 2)
        im = np.imag(eikr * np.conj(sk)[None, :])  # (n, kchunk)
        forces += (8.0 * np.pi / volume) * q[:, None] * ((im * ak[None, :]) @ kv)
    e_recip *= 4.0 * np.pi / volume
    e_self = -alpha / math.sqrt(math.pi) * np.sum(q**2)
    energy = e_real + e_recip + e_self
    return COULOMB * energy, COULOMB * forces


# --------------------------------------------------------------------------------------
# timing and memory
# --------------------------------------------------------------------------------------


def peak_rss_mib_self():
    """Peak RSS of the calling process in MiB (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_calls(fn, repeats=3, min_total=0.0):
    """Run fn() repeats times (at least; more while total < min_total, max 20); return list of seconds."""
    times = []
    t_start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - t_start < min_total and len(times) < 20):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def emit(obj):
    """Worker -> parent message (one JSON line on stdout)."""
    sys.stdout.write(RESULT_TAG + json.dumps(obj) + "\n")
    sys.stdout.flush()


@dataclass
class WorkerOutcome:
    status: str  # "ok", "oom", "timeout", "crashed"
    messages: list = field(default_factory=list)
    peak_rss_mib_sampled: float = 0.0
    wall_s: float = 0.0
    returncode: int | None = None
    stderr_tail: str = ""


def _tree_rss(proc):
    import psutil

    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_worker(args, mem_limit_bytes, timeout_s, env=None, on_message=None, poll_s=0.1):
    """Launch `python <args>` and watch it.

    Messages the child prints with emit() are collected (and passed to on_message as they
    come). The child (and its descendants) is killed when its RSS exceeds mem_limit_bytes
    ("oom") or it runs longer than timeout_s ("timeout").
    """
    import psutil

    cmd = [sys.executable, *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, bufsize=1
    )
    outcome = WorkerOutcome(status="ok")
    stderr_chunks = []

    def read_stdout():
        for line in proc.stdout:
            if line.startswith(RESULT_TAG):
                try:
                    msg = json.loads(line[len(RESULT_TAG) :])
                except json.JSONDecodeError:
                    continue
                outcome.messages.append(msg)
                if on_message is not None:
                    on_message(msg)

    def read_stderr():
        for line in proc.stderr:
            stderr_chunks.append(line)
            if len(stderr_chunks) > 400:
                del stderr_chunks[:200]

    threads = [
        threading.Thread(target=read_stdout, daemon=True),
        threading.Thread(target=read_stderr, daemon=True),
    ]
    for t in threads:
        t.start()
    ps = psutil.Process(proc.pid)
    killed = None
    while proc.poll() is None:
        rss = _tree_rss(ps)
        outcome.peak_rss_mib_sampled = max(outcome.peak_rss_mib_sampled, rss / 2**20)
        if rss > mem_limit_bytes:
            killed = "oom"
        elif time.perf_counter() - t0 > timeout_s:
            killed = "timeout"
        if killed:
            try:
                for child in ps.children(recursive=True):
                    child.kill()
            except psutil.Error:
                pass
            proc.kill()
            break
        time.sleep(poll_s)
    proc.wait()
    for t in threads:
        t.join(timeout=5)
    outcome.wall_s = time.perf_counter() - t0
    outcome.returncode = proc.returncode
    outcome.stderr_tail = "".join(stderr_chunks)[-3000:]
    if killed:
        outcome.status = killed
    elif proc.returncode != 0:
        # a kernel OOM kill also shows up as SIGKILL
        outcome.status = "oom" if proc.returncode == -9 else "crashed"
    return outcome


# --------------------------------------------------------------------------------------
# machine description and table formatting
# --------------------------------------------------------------------------------------


def cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except Exception:  # pragma: no cover
        mem = "RAM unknown"
    return f"CPU: {cpu_model()}, {cores} cores, {mem}"


def format_table(headers, rows):
    cols = list(zip(*([headers] + rows))) if rows else [[h] for h in headers]
    widths = [max(len(str(x)) for x in col) for col in cols]
    line = " | ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    sep = "-+-".join("-" * w for w in widths)
    out = [line, sep]
    for row in rows:
        out.append(" | ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    return "\n".join(out)


def fmt_sci(x, digits=1):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}e}"


def fmt_s(x):
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"
