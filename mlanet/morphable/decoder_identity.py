"""What a network's outputs mean: the *decoder identity* of a face model, compared with a tolerance.

A trained network regresses parameters that only make sense with the face model it was trained
for: the mean shape, the identity / expression / albedo bases, the topology and the landmark
definitions, in the parameter layout of that model. Artifacts (checkpoints, ONNX files, engines)
record a :func:`decoder_signature` of those arrays and refuse a face model whose signature
differs (:func:`binding_problems`).

The signature deliberately leaves out what does not change the meaning of the outputs: derived
extras such as the MediaPipe correspondence (a registration whose last bits once depended on the
BLAS kernel), provenance, build dates and the file's whole-content SHA-256. Two files built from
the same upstream release on any CPU, BLAS and thread count therefore match, while another crop
(other shapes), another albedo, an edited basis or other landmark indices do not.

How the comparison works:

* **Index arrays** (``triangles``, ``landmarks68`` and every ``landmarks/*`` definition) are
  compared exactly, through a SHA-256 of their int64 values.
* **Float arrays** (``mean_shape``, ``identity_basis``, ``expression_basis``, ``albedo_mean``,
  ``albedo_basis``, and float landmark definitions) are summarised by their RMS and by
  :data:`N_PROBES` random projections ``p_k = <a, w_k> / sqrt(n)`` with fixed pseudo-random
  +-1 weights ``w_k``. For two arrays ``a``, ``b`` of the same shape, ``E[(p_k(a) - p_k(b))^2] =
  mean((a - b)^2)``, so the RMS of the probe differences estimates the RMS difference of the
  arrays. Arrays match when that estimate, and the difference of their RMS, are below
  :data:`RELATIVE_TOLERANCE` times the array's RMS: rounding noise (float32, about 1e-7
  relative) passes; moving one vertex of the mean shape by 0.2 mm (about 2e-5 relative) does not.
* The expression names (their order is the meaning of the expression coefficients) are compared
  exactly, as are the shapes.
* A landmark definition the artifact's model did not have is allowed (a newer build may add
  definitions without changing what the parameters mean); one it had must be present and equal.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
from typing import Any, Mapping

import numpy as np

from mlanet.errors import AssetError
from mlanet.paths import find_local_ict_assets

#: Version of the signature format; a stored signature of another version is recomputed/refused.
SIGNATURE_VERSION = 1
#: Float arrays of :class:`~mlanet.morphable.data.FaceModelData` that define what parameters mean.
DECODER_FLOAT_ARRAYS = ("mean_shape", "identity_basis", "expression_basis", "albedo_mean", "albedo_basis")
#: Index arrays that define the topology and the 68-point landmark definition.
DECODER_INDEX_ARRAYS = ("triangles", "landmarks68")
#: ``extra`` arrays under this prefix are landmark definitions and part of the decoder identity.
LANDMARK_PREFIX = "landmarks/"
#: Random projections per float array.
N_PROBES = 8
#: Largest accepted relative RMS difference of a float array (see the module docstring).
RELATIVE_TOLERANCE = 1e-5
_BLOCK = 4096
_SEED = 20261203


def _signs(n: int, key: int) -> np.ndarray:
    """(n,) float64 fixed pseudo-random +-1 weights (PCG64: the same on every platform)."""
    rng = np.random.Generator(np.random.PCG64(_SEED + key))
    return rng.integers(0, 2, size=n, dtype=np.int8).astype(np.float64) * 2.0 - 1.0


def _float_summary(a: np.ndarray) -> dict[str, Any]:
    """Shape, RMS and :data:`N_PROBES` normalised random projections of a float array."""
    flat = np.asarray(a, dtype=np.float64).ravel()
    n = flat.size
    rms = math.sqrt(float(np.mean(flat * flat))) if n else 0.0
    # Kronecker-structured +-1 weights w[i] = s[i % B] * t[i // B]: unbiased (E[w_i w_j] = 0 for
    # i != j) and cheap: one (m, B) @ (B,) product per probe.
    m = -(-n // _BLOCK) if n else 0
    padded = np.zeros(m * _BLOCK)
    padded[:n] = flat
    blocks = padded.reshape(m, _BLOCK)
    probes = []
    for k in range(N_PROBES):
        s, t = _signs(_BLOCK, 2 * k), _signs(m, 2 * k + 1)
        probes.append(float(t @ (blocks @ s)) / math.sqrt(max(n, 1)))
    return {"kind": "float", "shape": list(np.shape(a)), "rms": rms, "probes": probes}


def _index_summary(a: np.ndarray) -> dict[str, Any]:
    arr = np.ascontiguousarray(np.asarray(a), dtype=np.int64)
    return {"kind": "index", "shape": list(arr.shape), "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}


def decoder_arrays(data: Any) -> dict[str, np.ndarray]:
    """The arrays of a :class:`~mlanet.morphable.data.FaceModelData` that make up its decoder identity."""
    out = {name: getattr(data, name) for name in DECODER_FLOAT_ARRAYS + DECODER_INDEX_ARRAYS}
    for key in sorted(data.extra):
        if key.startswith(LANDMARK_PREFIX):
            out["extra:" + key] = data.extra[key]
    return out


def decoder_signature(data: Any) -> dict[str, Any]:
    """JSON-serialisable decoder identity of a :class:`~mlanet.morphable.data.FaceModelData`.

    Returns ``{"version", "expression_names", "arrays": {name: summary}}``; float arrays are
    summarised by shape, RMS and random projections, index arrays by shape and SHA-256.
    """
    arrays = {}
    for name, a in decoder_arrays(data).items():
        a = np.asarray(a)
        arrays[name] = _float_summary(a) if a.dtype.kind == "f" else _index_summary(a)
    names = list(data.header["expression_names"])
    return {
        "version": SIGNATURE_VERSION,
        "expression_names_sha256": hashlib.sha256(json.dumps(names).encode("utf-8")).hexdigest(),
        "arrays": arrays,
    }


def _relative_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """Estimated RMS difference of two float arrays relative to the first's RMS (see the module docstring)."""
    pa, pb = np.asarray(a["probes"], dtype=np.float64), np.asarray(b["probes"], dtype=np.float64)
    if pa.shape != pb.shape:
        return math.inf
    scale = max(float(a["rms"]), float(b["rms"]), 1e-30)
    est = math.sqrt(float(np.mean((pa - pb) ** 2)))
    return max(est, abs(float(a["rms"]) - float(b["rms"]))) / scale


def signature_differences(stored: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two :func:`decoder_signature` s (empty when they match)."""
    if stored.get("version") != given.get("version"):
        return [f"decoder signature version {given.get('version')} vs {stored.get('version')}"]
    out = []
    if stored.get("expression_names_sha256") != given.get("expression_names_sha256"):
        out.append("the expression names or their order")
    sa, ga = stored.get("arrays", {}), given.get("arrays", {})
    for name in sorted(set(sa) | set(ga)):
        label = name.removeprefix("extra:")
        if name not in ga:
            out.append(f"{label} (missing from this face model)")
            continue
        if name not in sa:
            if not name.startswith("extra:" + LANDMARK_PREFIX):
                out.append(f"{label} (not in the face model the artifact was made for)")
            continue  # a landmark definition added later does not change what the outputs mean
        a, b = sa[name], ga[name]
        if a.get("shape") != b.get("shape"):
            out.append(f"{label} shape {tuple(b.get('shape', ()))} vs {tuple(a.get('shape', ()))}")
        elif a.get("kind") != b.get("kind"):
            out.append(f"{label} ({b.get('kind')} vs {a.get('kind')} values)")
        elif a.get("kind") == "index":
            if a.get("sha256") != b.get("sha256"):
                out.append(f"{label} (other indices)")
        else:
            rel = _relative_difference(a, b)
            if not rel <= RELATIVE_TOLERANCE:
                out.append(f"{label} (relative difference {rel:.1e}, tolerance {RELATIVE_TOLERANCE:.0e})")
    return out


def build_recipe(header: Mapping[str, Any]) -> dict[str, Any]:
    """How a face-model file was built, for messages that say how to build the right one."""
    source = header.get("source") or {}
    albedo = header.get("albedo_model") or {}
    crop = header.get("crop") or {}
    landmarks = header.get("landmark_file") or {}
    return {
        "kind": source.get("kind"),
        "crop": crop.get("name") if isinstance(crop, Mapping) else None,
        "albedo": albedo.get("id") if isinstance(albedo, Mapping) else None,
        "landmarks": landmarks.get("id") if isinstance(landmarks, Mapping) else None,
        "upstream_commit": source.get("upstream_commit"),
        "source_content_sha256": source.get("content_sha256"),
    }


def _shipped_albedo_id(crop: str) -> str | None:
    """The id of the albedo model ``mlanet assets build --albedo auto`` embeds for ``crop`` (None: none)."""
    try:
        from mlanet.morphable.albedo.file import SHIPPED_ALBEDO, AlbedoModelFile

        path = SHIPPED_ALBEDO.get(crop)
        return AlbedoModelFile.load(path).id if path is not None and path.is_file() else None
    except Exception:  # noqa: BLE001 - a hint must not fail
        return None


def _shipped_landmark_files() -> dict[str, Any]:
    """Landmark-definition files the package ships: id -> path (empty if they cannot be read)."""
    try:
        from mlanet.morphable.landmarks.file import LANDMARKS_V1, LANDMARKS_V2_MANUAL_EYELIDS, LandmarkDefinitionsFile

        return {LandmarkDefinitionsFile.load(p).id: p for p in (LANDMARKS_V1, LANDMARKS_V2_MANUAL_EYELIDS)
                if p.is_file()}
    except Exception:  # noqa: BLE001 - a hint must not fail
        return {}


def _landmarks_flag(recipe: Mapping[str, Any], landmarks_differ: bool) -> tuple[str, str]:
    """The ``--landmarks`` flag of the rebuild command and a note for it ("" when the default file is right)."""
    wanted = recipe.get("landmarks")
    shipped = _shipped_landmark_files()
    if wanted:
        try:
            from mlanet.morphable.landmarks.file import SHIPPED_LANDMARKS

            default = SHIPPED_LANDMARKS.get(recipe.get("crop") or "face")
        except Exception:  # noqa: BLE001 - a hint must not fail
            default = None
        path = shipped.get(wanted)
        if path is not None and default is not None and path == default:
            return "", ""
        if path is not None:
            return f" --landmarks {shlex.quote(str(path))}", ""
        return " --landmarks LANDMARKS_FILE", f" (landmark definitions {wanted})"
    if landmarks_differ:  # an artifact from before the recipe named its landmark file
        old = [p for i, p in shipped.items() if i.endswith("-v1")]
        where = f"; the weights shipped before stage 5b were trained with {old[0]}" if old else ""
        return " --landmarks LANDMARKS_FILE", f" (it was trained with other landmark definitions{where})"
    return "", ""


def rebuild_hint(recipe: Mapping[str, Any] | None, landmarks_differ: bool = False) -> str:
    """How to get the face model described by ``recipe`` (:func:`build_recipe`): a command or a flag.

    ``landmarks_differ``: the binding check found other landmark definitions (used when the recipe, written
    before it recorded the landmark file, cannot name them)."""
    recipe = recipe or {}
    kind = recipe.get("kind")
    if str(kind).startswith("bfm"):
        return ("build it with `mlanet assets build --bfm BFM_model_front.mat` from the Basel Face Model it was "
                "trained for, or pass that file with --face-model")
    if kind != "ict-facekit":
        return "pass the face-model file it was trained for with --face-model"
    crop = recipe.get("crop") or "face"
    albedo = recipe.get("albedo") or ""
    if albedo.startswith("mlanet-albedo-"):
        albedo_flag = " --albedo auto" if albedo == _shipped_albedo_id(crop) else " --albedo ALBEDO_FILE"
    else:
        albedo_flag = " --albedo regional" if albedo else ""
    release = f"ICT-FaceKit release {recipe['upstream_commit']}" if recipe.get("upstream_commit") else "ICT-FaceKit"
    landmarks_flag, landmarks_note = _landmarks_flag(recipe, landmarks_differ)
    found = find_local_ict_assets()
    if found is None:
        command = f"mlanet assets build --ict PATH/TO/FaceXModel.tar.xz --crop {crop}{albedo_flag}{landmarks_flag}"
    else:
        ict, mp = found
        command = (f"mlanet assets build --ict {shlex.quote(str(ict))}"
                   f"{f' --mediapipe {shlex.quote(str(mp))}' if mp else ''} --crop {crop}{albedo_flag}{landmarks_flag}")
    return (
        f"build the face model it was trained for from {release} with `{command}`"
        f"{f' (albedo model {albedo})' if albedo else ''}{landmarks_note}, or pass that file with --face-model"
    )


def binding_problems(stored: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """Why a face model described by ``given`` cannot decode an artifact made for ``stored``.

    Both are face-model descriptions (:meth:`MorphableModel.describe`). The model id must match;
    the decoder signatures must match within tolerance. A description written before decoder
    signatures existed (no ``decoder`` key) can only be matched by its whole-file checksum.
    """
    problems = []
    if stored.get("model_id") != given.get("model_id"):
        problems.append(f"model id {stored.get('model_id')!r}, this one is {given.get('model_id')!r}")
    s_sig, g_sig = stored.get("decoder"), given.get("decoder")
    if s_sig and g_sig:
        diffs = signature_differences(s_sig, g_sig)
        if diffs:
            problems.append("this one has a different " + ", ".join(diffs))
    elif stored.get("content_sha256") and stored.get("content_sha256") != given.get("content_sha256"):
        problems.append(
            f"content checksum {str(stored.get('content_sha256'))[:12]}..., this one is "
            f"{str(given.get('content_sha256'))[:12]}... "
            "(the artifact predates decoder signatures and matches only the very file it was made with; "
            "with that file, `mlanet weights rebind` upgrades it)"
        )
    return problems


def check_binding(source: str, stored: Mapping[str, Any] | None, given: Mapping[str, Any]) -> None:
    """Raise :class:`AssetError` naming ``source`` when ``given`` cannot decode its outputs."""
    stored = stored or {}
    problems = binding_problems(stored, given)
    if problems:
        raise AssetError(
            f"{source}: trained for another face model ({'; '.join(problems)}); "
            f"{rebuild_hint(stored.get('build'), landmarks_differ=any('landmarks/' in p for p in problems))}"
        )
