"""``mlanet bench accuracy``: AFLW2000-3D NME / CED of several models on one plot, next to the published numbers.

For each model (checkpoints, training run folders, ``.onnx`` networks, and untrained baselines)
this runs the project's AFLW2000-3D evaluation through ``mlanet eval aflw2000``'s public functions:
the network is opened by :func:`mlanet.eval.predict.load_network` (an ``.onnx`` file by the runtime's
backend), the scored landmark definition is the protocol's (:data:`mlanet.eval.aflw2000.LANDMARK_DEFINITION`
through :func:`mlanet.eval.predict.resolve_eval_definition`, ``--landmarks`` as in the eval command), the
predictor is :func:`mlanet.eval.predict.make_landmark_predictor` and the scores come from
:meth:`mlanet.eval.aflw2000.AFLW2000Eval.evaluate` and :mod:`mlanet.eval.metrics`. The protocol of
``shared/PROTOCOLS.md`` and every metric live there and only there; this module adds what a benchmark
adds: several models on one plot, their inference time on this machine, and the record.

Outputs, under ``<out>/<device_tag>/``:

* ``accuracy.json`` — the record (:func:`.record.write_record`): per model its label, source,
  model name, scored landmark definition, NMEs, AUC, image count, CED curve and per-image NMEs; the data
  folder and subset; the published reference numbers with their citations, marked as published (not
  measured by us).
* ``accuracy_ced.png`` — the CED curves of all models on one axes; the published mean-of-bins
  numbers (3DDFA_V2 3.51 %, SynergyNet 3.41 %) as vertical dashed lines. They are single numbers
  measured on all 2,000 AFLW2000-3D images, not curves; ours come from the data folder given
  (by default the project's 199-image dev split), which the title says.

Usage::

    mlanet bench accuracy --out /tmp/bench --weights runs/check2 --untrained mlanet_mobile \\
        --face-model ict_face.mlface.npz [--limit N | --quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

#: Name of the record (``<name>.json``) and of the plot next to it.
RECORD_NAME = "accuracy"
PLOT_NAME = "accuracy_ced.png"

#: Images evaluated by ``--quick`` (the first ones by file name) unless ``--limit`` says otherwise.
QUICK_LIMIT = 40

#: Untrained baseline used when neither ``--weights`` nor ``--untrained`` is given.
DEFAULT_UNTRAINED = "mlanet_mobile"

#: Development split inside the shared folder.
DEV_SPLIT = Path("data") / "aflw2000-3d-dev"

#: Published references drawn on the plot: name -> (legend label format, citation). The numbers
#: themselves come from :data:`mlanet.eval.aflw2000.REFERENCES` (one source of truth).
PUBLISHED: dict[str, tuple[str, str]] = {
    "3DDFA_V2": (
        "3DDFA_V2 (published, mean of bins {value:.2f}%)",
        "Guo et al., Towards Fast, Accurate and Stable 3D Dense Face Alignment, ECCV 2020",
    ),
    "SynergyNet": (
        "SynergyNet (published, {value:.2f}%)",
        "Wu et al., Synergy between 3DMM and 3D Landmarks for Accurate 3D Facial Geometry, 3DV 2021",
    ),
}

NME_MEAN_AVAILABLE_LABEL = (
    "nme_mean_available_bins (mean of the yaw-bin means of the bins that hold images; equals nme_mean_bins when "
    "all three bins hold images, otherwise NOT the protocol's headline)"
)
SPEED_LABEL = (
    "inference time on this machine (see environment): wall time of the network forward pass + face-model "
    "landmarks + projection; excludes image decoding and cropping. inference_ms_per_image = timed.batch_B "
    "median_ms / B (record.time_call on a fixed batch of B random crops after warm-up), or the evaluation pass "
    "when timing is off; timed.batch_1 = single-image latency; eval_pass = the batches of the evaluation itself. "
    "load_average_1min shows whether other processes competed for the CPU. Not the edge pipeline's latency "
    "(see `mlanet bench model` / `pipeline`)"
)


# --------------------------------------------------------------------------------------------- arguments
def default_data_dir() -> Path | None:
    """The shared folder's ``data/aflw2000-3d-dev`` (:func:`.shared_data.shared_dir`), if it exists."""
    from mlanet.benchmarks.shared_data import shared_dir

    candidate = shared_dir() / DEV_SPLIT
    return candidate if candidate.is_dir() else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mlanet bench accuracy`` (``--out`` is added by the caller)."""
    default_data = default_data_dir()
    parser.description = (
        "AFLW2000-3D (standard protocol, ground-truth crops) NME and CED of several models on one plot, with the "
        "published mean-of-bins numbers of 3DDFA_V2 and SynergyNet marked as published references."
    )
    parser.add_argument(
        "--data", type=Path, default=default_data, required=default_data is None, metavar="DIR",
        help="folder of AFLW2000-3D <name>.jpg + <name>.mat pairs"
        + (f" (default {default_data})" if default_data else " (required: no shared dev split found)"),
    )
    parser.add_argument(
        "--weights", nargs="+", action="extend", default=[], metavar="PATH",
        help="checkpoints (.safetensors), training run folders (their last.json) or .onnx networks; "
        "one or more, repeatable",
    )
    parser.add_argument(
        "--untrained", action="append", default=[], metavar="MODEL",
        help=f"a freshly initialised registered model as a baseline, labelled 'untrained' (repeatable; default "
        f"{DEFAULT_UNTRAINED} when no --weights are given)",
    )
    parser.add_argument(
        "--labels", nargs="+", default=None, metavar="NAME",
        help="legend names, one per model: the --weights in order, then the --untrained ones",
    )
    parser.add_argument("--face-model", default=None, metavar="FILE",
                        help="face-model file (default: the one in the asset home)")
    parser.add_argument("--landmarks", default="auto", metavar="NAME",
                        help="face-model landmark definition scored, as in mlanet eval aflw2000: auto (default: "
                        "aflw2000_68, AFLW2000-3D's own points; ict68 for a face model without it) or another name")
    parser.add_argument("--list", default=None, metavar="NAME_OR_FILE",
                        help="evaluate only the image stems of this list (e.g. aflw2000_dev_heldout: the images the "
                        "shipped weights were not trained on); recorded with its SHA-256")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="evaluate only the first N images (by file name); recorded")
    parser.add_argument("--quick", action="store_true",
                        help=f"a quick run: --limit {QUICK_LIMIT} unless --limit is given")
    parser.add_argument("--batch", type=int, default=16, metavar="N", help="images per forward pass (default 16)")
    parser.add_argument("--timing-repeats", type=int, default=10, metavar="N",
                        help="timed repeats of a fixed batch (and of one image) per model after the evaluation; "
                        "0 = only the evaluation pass's own timing (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed of the untrained models (default 0)")
    parser.add_argument(
        "--max-nme", type=float, default=None, metavar="PERCENT",
        help="x-axis limit of the plot (default 10, widened to the worst curve's 90th percentile)",
    )


# --------------------------------------------------------------------------------------------- models
@dataclass
class ModelSpec:
    """One model to evaluate: ``kind`` is ``checkpoint``, ``onnx`` or ``untrained``."""

    kind: str
    source: str
    label: str | None = None
    model_name: str | None = None


def model_specs(
    weights: list[str | os.PathLike[str]], untrained: list[str], labels: list[str] | None
) -> list[ModelSpec]:
    """The models of a run, in order (weights, then untrained), with labels (user's or derived).

    Raises:
        MLANetError: unknown untrained model name, a weights path that does not exist, or a
            label count that does not match the model count.
    """
    from mlanet.errors import MLANetError
    from mlanet.models.registry import list_models

    specs: list[ModelSpec] = []
    for w in weights:
        p = Path(w).expanduser()
        if not p.exists():
            raise MLANetError(f"{p}: no such checkpoint, run folder or .onnx file")
        specs.append(ModelSpec("onnx" if p.suffix.lower() == ".onnx" else "checkpoint", str(p)))
    known = list_models()
    for name in untrained:
        if name not in known:
            raise MLANetError(f"--untrained {name}: unknown model; known models: {', '.join(known)}")
        specs.append(ModelSpec("untrained", f"untrained:{name}", model_name=name))
    if not specs:
        raise MLANetError("no models to evaluate: pass --weights and/or --untrained")
    if labels is not None:
        if len(labels) != len(specs):
            raise MLANetError(
                f"--labels gives {len(labels)} name(s) for {len(specs)} model(s) (the --weights in order, then the "
                "--untrained ones)"
            )
        for spec, label in zip(specs, labels):
            spec.label = label
    return specs


def _derived_labels(specs: list[ModelSpec]) -> list[str]:
    """Legend names for specs without a user label: ``untrained`` / ``<model> (<file or run>)``, made unique."""
    n_untrained = sum(s.kind == "untrained" for s in specs)
    out = []
    for s in specs:
        if s.label is not None:
            out.append(s.label)
        elif s.kind == "untrained":
            out.append("untrained" if n_untrained == 1 else f"untrained {s.model_name}")
        else:
            p = Path(s.source)
            if p.is_dir():
                tag = p.name
            elif s.kind == "onnx":
                tag = f"{p.parent.name}/{p.name}" if p.parent.name else p.name
            else:
                tag = f"{p.parent.parent.name}/{p.stem}" if p.parent.name == "checkpoints" else p.stem
            out.append(f"{s.model_name} ({tag})" if s.model_name else tag)
    seen: dict[str, int] = {}
    unique = []
    for label in out:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return unique


def open_model(spec: ModelSpec, face_model: Any, seed: int = 0,
               landmarks: str | None = None) -> tuple[Callable[..., Any], Any, dict[str, Any]]:
    """``(predict_fn, preprocess, descriptor)`` for one model, through ``mlanet eval aflw2000``'s functions.

    Checkpoints and run folders: :func:`mlanet.checkpoint.resolve_weights` +
    :func:`mlanet.eval.predict.load_network`; untrained: ``load_network(untrained=name, seed=seed)``;
    ``.onnx``: the runtime's onnxruntime backend behind the same predictor. The scored definition is
    ``landmarks`` (``None``/``"auto"``: the protocol's, :data:`mlanet.eval.aflw2000.LANDMARK_DEFINITION`) and
    the predictor :func:`mlanet.eval.predict.make_landmark_predictor`. Sets ``spec.model_name``.
    """
    import numpy as np
    import torch

    from mlanet.errors import MLANetError
    from mlanet.eval.aflw2000 import LANDMARK_DEFINITION
    from mlanet.eval.predict import load_network, make_landmark_predictor, resolve_eval_definition
    from mlanet.fileutil import file_sha256

    desc: dict[str, Any] = {"kind": spec.kind, "source": spec.source}
    if spec.kind == "untrained":
        model = load_network(face_model, untrained=spec.model_name, seed=seed)
        desc.update(seed=seed, weights=None)
        preprocess = model.preprocess
    elif spec.kind == "checkpoint":
        from mlanet.checkpoint import resolve_weights

        weights = resolve_weights(spec.source)
        model = load_network(face_model, weights)
        desc["weights"] = {"path": str(weights), "sha256": file_sha256(weights)}
        preprocess = model.preprocess
    elif spec.kind == "onnx":

        try:
            from mlanet.edge.backends import open_backend
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise MLANetError(f"{spec.source}: .onnx needs onnxruntime ({exc}); pip install -e '.[export]'") from None
        try:
            backend = open_backend(spec.source, face_model, device="cpu")
        except ImportError as exc:  # pragma: no cover
            raise MLANetError(f"{spec.source}: .onnx needs onnxruntime ({exc}); pip install -e '.[export]'") from None
        preprocess, layout = backend.metadata.preprocess, backend.metadata.layout

        class _OnnxNetwork(torch.nn.Module):
            """images -> flat params through onnxruntime, shaped like an MLANet for the predictor."""

            def __init__(self) -> None:
                super().__init__()
                self.preprocess, self.layout = preprocess, layout
                self.name = backend.metadata.model_name or Path(spec.source).stem

            def forward(self, images: torch.Tensor) -> torch.Tensor:
                return torch.from_numpy(np.asarray(backend(images), dtype=np.float32))

        model = _OnnxNetwork()
        desc["weights"] = {"path": spec.source, "sha256": file_sha256(spec.source)}
    else:  # pragma: no cover - model_specs only makes the three kinds
        raise ValueError(f"unknown model kind {spec.kind!r}")
    try:
        definition = resolve_eval_definition(face_model, landmarks, LANDMARK_DEFINITION,
                                             warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    except KeyError as exc:  # a --landmarks name the face model lacks: one line, not a traceback
        raise MLANetError(f"--landmarks {landmarks}: {exc.args[0]}") from None
    predictor = make_landmark_predictor(model, face_model, preprocess=preprocess, layout=model.layout,
                                        definition=definition)
    name = getattr(model, "name", None) or spec.model_name or Path(spec.source).stem
    spec.model_name = str(name)
    desc["model"] = spec.model_name
    desc["landmark_definition"] = definition
    desc["input_size"] = int(preprocess.input_size)
    if hasattr(model, "describe"):
        desc["parameters"] = int(model.describe()["parameters"])
    return predictor, preprocess, desc


def _round(values: Any, digits: int = 4) -> list[float]:
    return [round(float(v), digits) for v in values]


def evaluate_model(
    bench: Any,
    spec: ModelSpec,
    face_model: Any,
    *,
    batch_size: int = 16,
    seed: int = 0,
    label: str | None = None,
    timing_repeats: int = 10,
    landmarks: str | None = None,
) -> dict[str, Any]:
    """Evaluate one model on ``bench`` (an :class:`~mlanet.eval.aflw2000.AFLW2000Eval`); the record's entry.

    ``timing_repeats`` > 0 also times the predictor on a fixed batch (``batch_size`` images, and
    one image) with :func:`.record.time_call`; 0 keeps only the timing of the evaluation pass.
    ``landmarks``: the scored definition (:func:`open_model`).
    """
    import torch

    from mlanet.benchmarks.record import time_call
    from mlanet.eval.metrics import mean_of_available_bins
    from mlanet.run_environment import load_average_1min

    predictor, preprocess, desc = open_model(spec, face_model, seed=seed, landmarks=landmarks)
    label = label or spec.label or spec.model_name or spec.source
    S = int(preprocess.input_size)
    B = max(1, min(batch_size, len(bench)))
    with torch.no_grad():  # one warm-up batch, not timed
        predictor(torch.zeros(B, 3, S, S))
    batch_seconds: list[float] = []
    batch_images: list[int] = []

    def timed(images: torch.Tensor) -> Any:
        t0 = time.perf_counter()
        out = predictor(images)
        batch_seconds.append(time.perf_counter() - t0)
        batch_images.append(int(images.shape[0]))
        return out

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r  {label}: {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    load_before = load_average_1min()
    t0 = time.perf_counter()
    res = bench.evaluate(timed, preprocess, batch_size=batch_size, crop="gt", progress=progress,
                         model=desc.get("model"), weights=desc.get("weights"))
    seconds = time.perf_counter() - t0
    eval_pass = {
        "ms_per_image": 1e3 * sum(batch_seconds) / max(sum(batch_images), 1),
        "median_batch_ms_per_image": 1e3 * statistics.median(t / k for t, k in zip(batch_seconds, batch_images)),
        "batch_size": batch_size,
        "batches": len(batch_seconds),
        "seconds": seconds,
    }
    timed_stats: dict[str, Any] | None = None
    if timing_repeats > 0:
        crops = torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(0))
        one = crops[:1].clone()
        with torch.no_grad():
            tb = time_call(lambda: predictor(crops), warmup=2, repeats=timing_repeats)
            t1 = time_call(lambda: predictor(one), warmup=3, repeats=2 * timing_repeats)
        timed_stats = {"batch_B": {**tb, "batch_size": B, "ms_per_image": tb["median_ms"] / B},
                       "batch_1": {**t1, "batch_size": 1, "ms_per_image": t1["median_ms"]}}
    return {
        "label": label,
        **desc,
        "nme_bins": res["nme_bins"],
        "n_bins": res["n_bins"],
        "bin_labels": res["bin_labels"],
        "nme_mean_bins": res["nme_mean_bins"],
        "nme_mean_available_bins": mean_of_available_bins(res["nme_bins"]),
        "nme_all": res["nme_all"],
        "auc_7": res["auc_7"],
        "n": res["n"],
        "ced": {"thresholds_percent": _round(res["ced"]["thresholds_percent"], 2),
                "fraction": _round(res["ced"]["fraction"], 5)},
        "nme_per_image": _round([r["nme"] for r in res["images"]], 4),
        "warnings": list(res.get("warnings", [])),
        "speed": {
            "inference_ms_per_image": (
                timed_stats["batch_B"]["ms_per_image"] if timed_stats else eval_pass["ms_per_image"]
            ),
            "latency_ms_batch_1": timed_stats["batch_1"]["median_ms"] if timed_stats else None,
            "timed": timed_stats,
            "eval_pass": eval_pass,
            "torch_threads": torch.get_num_threads(),
            "load_average_1min": {"before": load_before, "after": load_average_1min()},
            "label": SPEED_LABEL,
        },
    }


# --------------------------------------------------------------------------------------------- references
def published_references() -> dict[str, dict[str, Any]]:
    """The published mean-of-bins numbers drawn on the plot, with citations; marked as not ours."""
    from mlanet.eval.aflw2000 import REFERENCES

    numbers = REFERENCES["published_mean_of_bins"]
    return {
        name: {
            "nme_mean_bins": float(numbers[name]),
            "citation": citation,
            "legend": fmt.format(value=float(numbers[name])),
            "published": True,
            "measured_here": False,
            "data": "full AFLW2000-3D (all 2,000 images)",
            "protocol": REFERENCES["label"],
        }
        for name, (fmt, citation) in PUBLISHED.items()
    }


# --------------------------------------------------------------------------------------------- plot
def _mean_text(entry: dict[str, Any]) -> str:
    if entry["nme_mean_bins"] is not None:
        return f"mean of bins {entry['nme_mean_bins']:.2f}%"
    k = sum(1 for b in entry["nme_bins"] if b is not None)
    return f"mean of bins n/a (empty yaw bin; {k} non-empty bin(s): {entry['nme_mean_available_bins']:.2f}%)"


def plot_accuracy(
    entries: list[dict[str, Any]],
    path: str | os.PathLike[str],
    references: dict[str, dict[str, Any]],
    data_desc: str,
    max_percent: float | None = None,
) -> Path:
    """CED curves of ``entries`` (record entries) on one axes, the published references as dashed lines.

    Args:
        entries: per model ``label``, ``nme_per_image`` (percent), ``nme_mean_bins``, ``auc_7``, ``n``.
        path: output PNG (written atomically).
        references: :func:`published_references`.
        data_desc: what our curves were measured on, for the title ("ours: <folder>, N images").
        max_percent: x-axis limit; ``None`` = 10 %, widened (in steps of 5, at most 100) to the
            worst curve's 90th percentile so an untrained model's curve is visible.

    Raises:
        MissingExtraError: matplotlib is not installed.
    """
    import numpy as np

    from mlanet.eval.metrics import MissingExtraError, ced_axis_limit, ced_curve

    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingExtraError(
            f"the CED plot needs matplotlib ({exc}); install the extra: pip install -e '.[train]'"
        ) from None
    from mlanet.fileutil import save_figure_atomic

    if not entries:
        raise ValueError("plot_accuracy needs at least one model")
    if max_percent is None:
        max_percent = ced_axis_limit(np.asarray(e["nme_per_image"], dtype=np.float64) / 100.0 for e in entries)
    if not max_percent > 0:
        raise ValueError(f"max_percent must be > 0, got {max_percent}")
    n_legend = len(entries) + len(references)
    fig = Figure(figsize=(9.0, 5.2 + 0.22 * n_legend), dpi=110)
    FigureCanvasAgg(fig)  # the Agg canvas, without touching pyplot's global backend
    ax = fig.add_subplot(1, 1, 1)
    grid = np.linspace(0.0, max_percent, 2001)
    for k, entry in enumerate(entries):
        e = np.asarray(entry["nme_per_image"], dtype=np.float64) / 100.0
        n = e.size
        # later curves thinner, so two identical curves (e.g. a checkpoint and its ONNX export) both show
        ax.plot(grid, ced_curve(e, grid), lw=max(1.0, 3.6 - 1.0 * k), zorder=3 + k,
                label=f"{entry['label']}: {_mean_text(entry)}, AUC@7% {entry['auc_7']:.3f}, n={n}")
    styles = [("black", "--"), ("tab:gray", "--"), ("tab:brown", "--"), ("tab:olive", "--")]
    for k, ref in enumerate(references.values()):
        colour, ls = styles[k % len(styles)]
        v = ref["nme_mean_bins"]
        ax.axvline(v, color=colour, ls=ls, lw=1.2, label=ref["legend"])
        ax.plot([v], [1.0], marker="v", color=colour, ms=7, clip_on=False)
    if references:
        right = max(ref["nme_mean_bins"] for ref in references.values())
        ax.annotate("published (single numbers,\nfull AFLW2000-3D), not curves", xy=(right, 0.93),
                    xytext=(6, 0), textcoords="offset points", fontsize=7.5, color="0.25", va="center")
    ax.set_xlim(0.0, max_percent)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("NME (%)  [68 points, normalised by sqrt(w·h) of the ground-truth box]")
    ax.set_ylabel("fraction of images with NME ≤ x")
    ax.set_title(
        f"AFLW2000-3D cumulative error distribution (ground-truth crops)\n"
        f"curves = ours: {data_desc}   |   dashed = published, full AFLW2000-3D (2,000 images)",
        fontsize=10,
    )
    ax.grid(True, alpha=0.3)
    # below the axes: inside it would hide the curves of weak models (lower right) or good ones (upper left)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.11), fontsize=8, ncol=1, frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure_atomic(fig, path)
    return path


# --------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> Path:
    """Evaluate every model, write ``accuracy.json`` and ``accuracy_ced.png``; returns the record's path."""
    from mlanet.errors import MLANetError
    from mlanet.eval.aflw2000 import DEV_SPLIT_NOTE, PROTOCOL_STANDARD, REFERENCES, AFLW2000Eval
    from mlanet.eval.metrics import NME_ALL_LABEL, NME_MEAN_BINS_LABEL, MissingExtraError

    from mlanet.benchmarks.record import record_dir, write_record

    t_start = time.perf_counter()
    data = getattr(args, "data", None) or default_data_dir()
    if data is None:
        raise MLANetError("--data DIR is required (no shared AFLW2000-3D dev split found; set MLANET_SHARED)")
    limit = args.limit if args.limit is not None else (QUICK_LIMIT if getattr(args, "quick", False) else None)
    if limit is not None and limit < 1:
        raise MLANetError(f"--limit must be >= 1, got {limit}")
    if args.batch < 1:
        raise MLANetError(f"--batch must be >= 1, got {args.batch}")
    untrained = list(args.untrained) or ([] if args.weights else [DEFAULT_UNTRAINED])
    specs = model_specs(list(args.weights), untrained, args.labels)

    from mlanet.eval.aflw2000 import NameList

    include = NameList.load(args.list) if getattr(args, "list", None) else None
    bench = AFLW2000Eval(data, include=include)  # fails early, naming the folder or list, before any model is loaded
    n_folder = bench.selection["n_in_folder"]
    if limit is not None:
        bench.samples = bench.samples[:limit]

    from mlanet.morphable.model import MorphableModel

    face_model = MorphableModel.load(args.face_model)
    entries = []
    for spec in specs:
        # labels derived from the model name need it loaded first: evaluate, then fix the label
        entry = evaluate_model(bench, spec, face_model, batch_size=args.batch, seed=args.seed, label=spec.label,
                               timing_repeats=max(0, getattr(args, "timing_repeats", 10)),
                               landmarks=getattr(args, "landmarks", None))
        entries.append(entry)
    for entry, label in zip(entries, _derived_labels(specs)):
        entry["label"] = label

    out_dir = record_dir(Path(args.out).expanduser())
    n = len(bench)
    n_listed = bench.selection["n_selected"]
    listed = f"list {include.spec}: " if include is not None else ""
    subset = listed + (f"first {n} of {n_listed} images by file name" if n < n_listed else f"all {n_listed} images")
    if include is not None:
        subset += f" of the {n_folder} in the folder"
    data_desc = f"{bench.folder.name}" + (f" [{include.spec}]" if include is not None else "") + f", {n} images" + (
        f" (first {n} of {n_listed})" if n < n_listed else "")
    references = published_references()
    plot_path: Path | None = out_dir / PLOT_NAME
    plot_error = None
    try:
        plot_accuracy(entries, plot_path, references, data_desc, max_percent=getattr(args, "max_nme", None))
    except MissingExtraError as exc:
        print(f"warning: CED plot skipped: {exc}", file=sys.stderr)
        plot_path, plot_error = None, str(exc)

    results: dict[str, Any] = {
        "description": "AFLW2000-3D 68-point NME / CED of several models (mlanet eval's code path), one plot",
        "protocol": PROTOCOL_STANDARD,
        "crop": "gt",
        "data": {
            "folder": str(bench.folder),
            "name": bench.folder.name,
            "n_images_in_folder": n_folder,
            "n_images": n,
            "limit": limit,
            "quick": bool(getattr(args, "quick", False)),
            "subset": subset,
            "image_names": [s.name for s in bench.samples],
            "selection": bench.selection,
        },
        "note": DEV_SPLIT_NOTE,
        "face_model": face_model.describe(),
        "labels": {
            "nme_bins": "mean NME (%) per |yaw| bin (bin_labels, degrees); null for an empty bin",
            "nme_mean_bins": NME_MEAN_BINS_LABEL + "; null when a bin is empty",
            "nme_mean_available_bins": NME_MEAN_AVAILABLE_LABEL,
            "nme_all": NME_ALL_LABEL,
            "auc_7": "area under the CED curve from 0 to 7% NME, normalised to [0, 1]",
            "ced": "fraction of images with NME <= thresholds_percent",
            "nme_per_image": "per-image NME (%), in the order of data.image_names",
            "speed": SPEED_LABEL,
        },
        "models": entries,
        "references": {
            "published": references,
            "label": (
                "published numbers, NOT measured by this benchmark: mean-of-bins NME (%) on all 2,000 AFLW2000-3D "
                "images; ours are measured on data.folder (data.n_images images) and are only indicative next to them"
            ),
            "warning": REFERENCES["warning"],
        },
        "plot": PLOT_NAME if plot_path is not None else None,
        "plot_error": plot_error,
        "seconds": time.perf_counter() - t_start,
    }
    path = write_record(RECORD_NAME, results, out_dir=out_dir)
    _print_table(entries, data_desc)
    return path


def _print_table(entries: list[dict[str, Any]], data_desc: str) -> None:
    def fmt(x: float | None, digits: int = 2) -> str:
        return "n/a" if x is None else f"{x:.{digits}f}"

    print(f"AFLW2000-3D, ours: {data_desc} (ground-truth crops); NME in %")
    width = max(12, *(len(e["label"]) for e in entries))
    print(f"  {'model':<{width}}  [0,30]  (30,60]  (60,90]  mean of bins  all images  AUC@7%  ms/image  ms batch 1")
    for e in entries:
        b = e["nme_bins"]
        print(
            f"  {e['label']:<{width}}  {fmt(b[0]):>6}  {fmt(b[1]):>7}  {fmt(b[2]):>7}  {fmt(e['nme_mean_bins']):>12}"
            f"  {fmt(e['nme_all']):>10}  {fmt(e['auc_7'], 3):>6}  {e['speed']['inference_ms_per_image']:>8.1f}"
            f"  {fmt(e['speed']['latency_ms_batch_1'], 1):>10}"
        )
    refs = ", ".join(f"{k} {v['nme_mean_bins']:.2f}" for k, v in published_references().items())
    print(f"  published mean of bins, full AFLW2000-3D (not measured here): {refs}")
