"""A training store packed into one small file, to move it to another machine and unpack it there.

A store (:mod:`mlanet.data.store`) keeps its crops as raw uint8 (about 77 KB a face at 160 x 160)
so that training never decodes images; that makes it too large to send to a machine with a
transfer limit (a lent GPU machine takes 64 MiB). :func:`pack_store` writes the rows you choose
as WebP (lossy, ``quality``) at the resolution of the network you will train (``input_size``;
the store's margin is kept), with every label rescaled to that resolution;
:func:`unpack_store` decodes it back into an ordinary store folder that
:class:`~mlanet.data.store.Store` and :class:`~mlanet.data.store_dataset.StoreDataset` read as
usual. The packed store describes itself: its manifest is the source store's, rewritten for
the new size and rows, with a ``packed`` record (source store content hash, codec, quality,
scale, the rows kept and extras dropped).

Packed file (``.npz``, deflated; no pickles)::

    manifest_json (B,) uint8      the rewritten store manifest (UTF-8 JSON)
    image_bytes (T,) uint8        the WebP images, concatenated
    image_offsets (N + 1,) int64  row i is image_bytes[offsets[i]:offsets[i + 1]]
    <label>                       every labels.npz array of the kept rows; point sets (``points_*``
                                  and point-set extras) are in the new store pixels and stored as
                                  float16 (0.0625 px steps below 128 px)

Geometry: a store crop of side S covers the same image square at any resolution, so crop
pixel ``u`` at side S is pixel ``u * S' / S`` at side S' (pixel centres at integer + 0.5 in
both); ``crop_box`` and ``image_hw`` (original-image quantities) are unchanged.

Terms: a packed store carries its sources' terms in its manifest like the store it came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mlanet.errors import AssetError, MLANetError
from mlanet.fileutil import atomic_file, write_json_atomic
from mlanet.data.store import (DEFAULT_SHARD_SIZE, IMAGES_FILE, LABELS_FILE, MANIFEST_FILE, STORE_FORMAT, Store,
                    _labels_sha256, _save_npz_atomic, _sha256_json)

#: Format tag of a packed store.
PACKED_FORMAT = "mlanet-packed-store/1"
#: Default WebP quality (0-100): about 1.6 KB a face at 120 x 120.
DEFAULT_QUALITY = 80


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise MLANetError("packing a store needs OpenCV (pip install opencv-python-headless)") from None
    return cv2


def _point_arrays(manifest: Mapping[str, Any], labels: Mapping[str, np.ndarray]) -> list[str]:
    """Label arrays holding points in store-crop pixels (the ones a resize rescales)."""
    names = [k for k in labels if k.startswith("points_")]
    names += [f"x_{n}" for n, spec in manifest.get("extras", {}).items() if spec.get("point_set")]
    return [n for n in names if n in labels]


def select_rows(store: Store, sources: Sequence[str] = (), require_extra: Mapping[str, str] | None = None) -> np.ndarray:
    """Row indices of ``store`` to pack: rows of ``sources`` (all if empty) that decoded.

    ``require_extra`` maps a source name to an extra its rows must have (e.g. ``{"mtfl": "fit_params"}``
    keeps only the fitted MTFL faces).
    """
    names = [s["name"] for s in store.sources]
    unknown = [s for s in sources if s not in names]
    if unknown:
        raise MLANetError(f"source {unknown[0]!r} is not in the store {store.path} (it has {', '.join(names)})")
    lab = store.labels
    keep = lab["ok"].copy()
    if sources:
        keep &= np.isin(lab["source"], [names.index(s) for s in sources])
    for src, extra in (require_extra or {}).items():
        if src not in names:
            raise MLANetError(f"source {src!r} is not in the store {store.path} (it has {', '.join(names)})")
        if f"has_x_{extra}" not in lab:
            raise MLANetError(f"extra {extra!r} is not in the store {store.path} (it has {', '.join(store.extras)})")
        keep &= ~((lab["source"] == names.index(src)) & ~lab[f"has_x_{extra}"])
    return np.flatnonzero(keep)


def pack_store(store: Store | str | os.PathLike[str], out: str | os.PathLike[str], *, rows: np.ndarray | None = None,
               input_size: int | None = None, quality: int = DEFAULT_QUALITY,
               extra_sources: Mapping[str, Sequence[str]] | None = None, half_extras: Sequence[str] = (),
               progress: bool = True) -> dict[str, Any]:
    """Write ``store``'s ``rows`` (default all decoded rows) to the packed file ``out``; returns its manifest.

    Args:
        input_size: network input side of the packed store (default: the store's); the store
            side scales by ``input_size / store.input_size`` (rounded; the margin is kept).
        quality: WebP quality 1-100.
        extra_sources: ``{extra: [source, ...]}`` keeps an extra only on rows of those sources
            (the others get it as absent), e.g. ``{"mp468": ["300w"]}`` to save space; an empty list
            leaves it out of every row.
        half_extras: float extras (not point sets) to store as float16 (about 3 significant
            digits; e.g. ``fit_params``, whose fitted coefficients change by < 0.01); unpacked as float32.
    """
    cv2 = _cv2()
    st = store if isinstance(store, Store) else Store(store)
    if not 1 <= quality <= 100:
        raise MLANetError(f"quality must be 1..100, got {quality}")
    rows = select_rows(st) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        raise MLANetError(f"{st.path}: no rows to pack")
    new_input = int(input_size or st.input_size)
    new_size = int(round(st.size * new_input / st.input_size))
    k = new_size / st.size
    names = [s["name"] for s in st.sources]
    lab = {n: a[rows] for n, a in st.labels.items()}
    for extra, srcs in (extra_sources or {}).items():
        if f"has_x_{extra}" not in lab:
            raise MLANetError(f"extra {extra!r} is not in the store {st.path} (it has {', '.join(st.extras)})")
        bad = [s for s in srcs if s not in names]
        if bad:
            raise MLANetError(f"source {bad[0]!r} is not in the store {st.path} (it has {', '.join(names)})")
        drop = ~np.isin(lab["source"], [names.index(s) for s in srcs])
        lab[f"has_x_{extra}"] = lab[f"has_x_{extra}"] & ~drop
        a = lab[f"x_{extra}"].copy()
        a[drop] = np.nan if a.dtype.kind == "f" else 0
        lab[f"x_{extra}"] = a
    for n in _point_arrays(st.manifest, lab):
        lab[n] = (lab[n].astype(np.float64) * k).astype(np.float16)
    for extra in half_extras:
        a = lab.get(f"x_{extra}")
        if a is None or a.dtype.kind != "f":
            raise MLANetError(f"extra {extra!r} is not a float extra of the store {st.path}")
        lab[f"x_{extra}"] = a.astype(np.float16)

    chunks: list[bytes] = []
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    t0 = time.perf_counter()
    images = st.images
    interp = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
    for j, r in enumerate(rows):
        im = np.ascontiguousarray(images[r][:, :, ::-1])  # RGB -> BGR for OpenCV
        if new_size != st.size:
            im = cv2.resize(im, (new_size, new_size), interpolation=interp)
        ok, buf = cv2.imencode(".webp", im, [cv2.IMWRITE_WEBP_QUALITY, int(quality)])
        if not ok:
            raise MLANetError(f"{st.path}: WebP encoding failed at row {r}")
        chunks.append(buf.tobytes())
        offsets[j + 1] = offsets[j] + len(chunks[-1])
        if progress and (j + 1) % 2000 == 0:
            print(f"pack: {j + 1}/{len(rows)} images, {offsets[j + 1] / 1e6:.1f} MB", file=sys.stderr)

    m = json.loads(json.dumps(st.manifest))
    src_idx = lab["source"]
    for si, s in enumerate(m["sources"]):
        s["written_before_packing"] = s.get("written")
        s["written"] = int(np.sum(lab["ok"] & (src_idx == si)))
        s["failed"] = int(np.sum(~lab["ok"] & (src_idx == si)))
    m.update({"n": int(len(rows)), "n_ok": int(lab["ok"].sum()), "input_size": new_input, "size": new_size,
              "margin": new_size / new_input})
    m["preprocess"]["input_size"] = new_input
    m["packed"] = {
        "format": PACKED_FORMAT,
        "from_store": str(st.path), "from_content_sha256": st.manifest.get("content_sha256"),
        "from_size": st.size, "from_input_size": st.input_size, "scale": k,
        "codec": "webp", "quality": int(quality), "rows": int(len(rows)),
        "rows_sha256": hashlib.sha256(np.ascontiguousarray(rows)).hexdigest(),
        "extra_sources": {e: list(s) for e, s in (extra_sources or {}).items()},
        "points_dtype": "float16", "half_extras": list(half_extras), "packed_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for key in ("shards", "labels_sha256", "content_sha256", "fingerprint"):
        m.pop(key, None)
    arrays = dict(lab)
    arrays["manifest_json"] = np.frombuffer(json.dumps(m).encode(), dtype=np.uint8)
    arrays["image_bytes"] = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    arrays["image_offsets"] = offsets
    out = Path(out)
    with atomic_file(out) as fh:
        np.savez_compressed(fh, **arrays)
    if progress:
        print(f"pack: {len(rows)} faces {new_size}x{new_size} -> {out} ({out.stat().st_size / 1e6:.1f} MB, "
              f"{time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return m


def read_packed(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(manifest, arrays)`` of a packed store; :class:`AssetError` if it is not one."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise AssetError(f"{path}: not a readable packed store ({exc})") from None
    if "manifest_json" not in arrays or "image_bytes" not in arrays or "image_offsets" not in arrays:
        raise AssetError(f"{path}: not a packed store (no manifest_json / image_bytes / image_offsets)")
    m = json.loads(arrays.pop("manifest_json").tobytes().decode())
    if m.get("packed", {}).get("format") != PACKED_FORMAT:
        raise AssetError(f"{path}: packed format {m.get('packed', {}).get('format')!r}, this MLANet reads {PACKED_FORMAT}")
    return m, arrays


def unpack_store(packed: str | os.PathLike[str], out: str | os.PathLike[str], *, progress: bool = True) -> Store:
    """Decode a packed store into the store folder ``out`` (created; must not hold a finished store)."""
    cv2 = _cv2()
    m, arrays = read_packed(packed)
    out = Path(out)
    if (out / MANIFEST_FILE).exists():
        raise MLANetError(f"{out}: already holds a store; unpack into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    blob, offsets = arrays.pop("image_bytes"), arrays.pop("image_offsets")
    n, S = int(m["n"]), int(m["size"])
    if len(offsets) != n + 1:
        raise AssetError(f"{packed}: {len(offsets) - 1} images for {n} rows")
    labels = {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in arrays.items()}
    tmp = out / (IMAGES_FILE + ".partial")
    try:
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, S, S, 3))
        for i in range(n):
            buf = np.frombuffer(blob[offsets[i]:offsets[i + 1]].tobytes(), dtype=np.uint8)
            im = cv2.imdecode(buf, cv2.IMREAD_COLOR)
            if im is None or im.shape != (S, S, 3):
                raise AssetError(f"{packed}: image {i} does not decode to {S}x{S}x3")
            images[i] = im[:, :, ::-1]
            if progress and (i + 1) % 5000 == 0:
                print(f"unpack: {i + 1}/{n}", file=sys.stderr)
        images.flush()
        shards = [(a, min(a + DEFAULT_SHARD_SIZE, n)) for a in range(0, n, DEFAULT_SHARD_SIZE)]
        hashes = [hashlib.sha256(np.ascontiguousarray(images[a:b])).hexdigest() for a, b in shards]
        del images
        os.replace(tmp, out / IMAGES_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _save_npz_atomic(out / LABELS_FILE, labels)
    m["format"] = STORE_FORMAT
    m["shards"] = [{"start": a, "stop": b, "images_sha256": h} for (a, b), h in zip(shards, hashes)]
    m["labels_sha256"] = _labels_sha256(labels)
    m["files"] = {"images": IMAGES_FILE, "labels": LABELS_FILE}
    m["content_sha256"] = _sha256_json({
        "shards": hashes, "labels": m["labels_sha256"],
        "header": {k: m[k] for k in ("format", "n", "input_size", "size", "preprocess", "definitions")},
    })
    m["packed"]["unpacked_from"] = str(packed)
    write_json_atomic(out / MANIFEST_FILE, m)
    return Store(out)


__all__ = ["DEFAULT_QUALITY", "PACKED_FORMAT", "pack_store", "read_packed", "select_rows", "unpack_store"]
