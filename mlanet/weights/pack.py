"""Turn a training checkpoint into shipped weights: FP16 safetensors with a ``release`` block.

``mlanet weights pack --weights RUN_DIR|FILE --out mlanet/weights/mlanet_mobile.safetensors
[--name mlanet_mobile] [--stage RUN_DIR ...]`` (see :mod:`mlanet.weights.cli`):

* a run folder (or its ``best.json``) packs the checkpoint its ``best.json`` names (the one chosen on the
  AFLW2000-3D dev images), else the newest one (``last.json``); a checkpoint file packs that file;
* the network is written under its canonical registered name (``--name`` to choose it: a
  ``mlanet_mobile_lite`` checkpoint packs as ``mlanet_mobile``), and only if the checkpoint's
  architecture config is exactly the registered one for that name;
* floating-point tensors are stored as float16 (integers, e.g. BatchNorm's ``num_batches_tracked``,
  are kept); loading copies them into the float32 network, so inference is float32 on weights
  rounded to FP16;
* the file must weigh at most :data:`~mlanet.weights.MAX_SHIPPED_BYTES` (10 MB); a bigger one is
  not written.

The ``release`` block records what a user needs to judge the weights: the training runs (config,
steps, whether they finished, the best checkpoint and its dev metrics from ``best.json``), how the
packed checkpoint was chosen, the training stores' manifests (sources, counts, terms as the stores
recorded them), the data and its terms (:func:`default_data_terms`), the commit and the date.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import torch

from mlanet.checkpoint import CheckpointMeta, load_weights, resolve_weights, save_weights
from mlanet.errors import AssetError, MLANetError
from mlanet.fileutil import file_sha256, mkstemp_beside
from mlanet.weights import MAX_SHIPPED_BYTES

RESEARCH_ONLY_NOTICE = (
    "research use only: trained on research-only face images (AFLW, 300-W, MTFL) with labels from a research-only "
    "teacher (3DDFA_V2 weights, Basel Face Model keypoints); see mlanet/weights/MODEL_CARD.md"
)

#: Store sources of the default weights' recipe (``mlanet/train/configs/mobile_lite_s1_real.yaml``): store source
#: name -> (reader module with the ``TERMS`` the store records, description, use).
_STORE_SOURCES = {
    "aflw-crops": ("aflw_crops", "AFLW crops (../shared/data/train/aflw-crops: 18,406 faces, 120 x 120, "
                   "21 manual points + yaw, all poses), store runs/store",
                   "training: 21 manual points, plus the pseudo-labels below"),
    "300w": ("w300", "300-W training sets AFW and HELEN (../shared/data/train/300w: 1,537 faces, 68 manual points), "
             "store runs/store",
             "training: 68 manual points, plus the pseudo-labels below"),
    "mtfl": ("mtfl", "MTFL (../shared/data/train/mtfl: 7,649 faces, 5 manual points; the reader skips the 2,283 "
             "net_7876 faces whose labels are offset), store runs/store",
             "training: 5 manual points, plus the pseudo-labels below"),
    "video-folder": ("video_folder", "frames of the 9 driving_* expression clips of ../shared/data/video/expressions "
                     "(676 frames; the 5 source_* clips and the Obama clip are held out for expression evaluation), "
                     "store runs/store_clips",
                     "training: pseudo-labels only (no manual points; crops placed by the teacher's 68-point box)"),
}


def default_data_terms(face_model: dict[str, Any] | None = None,
                       stores: list[dict[str, Any]] | None = None,
                       albedos: list[str] | None = None) -> list[dict[str, Any]]:
    """The data of the default ``mlanet_mobile`` recipe with its terms.

    The terms strings are the project's own records, verbatim: each store source's as the store manifest
    recorded it (``stores``: :func:`_store_summary` of each store the run read; without them, the readers'
    ``TERMS``), the teacher's :data:`~mlanet.teacher.tddfa_mb05.TERMS` and MediaPipe's as the label cache
    records them, the ImageNet start's :data:`~mlanet.models.efficientnet_lite.PRETRAINED_TERMS`; parts are
    joined with ``"; "``.

    Args:
        face_model: the checkpoint's face-model description; names the albedo model the synthetic faces used.
        stores: summaries of the training stores; their sources replace the default store sources.
        albedos: the albedo models the training stages' face models embedded (``face_model``'s if not given).
    """
    import importlib

    from mlanet.data.labels.labeller import MEDIAPIPE_TERMS
    from mlanet.models.efficientnet_lite import PRETRAINED_PACKAGE, PRETRAINED_PACKAGE_VERSION, PRETRAINED_TERMS
    from mlanet.teacher.tddfa_mb05 import TERMS as TEACHER_TERMS

    def joined(parts: dict[str, str]) -> str:
        return "; ".join(f"{k}: {v}" for k, v in parts.items())

    data: list[dict[str, Any]] = []
    if stores:
        for store in stores:
            for src in store.get("sources", []):
                name = str(src.get("name"))
                _, source, use = _STORE_SOURCES.get(name, ("", f"store source {name} ({src.get('root')})",
                                                           "training"))
                data.append({"source": source, "store_source": name, "store": store.get("dir"), "use": use,
                             "terms": src.get("terms") or "not recorded by the store", "count": src.get("written")})
    else:
        for name, (module, source, use) in _STORE_SOURCES.items():
            terms = importlib.import_module(f"mlanet.data.sources.{module}").TERMS
            data.append({"source": source, "store_source": name, "use": use, "terms": terms})
    data += [
        {"source": "3DDFA_V2 MobileNet x0.5 teacher pseudo-labels (cleardusk/3DDFA_V2 at 1b6c676, weights read from "
                   "../shared/models/3ddfa_v2_mb05): 68 points (AFLW2000-3D's definition) and head pose on every "
                   "store face",
         "use": "training: a 2D landmark term through the aflw2000_68 definition (loss.landmarks_teacher68); "
                "input of the pseudo-3DMM fits; crop placement of the clip frames",
         "terms": joined(TEACHER_TERMS)},
        {"source": "MediaPipe face mesh 468-point pseudo-labels on the store faces where MediaPipe finds the face",
         "use": "training: a 2D landmark term through the mediapipe468 definition (loss.mediapipe)",
         "terms": MEDIAPIPE_TERMS,
         "note": "the points label the research-only images above and are used only with them"},
        {"source": "pseudo-3DMM fits: the face model fitted to each store face's landmarks (mlanet data fit); "
                   "identity and expression coefficients where the fit succeeded",
         "use": "training: identity / expression supervision (loss.fit_shape)",
         "terms": "derived from the images and labels above; they keep those terms (research use only)"},
    ]
    if albedos is None:
        albedo = str(((face_model or {}).get("build") or {}).get("albedo") or "")
        albedos = [albedo] if albedo else []
    synthetic_terms = "ICT-FaceKit (geometry, identity and expression blendshapes): MIT"
    for albedo in albedos:
        synthetic_terms += f"; albedo model {albedo} (embedded in the face model): {_albedo_terms(albedo)}"
    data += [
        {"source": "synthetic faces rendered from the face model (random identity, expression, albedo, pose, light)",
         "use": "training: parameters, vertices and vertex colours supervised directly (data.synthetic)",
         "terms": synthetic_terms},
        {"source": f"ImageNet EfficientNet-Lite0 backbone start: PyPI package {PRETRAINED_PACKAGE} "
                   f"{PRETRAINED_PACKAGE_VERSION} (model.init_imagenet: package)",
         "use": "initialisation of the backbone (step 0)",
         "terms": joined(PRETRAINED_TERMS)},
        {"source": "AFLW2000-3D dev images (../shared/data/aflw2000-3d-dev, 199 images)",
         "use": "validation only: scored at every validation (standard protocol) to choose the checkpoint "
                "(best.json); never a training input",
         "terms": "research use only"},
    ]
    return data


#: Albedo models no longer shipped -> their terms as their headers recorded them, and where they came from.
_RETIRED_ALBEDO_TERMS = {
    "mlanet-albedo-ict-v1": "research use only (AFLW2000-3D) (built from 84 images of the AFLW2000-3D dev split's "
                            "train half, mlanet/data/splits/aflw2000_dev_train.txt; no longer shipped)",
}


def _shipped_albedo_terms() -> dict[str, str]:
    """Albedo model id -> terms, of the albedo files this checkout ships (what ``mlanet assets build`` embeds)."""
    from mlanet.morphable.albedo.file import SHIPPED_ALBEDO_DIR, AlbedoModelFile

    found = {}
    for path in sorted(SHIPPED_ALBEDO_DIR.glob("*.npz")):
        try:
            model = AlbedoModelFile.load(path)
        except Exception:  # noqa: BLE001 - a damaged file is not an albedo model anyone builds with
            continue
        found[model.id] = str(model.header.get("terms"))
    return found


def _albedo_terms(albedo_id: str) -> str:
    """The terms an albedo model's header records: a shipped albedo file with that id, else a retired one."""
    shipped = _shipped_albedo_terms()
    if albedo_id in shipped:
        return shipped[albedo_id]
    return _RETIRED_ALBEDO_TERMS.get(albedo_id, "terms not found (see the face model file's header)")


def unbuildable_albedo(face_model: dict[str, Any] | None) -> str | None:
    """The albedo model id of a checkpoint's face model when this checkout no longer ships it (a face model
    built now with ``mlanet assets build`` would then be refused by the weights), else ``None``."""
    albedo = str(((face_model or {}).get("build") or {}).get("albedo") or "")
    if not albedo.startswith("mlanet-albedo-"):
        return None  # regional albedo or none: nothing shipped to compare with
    return None if albedo in _shipped_albedo_terms() else albedo


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AssetError(f"{path}: unreadable ({exc})") from None
    return value if isinstance(value, dict) else None


def _run_of(checkpoint: Path) -> Path | None:
    """The training run folder a checkpoint file sits in (``<run>/checkpoints/<file>``), if any."""
    parent = checkpoint.resolve().parent
    if parent.name == "checkpoints" and (parent.parent / "config.yaml").is_file():
        return parent.parent
    return None


def choose_checkpoint(weights: str | os.PathLike[str]) -> tuple[Path, dict[str, Any], Path | None]:
    """``(checkpoint file, how it was chosen, its run folder or None)``.

    A run folder gives the checkpoint its ``best.json`` names (the one with the lowest dev NME, chosen on
    the AFLW2000-3D dev images), else the newest one (``last.json``); a run's ``best.json`` or ``last.json``
    gives the checkpoint it names; a checkpoint file gives itself.
    """
    path = Path(weights).expanduser()
    if path.is_file() and path.name in ("best.json", "last.json"):
        return _named_by(path)
    if path.is_dir():
        if (path / "best.json").is_file():
            return _named_by(path / "best.json")
        if not (path / "last.json").is_file():
            raise AssetError(f"{path}: a folder without best.json or last.json; pass a checkpoint file or a "
                             "training run folder")
        src, named, last_run = _named_by(path / "last.json")
        return src, {**named, "by": "last.json (the run has no best.json)"}, last_run
    run = _run_of(path)
    chosen: dict[str, Any] = {"by": "file given", "weights": path.name}
    best = _read_json(run / "best.json") if run is not None else None
    if best is not None:
        chosen["is_best"] = best.get("weights") == path.name
        chosen["best"] = best
    return path, chosen, run


def _named_by(record: Path) -> tuple[Path, dict[str, Any], Path]:
    """The checkpoint a run's ``best.json`` / ``last.json`` names, and the record itself."""
    info = _read_json(record)
    if not info or "weights" not in info:
        raise AssetError(f"{record}: names no checkpoint ('weights')")
    run = record.parent
    src = run / "checkpoints" / str(info["weights"])
    if not src.is_file():
        raise AssetError(f"{record} names {src.name}, which is not in {run / 'checkpoints'}")
    if record.name == "best.json":
        return src, {"by": "best.json", **info}, run
    return src, {"by": "last.json", "step": info.get("step"), "weights": src.name, "metrics": info.get("metrics")}, run


def _stage_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Config, steps, whether it finished, final metrics and best checkpoint of one training run folder."""
    run = Path(run_dir)
    info: dict[str, Any] = {"run": run.name}
    summary = _read_json(run / "summary.json")
    # finished: ran its planned steps; a run stopped on purpose (e.g. to start the next stage) says so in
    # its summary.json's stopped_by
    info["finished"] = summary is not None and summary.get("stopped_by") == "finished"
    if summary is not None:
        info.update({"steps": summary.get("step", -1) + 1, "stopped_by": summary.get("stopped_by"),
                     "minutes": round(float(summary.get("seconds", 0.0)) / 60.0, 1), "val": summary.get("metrics")})
    else:
        last = _read_json(run / "last.json") or {}
        info.update({"steps": int(last.get("step", -1)) + 1, "stopped_by": "not finished when packed (no summary.json)",
                     "val": last.get("metrics")})
    best = _read_json(run / "best.json")
    if best is not None:
        info["best"] = {k: best.get(k) for k in ("metric", "value", "step", "weights", "metrics", "chosen_on")}
    last = _read_json(run / "last.json") or {}
    checkpoint = run / "checkpoints" / str(last.get("weights", ""))
    if last.get("weights") and checkpoint.is_file():  # the face model the run trained with (albedo in its build)
        from mlanet.checkpoint import read_meta

        face = read_meta(checkpoint).face_model or {}
        info["face_model"] = {k: face.get(k) for k in ("model_id", "content_sha256", "build") if k in face}
    config = run / "config.yaml"
    if config.is_file():
        text = config.read_text()
        info["config_yaml"] = text
        planned = _config(text).get("optim", {}).get("steps")
        if planned is not None:
            info["planned_steps"] = int(planned)
    return info


def _config(text: str) -> dict[str, Any]:
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return value if isinstance(value, dict) else {}


def find_stores(run_dir: Path | None, stores: list[str] | None = None) -> list[Path]:
    """The training stores a run read: ``data.store_dir`` and ``data.extra_store_dirs`` of its ``config.yaml``
    (relative paths: to the current folder, else to the repository the run folder sits in, ``<repo>/runs/<run>``);
    stores not found are left out. ``stores``, if given, replaces them (each must be a store)."""
    if stores:
        found = [Path(s).expanduser() for s in stores]
        for path in found:
            if not (path / "manifest.json").is_file():
                raise AssetError(f"{path}: not a training store (no manifest.json; see `mlanet data prepare`)")
        return found
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return []
    data = _config((run_dir / "config.yaml").read_text()).get("data") or {}
    out = []
    for store_dir in [data.get("store_dir"), *(data.get("extra_store_dirs") or [])]:
        if not store_dir:
            continue
        rel = Path(store_dir).expanduser()
        candidates = [rel] if rel.is_absolute() else [Path.cwd() / rel, run_dir.resolve().parent.parent / rel]
        hit = next((c for c in candidates if (c / "manifest.json").is_file()), None)
        if hit is not None:
            out.append(hit)
    return out


def _store_summary(store: Path) -> dict[str, Any]:
    m = _read_json(store / "manifest.json") or {}
    keep = ("name", "root", "terms", "listed", "excluded_aflw2000", "skipped_by_reader", "written", "failed")
    try:
        where = str(Path(os.path.abspath(store)).relative_to(Path.cwd()))
    except ValueError:
        where = str(store)
    return {
        "dir": where,
        "format": m.get("format"),
        "created_utc": m.get("created_utc"),
        "n": m.get("n"),
        "n_ok": m.get("n_ok"),
        "fingerprint": m.get("fingerprint"),
        "content_sha256": m.get("content_sha256"),
        "sources": [{k: s.get(k) for k in keep if k in s} for s in m.get("sources", [])],
        "extras": sorted(m.get("extras") or {}),
        "extras_labeller": m.get("extras_labeller"),
        "aflw2000_guard": m.get("guard"),
    }


def _target_name(meta: CheckpointMeta, name: str | None, src: Path) -> str:
    """The registered name to ship as; the checkpoint's architecture must be exactly its registered config."""
    from mlanet.config import ConfigError, from_dict
    from mlanet.models.mlanet import MLANetConfig
    from mlanet.models.registry import MODELS, canonical_name, list_models

    target = canonical_name(name or meta.model_name)
    if target not in MODELS:
        what = f"--name {name}" if name else f"{src}: its network {meta.model_name!r}"
        raise MLANetError(f"{what} is not a registered network; known: {', '.join(list_models())}")
    try:
        config = from_dict(MLANetConfig, meta.model_config)
    except ConfigError as exc:
        raise AssetError(f"{src}: checkpoint model config is not valid for this MLANet ({exc})") from None
    registered = MODELS[target][0]
    if config != registered:
        have, want = config.to_dict(), registered.to_dict()
        diff = ", ".join(f"{k}={have.get(k)!r} (registered: {want.get(k)!r})"
                         for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k))
        raise AssetError(f"{src}: its architecture is not the registered {target}'s ({diff}); "
                         f"refusing to ship it as {target}")
    return target


def pack_weights(weights: str | os.PathLike[str], out: str | os.PathLike[str],
                 stages: list[str] | None = None, data: list[dict[str, str]] | None = None,
                 notice: str = RESEARCH_ONLY_NOTICE, *, name: str | None = None,
                 stores: list[str] | None = None, stores_from: str | os.PathLike[str] | None = None,
                 reason: str | None = None, max_bytes: int | None = MAX_SHIPPED_BYTES) -> Path:
    """Write ``weights`` (a run folder: its ``best.json`` checkpoint, else its newest; or a checkpoint file) as
    FP16 shipped weights to ``out`` (atomic; nothing is written when a check fails).

    Args:
        weights: a training run folder or a checkpoint file.
        out: the ``.safetensors`` to write.
        stages: training run folders in order, summarised in ``release`` (default: the run the checkpoint
            comes from, if any).
        data: data sources with their use and terms (default :func:`default_data_terms`, with the store
            sources and their terms as the run's store manifests recorded them).
        notice: the one-line terms notice commands print when they use these weights.
        name: the registered name to ship as (default: the checkpoint's, canonical: ``mlanet_mobile_lite`` ->
            ``mlanet_mobile``). The checkpoint's architecture config must be exactly that name's registered one.
        stores: the training store folders (default: the last stage's ``data.store_dir`` and
            ``data.extra_store_dirs``, those found).
        stores_from: instead of ``stores``, a weights file packed earlier whose release block recorded the
            stores (for packing on a machine that no longer has them; the file and its checksum are recorded).
        reason: why this checkpoint was chosen, when not by the run's ``best.json`` (recorded in
            ``release["chosen"]["reason"]``).
        max_bytes: refuse (write nothing) when the file would be bigger; ``None``: no limit.

    Raises:
        AssetError / MLANetError: unreadable run or checkpoint, architecture other than the registered one,
            file over ``max_bytes``.
    """
    src, chosen, run = choose_checkpoint(weights)
    state, meta = load_weights(src)
    target = _target_name(meta, name, src)
    half = {k: (v.to(torch.float16) if v.is_floating_point() else v) for k, v in state.items()}
    if stages is None:
        stages = [str(run)] if run is not None else []
    if stores_from is not None:
        if stores:
            raise MLANetError("give training stores (--store) or a packed file that recorded them (--stores-from), "
                              "not both")
        store_info = recorded_stores(stores_from)
    else:
        store_info = [_store_summary(p) for p in find_stores(Path(stages[-1]) if stages else run, stores)]
    if reason:
        chosen = {**chosen, "reason": reason}
    stage_info = [_stage_summary(s) for s in stages]
    albedos = []  # every albedo model a stage's face model embedded, then the packed checkpoint's
    for face in [st.get("face_model") or {} for st in stage_info] + [meta.face_model or {}]:
        albedo = str((face.get("build") or {}).get("albedo") or "")
        if albedo and albedo not in albedos:
            albedos.append(albedo)
    packed_from: dict[str, Any] = {"file": src.name, "run": run.name if run is not None else None,
                                   "step": meta.extra.get("step"), "sha256": file_sha256(src)}
    earlier = (meta.extra.get("release") or {}).get("packed_from")
    if earlier:  # a packed file packed again (e.g. a candidate packed at the end of its run): keep where it came from
        packed_from["repack_of"] = earlier
        if packed_from["run"] is None:
            packed_from["run"] = earlier.get("run")
    release: dict[str, Any] = {
        "model": target,
        "packed_from": packed_from,
        "chosen": chosen,
        "packed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "dtype": "float16",
        "stages": stage_info,
        "stores": store_info,
        "data": data if data is not None else default_data_terms(meta.face_model, store_info, albedos),
        "notice": notice,
        "model_card": "mlanet/weights/MODEL_CARD.md",
    }
    if meta.model_name != target:
        release["trained_as"] = meta.model_name
    extra = {k: v for k, v in meta.extra.items() if k != "release"}
    extra["release"] = release
    new_meta = CheckpointMeta(target, meta.model_config, meta.layout, meta.preprocess, meta.face_model, extra)
    out = Path(out)
    fd, tmp = mkstemp_beside(out, suffix=".safetensors")  # the size is checked before the file takes its name
    os.close(fd)
    try:
        size = save_weights(tmp, half, new_meta).stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise MLANetError(f"{out}: the packed weights would be {size / 1e6:.2f} MB, over the "
                              f"{max_bytes / 1e6:g} MB limit for shipped weights; nothing written")
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def recorded_stores(packed: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The training-store summaries a packed weights file's release block recorded, each marked with the
    file they were read from (name and SHA-256). Raises :class:`AssetError` when it recorded none."""
    path = Path(packed).expanduser()
    if not path.is_file():
        raise AssetError(f"{path}: no such weights file (--stores-from)")
    stores = (release_info(path) or {}).get("stores")
    if not stores:
        raise AssetError(f"{path}: its release block records no training stores (--stores-from)")
    source = {"file": path.name, "sha256": file_sha256(path)}
    return [{**store, "recorded_by": source} for store in stores]


def release_info(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``release`` block of shipped weights (``None`` for an ordinary checkpoint)."""
    from mlanet.checkpoint import read_meta

    return read_meta(path).extra.get("release")


def rebind_weights(weights: str | os.PathLike[str], face_model: str | os.PathLike[str],
                   out: str | os.PathLike[str]) -> Path:
    """Record the decoder signature and tensor checksum in a checkpoint written before they existed.

    Older checkpoints name their face model only by the whole file's SHA-256, which changes with
    derived extras (the MediaPipe correspondence) from machine to machine. Given the very file the
    checkpoint was made with (its content checksum must match the recorded one), this writes the
    same tensors to ``out`` with that model's :meth:`~mlanet.morphable.model.MorphableModel.describe`
    (decoder signature, build recipe) and a tensor checksum; the ``extra`` block is kept and gets a
    ``rebound`` entry. A checkpoint that already has a decoder signature is checked against
    ``face_model`` and rewritten with a tensor checksum.

    Raises:
        AssetError: ``face_model`` is not the file the checkpoint was made with.
    """
    from mlanet.morphable.decoder_identity import check_binding
    from mlanet.morphable.model import MorphableModel

    src = resolve_weights(weights)
    state, meta = load_weights(src)
    face = MorphableModel.load(face_model)
    given = face.describe()
    stored = meta.face_model or {}
    if stored.get("decoder"):
        check_binding(str(src), stored, given)
    elif stored.get("model_id") != given["model_id"] or stored.get("content_sha256") != given["content_sha256"]:
        raise AssetError(
            f"{face_model}: not the face-model file {src} was made with (model {given['model_id']}, checksum "
            f"{str(given['content_sha256'])[:12]}... vs the checkpoint's {stored.get('model_id')}, "
            f"{str(stored.get('content_sha256'))[:12]}...); rebinding needs that very file"
        )
    extra = dict(meta.extra)
    extra["rebound"] = {
        "from_content_sha256": stored.get("content_sha256"),
        "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
    }
    new_meta = CheckpointMeta(meta.model_name, meta.model_config, meta.layout, meta.preprocess, given, extra)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return save_weights(out, state, new_meta)
