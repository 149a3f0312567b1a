"""The main job behind ``jaxlr fit`` and ``jaxlr evaluate``: train a model (and the
short-range baseline), then write plots, metrics and a text report into the run
folder."""

from __future__ import annotations

import inspect
import math
import os
import time
from pathlib import Path

import numpy as np

from jaxlr import train
from jaxlr.data import datasets
from jaxlr.data import read as read_frames
from jaxlr.models import ShortRange

__all__ = ["load_data", "run_fit", "run_evaluate", "table", "path_check"]

DEFAULT_DATA = "nacl_clusters"
DEFAULT_MODEL = "latent"
#: the default run: small enough for 2 CPU cores in well under 10 minutes
DEFAULT_EPOCHS = 60


def load_data(spec: str):
    """Frames from a shipped dataset name or an extxyz file path."""
    if spec in datasets.NAMES:
        return datasets.load(spec)
    if not os.path.exists(spec):
        raise SystemExit(
            f"--data {spec!r} is neither a shipped dataset ({', '.join(datasets.NAMES)}) "
            "nor an existing file"
        )
    try:
        return read_frames(spec)
    except ValueError as err:
        raise SystemExit(f"--data: {err}") from err


def table(rows: dict[str, dict]) -> str:
    """A text table of RMSE / MAE per property for each named metrics dict."""
    names = list(rows)
    props = [p for p in train.PROPERTIES if any(p in rows[n] for n in names)]
    w = max([14] + [len(n) + 6 for n in names])
    head = f"{'property':20s}" + "".join(f"{n + ' MAE':>{w}s}{n + ' RMSE':>{w}s}" for n in names)
    lines = [head, "-" * len(head)]
    for p in props:
        unit, factor = train.PROPERTIES[p]
        line = f"{p + ' (' + unit + ')':20s}"
        for n in names:
            m = rows[n].get(p)
            if m is None:
                line += f"{'-':>{w}s}{'-':>{w}s}"
            else:
                line += f"{m['mae'] * factor:{w}.3f}{m['rmse'] * factor:{w}.3f}"
        lines.append(line)
    return "\n".join(lines)


def path_check(models: dict, out: Path):
    """Energy of Na9Cl8+ along the pull-out path (shipped ``nacl_path``), each model
    against GFN2-xTB, relative to the first point; a plot ``path.png`` and the RMSE
    (meV) per model."""
    frames = datasets.load("nacl_path")
    start = frames[0].positions
    distances = [float(np.linalg.norm(f.positions - start, axis=1).max()) for f in frames]
    ref = np.array([f.energy for f in frames])
    ref = ref - ref[0]
    curves, rmse = {}, {}
    for name, model in models.items():
        e = np.array([p["energy"] for p in train.predict_frames(model, frames)])
        curves[name] = e - e[0]
        rmse[name] = float(np.sqrt(np.mean((curves[name] - ref) ** 2)))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(distances, ref, "k-o", ms=3, label="GFN2-xTB")
    for name, e in curves.items():
        ax.plot(distances, e, "--", label=f"{name} (RMSE {rmse[name] * 1e3:.0f} meV)")
    ax.set_xlabel("Na displacement from its site (Å)")
    ax.set_ylabel("E - E(0) (eV)")
    ax.set_title("Na9Cl8+: one Na pulled away")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _savefig(fig, out / "path.png")
    return {
        "distance": distances,
        "reference": ref.tolist(),
        "models": {k: v.tolist() for k, v in curves.items()},
        "rmse": rmse,
    }


def _savefig(fig, path: Path):
    import matplotlib.pyplot as plt

    tmp = path.with_name(".tmp-" + path.name)
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(fig)


def _learning_curves(histories: dict, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for k, (name, hist) in enumerate(histories.items()):
        ep = [h["epoch"] for h in hist]
        ax.semilogy(ep, [h["train_loss"] for h in hist], f"C{k}-", label=f"{name} train")
        ax.semilogy(ep, [h["val_loss"] for h in hist], f"C{k}--", label=f"{name} validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _savefig(fig, out / "learning_curves.png")


def _parity(preds: dict, frames, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("energy", "energy (eV/atom)"), ("forces", "forces (eV/Å)")]
    if any(p[0]["charges"] is not None for p in preds.values()) and frames[0].charges is not None:
        panels.append(("charges", "charges (e)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.8))
    for ax, (prop, label) in zip(np.atleast_1d(axes), panels):
        lo, hi = math.inf, -math.inf
        for k, (name, pred) in enumerate(preds.items()):
            ref, val = [], []
            for f, p in zip(frames, pred):
                r, v = getattr(f, prop), p.get(prop)
                if r is None or v is None:
                    continue
                if prop == "energy":
                    r, v = r / f.n_atoms, v / f.n_atoms
                ref.append(np.ravel(r))
                val.append(np.ravel(v))
            if not ref:
                continue
            ref, val = np.concatenate(ref), np.concatenate(val)
            ax.plot(ref, val, ".", ms=2, color=f"C{k}", label=name, alpha=0.6)
            lo, hi = min(lo, ref.min(), val.min()), max(hi, ref.max(), val.max())
        if math.isfinite(lo):
            ax.plot([lo, hi], [lo, hi], "k-", lw=0.5)
        ax.set_xlabel(f"reference {label}")
        ax.set_ylabel(f"model {label}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    _savefig(fig, out / "parity.png")


def run_fit(
    data=DEFAULT_DATA,
    model=None,
    config=None,
    epochs=None,
    out=None,
    seed=None,
    baseline=True,
    progress=True,
    resume=False,
    max_frames=None,
):
    """Train ``model`` (and, unless ``baseline`` is False or the model is already
    short-range, the ShortRange baseline with the same settings) on ``data``; write
    the run folder. Returns the summary dict (also ``summary.json``)."""
    cfg = {} if config is None else dict(config)
    if model is not None:
        cfg["model"] = model
    cfg.setdefault("model", DEFAULT_MODEL)
    if epochs is not None:
        cfg["epochs"] = int(epochs)
    cfg.setdefault("epochs", DEFAULT_EPOCHS)
    if seed is not None:
        cfg["seed"] = int(seed)
    cfg = train.TrainConfig.from_dict(cfg)
    frames = load_data(data)
    if max_frames is not None:
        rng = np.random.default_rng(cfg.seed)
        keep = np.sort(rng.permutation(len(frames))[: int(max_frames)])
        frames = [frames[i] for i in keep]
    out = Path(out or time.strftime("runs/fit-%Y%m%d-%H%M%S"))
    t0 = time.perf_counter()
    main = train.fit(frames, cfg, out, progress=progress, resume=resume)
    results = {cfg.model: main}
    names = {cfg.model: main["model"].name}
    if baseline and cfg.model != "short_range":
        # the baseline shares the backbone's hyper-parameters, not the family's own
        shared = set(inspect.signature(ShortRange.__init__).parameters) - {"self", "backbone"}
        shared.discard("atomic_dipoles")
        base_args = {k: v for k, v in cfg.model_args.items() if k in shared}
        base_cfg = train.TrainConfig.from_dict(
            {
                **cfg.to_dict(),
                "model": "short_range",
                "model_args": base_args,
                "charges_first_epochs": 0,
            }
        )
        base_resume = resume and (out / "baseline" / "config.json").exists()
        # a ShortRange model has no dipole to couple to a field: its baseline trains and
        # is compared on the field-free frames only (stated in the report)
        base_frames, base_test = frames, None
        if any(_fielded(f) for f in frames):
            held = {id(f) for f in main["test"]}
            base_frames = [f for f in frames if not _fielded(f) and id(f) not in held]
            base_test = [f for f in main["test"] if not _fielded(f)]
            if not base_frames or not base_test:
                raise ValueError("too few frames without a field: train with --no-baseline")
        results["short_range"] = train.fit(
            base_frames,
            base_cfg,
            out / "baseline",
            progress=progress,
            resume=base_resume,
            test_frames=base_test,
        )
        names["short_range"] = results["short_range"]["model"].name
    seconds = time.perf_counter() - t0
    test = main["test"]
    if "short_range" in results and any(_fielded(f) for f in test):
        test = [f for f in test if not _fielded(f)]
        for r in results.values():
            kept = {k: r["metrics"].get(k) for k in ("throughput", "epochs")}
            r["metrics"] = {**train.evaluate_model(r["model"], test, accuracy=cfg.accuracy), **kept}
    preds = {names[k]: train.predict_frames(r["model"], test) for k, r in results.items()}
    _learning_curves({names[k]: r["history"] for k, r in results.items()}, out)
    _parity(preds, test, out)
    summary = {
        "run": str(out),
        "data": data,
        "n_frames": len(frames),
        "n_test": len(test),
        "field_free_test": len(test) < len(main["test"]),
        "seconds": seconds,
        "metrics": {names[k]: r["metrics"] for k, r in results.items()},
    }
    if data == DEFAULT_DATA:
        summary["path"] = path_check({names[k]: r["model"] for k, r in results.items()}, out)
    report = _report(summary, cfg, names)
    (out / "report.txt").write_text(report)
    train._write_json(out / "summary.json", summary)
    return summary


def _fielded(frame):
    return frame.field is not None and bool(np.any(frame.field))


def _report(summary, cfg, names):
    metrics = summary["metrics"]
    model_name = names[cfg.model]
    lines = [
        f"jaxlr fit: {model_name} on {summary['data']} ({summary['n_frames']} frames), "
        f"{summary['seconds']:.0f} s in total",
        "",
        "test set"
        + (
            f" ({summary['n_test']} frames without a field: the ShortRange baseline cannot "
            "couple to one):"
            if summary.get("field_free_test")
            else ":"
        ),
        table(
            {n: {k: v for k, v in m.items() if k in train.PROPERTIES} for n, m in metrics.items()}
        ),
    ]
    if "ShortRange" in metrics and model_name != "ShortRange":
        lines.append("")
        for prop in ("energy", "forces"):
            a, b = metrics[model_name].get(prop), metrics["ShortRange"].get(prop)
            if a and b:
                lines.append(
                    f"{prop} RMSE: ShortRange / {model_name} = {b['rmse'] / a['rmse']:.2f}x"
                )
    q = metrics[model_name].get("charges")
    if q and "r2" in q:
        lines.append(
            f"charges vs reference: R^2 = {q['r2']:.3f} (squared Pearson {q['pearson_r2']:.3f})"
        )
        if q["mae_up_to_sign"] < q["mae"]:
            lines.append(
                f"charges MAE up to the global sign (q -> -q leaves a neutral structure's "
                f"energy unchanged): {q['mae_up_to_sign'] * 1e3:.1f} me"
            )
    if "path" in summary:
        lines.append("")
        lines.append(
            "Na9Cl8+ pull-out path, energy RMSE vs GFN2-xTB (meV): "
            + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in summary["path"]["rmse"].items())
        )
    lines.append("")
    for n, m in metrics.items():
        t = m.get("throughput", {})
        if t.get("train_structures_per_s"):
            lines.append(
                f"{n}: {m.get('epochs')} epochs, training {t['train_structures_per_s']:.0f} "
                f"structures/s on {t['devices']} {t['backend']} device(s)"
            )
    return "\n".join(lines) + "\n"


def run_evaluate(run, data, out=None, which="best"):
    """Print the metrics table of a run on ``data`` and write predictions as extxyz
    (``MODEL_energy``, ``MODEL_forces``, ``MODEL_stress``, ``MODEL_charges``,
    ``MODEL_dipole`` beside the ``REF_`` labels)."""
    from jaxlr.data import to_atoms

    frames = load_data(data)
    try:
        metrics, preds = train.evaluate(run, frames, which=which)
    except (train.CheckpointError, FileNotFoundError) as err:
        raise SystemExit(f"jaxlr evaluate: {err}") from err
    except ValueError as err:
        raise SystemExit(f"jaxlr evaluate: {err}") from err
    images = []
    for f, p in zip(frames, preds):
        a = to_atoms(f)
        a.info["MODEL_energy"] = p["energy"]
        a.arrays["MODEL_forces"] = np.asarray(p["forces"], np.float64)
        if p["stress"] is not None:
            a.info["MODEL_stress"] = np.asarray(p["stress"]).reshape(-1)
        if p["charges"] is not None:
            a.arrays["MODEL_charges"] = np.asarray(p["charges"], np.float64)
        if p["dipole"] is not None:
            a.info["MODEL_dipole"] = np.asarray(p["dipole"])
        images.append(a)
    out = Path(out) if out else Path(run) / "predictions.extxyz"
    import tempfile

    import ase.io

    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".extxyz", dir=out.parent)
    with os.fdopen(fd, "w") as handle:
        ase.io.write(handle, images, format="extxyz")
    os.replace(tmp, out)
    print(table({"model": metrics}))
    if "charges" in metrics and "r2" in metrics["charges"]:
        print(f"charges R^2 = {metrics['charges']['r2']:.4f}")
    print(f"predictions: {out}")
    return metrics
