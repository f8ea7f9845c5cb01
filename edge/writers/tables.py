"""Tabular outputs: the per-frame ARKit blendshape CSV, parameter archives and JSON.

- :class:`ArkitMapping` turns a face model's expression weights into ARKit blendshape weights
  (the ICT model maps 53 of its 55 expressions onto 51 ARKit names: ``browInnerUp`` and
  ``cheekPuff`` each come from a left and a right shape).
- :class:`BlendshapeCsvWriter` writes ``frame,time_s,track_id,<ARKit names...>``, one row per
  face per frame, appended and flushed row by row so an interrupted run leaves a valid CSV of
  the frames done; it resumes by truncating rows from a given frame on and appending.
- :func:`write_params_npz` (atomic, no pickle) and :func:`write_json` (atomic).
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from mlanet.fileutil import write_json_atomic
from mlanet.edge.writers import WriterError, atomic_file, write_bytes_atomic

if TYPE_CHECKING:
    from mlanet.morphable.data import FaceModelData
    from mlanet.morphable.model import MorphableModel

log = logging.getLogger(__name__)

#: The fixed leading columns of the blendshape CSV.
CSV_LEADING_COLUMNS: tuple[str, ...] = ("frame", "time_s", "track_id")


@dataclass(frozen=True)
class ArkitMapping:
    """Model expressions -> ARKit blendshapes.

    Attributes:
        expression_names: (K_exp,) the model's expression names, in basis order.
        names: (A,) ARKit names, unique, in order of first appearance among the expressions.
        matrix: (A, K_exp) float64; ``arkit_weights = matrix @ expression_weights``. A row
            averages the expressions that share the ARKit name (1 where there is just one);
            expressions without an ARKit name have an all-zero column.

    When several expressions share a name (ICT: ``browInnerUp_L`` / ``_R``), the merged
    morph target is the **sum** of their shapes (:meth:`basis`) and its weight the **mean**
    of theirs (:meth:`weights`): exact when the sides move together, the symmetric part of
    the motion otherwise, which is what ARKit's single symmetric shape can express.
    """

    expression_names: tuple[str, ...]
    names: tuple[str, ...]
    matrix: np.ndarray

    @classmethod
    def from_names(cls, expression_names: Sequence[str], arkit_names: Mapping[str, str | None]) -> "ArkitMapping":
        """Build from expression names and a map expression name -> ARKit name or ``None``.

        Expressions missing from the map count as ``None``.
        """
        expression_names = tuple(str(n) for n in expression_names)
        names: list[str] = []
        for e in expression_names:
            a = arkit_names.get(e)
            if a is not None and a not in names:
                names.append(str(a))
        matrix = np.zeros((len(names), len(expression_names)))
        for k, e in enumerate(expression_names):
            a = arkit_names.get(e)
            if a is not None:
                matrix[names.index(a), k] = 1.0
        counts = matrix.sum(axis=1, keepdims=True)
        matrix = matrix / np.maximum(counts, 1.0)
        return cls(expression_names=expression_names, names=tuple(names), matrix=matrix)

    @classmethod
    def from_model(cls, model: MorphableModel | FaceModelData) -> "ArkitMapping":
        """From a ``MorphableModel`` or ``FaceModelData``: its ``expression_names`` and the header's
        ``expression_arkit`` (what ``MorphableModel.arkit_names`` returns; none: no ARKit names)."""
        return cls.from_names(model.expression_names, dict(model.header.get("expression_arkit", {})))

    def weights(self, expression_weights: np.ndarray) -> np.ndarray:
        """ARKit weights (..., A) of expression weights (..., K_exp)."""
        w = np.asarray(expression_weights, dtype=np.float64)
        if w.shape[-1:] != (len(self.expression_names),):
            raise ValueError(f"expression weights must be (..., {len(self.expression_names)}), got {w.shape}")
        return w @ self.matrix.T

    def basis(self, expression_basis: np.ndarray) -> np.ndarray:
        """Merged displacement basis (A, V, 3) of the model's (K_exp, V, 3): sums of shapes sharing a name."""
        b = np.asarray(expression_basis, dtype=np.float64)
        if b.ndim != 3 or b.shape[0] != len(self.expression_names):
            raise ValueError(f"expression basis must be ({len(self.expression_names)}, V, 3), got {b.shape}")
        summing = (self.matrix > 0).astype(np.float64)
        return np.einsum("ak,kvc->avc", summing, b)


def arkit_morph_mesh(face_model: MorphableModel, arkit: ArkitMapping) -> dict[str, Any]:
    """A face model's mean face with ARKit-named morph targets, as :func:`~.gltf.track_glb_bytes` takes it
    (a track's GLB replaces ``neutral_vertices`` with its own identity; the displacements per unit
    weight do not depend on it in a linear face model).

    Args:
        face_model: a ``MorphableModel``.
        arkit: its :class:`ArkitMapping`.

    Returns:
        ``neutral_vertices`` (V, 3) metres (model frame, mean identity, zero expression), ``triangles``,
        ``uv``, ``triangles_uv``, ``expression_basis`` (A, V, 3) metres per unit ARKit weight and
        ``morph_names`` (A,).
    """
    import torch

    K = face_model.layout.expression
    with torch.no_grad():
        zeros_id = torch.zeros(1, face_model.layout.identity)
        base = face_model.shape(zeros_id, torch.zeros(1, K))
        onehot = face_model.shape(zeros_id.expand(K, -1), torch.eye(K)) - base  # (K, V, 3) per unit weight
    return {
        "neutral_vertices": base[0].numpy(),
        "triangles": face_model.triangles.cpu().numpy(),
        "uv": face_model.uv.cpu().numpy(),
        "triangles_uv": face_model.triangles_uv.cpu().numpy(),
        "expression_basis": arkit.basis(onehot.numpy()),
        "morph_names": arkit.names,
    }


def _header_line(names: Sequence[str]) -> str:
    return ",".join((*CSV_LEADING_COLUMNS, *names)) + "\n"


class BlendshapeCsvWriter:
    """Per-frame blendshape weights as CSV: ``frame,time_s,track_id,<names...>``.

    Args:
        path: the ``.csv`` file.
        names: blendshape column names (ARKit names; ``ArkitMapping.names``). Must be unique
            and contain no comma, quote or line break.
        resume_before_frame: ``None`` starts a new file (replacing any existing one). An
            integer ``k`` resumes: the existing file's header must equal this writer's (else
            :class:`WriterError`), rows with ``frame >= k`` and an incomplete last line (hard
            kill) are dropped (the file is rewritten atomically), and new rows are appended. A
            missing file is started anew.
        float_format: ``%`` format of the weights.

    Each :meth:`write` appends one line with a single write call and flushes it, so Ctrl-C or
    a crash leaves a valid CSV of the rows written (a hard kill may at worst cut the last line,
    which resuming removes).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        names: Sequence[str],
        *,
        resume_before_frame: int | None = None,
        float_format: str = "%.6g",
    ) -> None:
        self.path = Path(path)
        self.names = tuple(str(n) for n in names)
        for n in (*CSV_LEADING_COLUMNS, *self.names):
            if not n or any(c in n for c in ',"\r\n'):
                raise ValueError(f"{self.path}: invalid CSV column name {n!r}")
        dupes = sorted({n for n in self.names if self.names.count(n) > 1} | (set(self.names) & set(CSV_LEADING_COLUMNS)))
        if dupes:
            raise ValueError(
                f"{self.path}: duplicate column names {dupes}; merge expressions that share an ARKit name "
                "with ArkitMapping (ICT: browInnerUp_L/_R, cheekPuff_L/_R)"
            )
        self.header = _header_line(self.names)
        self._row_format = "%d,%.6f,%d" + ("," + float_format) * len(self.names) + "\n"
        self.n_rows = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_before_frame is not None and self.path.exists():
            self.n_rows = self.truncate_from(int(resume_before_frame))
        else:
            if resume_before_frame is not None:
                log.info("%s: nothing to resume; starting a new CSV", self.path)
            write_bytes_atomic(self.path, self.header.encode("utf-8"))
        try:
            self._fh: io.TextIOWrapper | None = open(self.path, "a", encoding="utf-8", newline="")
        except OSError as exc:
            raise WriterError(f"{self.path}: cannot open for appending ({exc})") from None

    def truncate_from(self, frame: int) -> int:
        """Drop the rows with ``frame >= frame`` (and an incomplete last line); returns the rows kept.

        Checks the header first (:class:`WriterError` if it differs from this writer's). The
        file is rewritten atomically. Safe to call while the writer is open.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise WriterError(f"{self.path}: cannot read the CSV to resume ({exc})") from None
        lines = text.splitlines(keepends=True)
        if not lines or lines[0] != self.header:
            found = lines[0].rstrip("\r\n") if lines else "(empty file)"
            want = set(self.header.rstrip("\n").split(","))
            have = set(found.split(","))
            if have != want:
                detail = f"missing {sorted(want - have)[:8]}, unexpected {sorted(have - want)[:8]}"
            else:
                detail = "same columns, other order"
            raise WriterError(
                f"{self.path}: existing CSV header differs from this run's ({detail}); "
                "refusing to append. Use another output folder or start without --resume."
            )
        kept = [self.header]
        dropped_partial = False
        for i, line in enumerate(lines[1:], start=2):
            if not line.endswith("\n"):
                dropped_partial = True  # cut by a hard kill
                continue
            head = line.split(",", 1)[0]
            try:
                f = int(head)
            except ValueError:
                raise WriterError(f"{self.path}:{i}: malformed row (frame {head!r}); cannot resume") from None
            if f < frame:
                kept.append(line)
        if dropped_partial:
            log.warning("%s: dropped an incomplete last line", self.path)
        if len(kept) != len(lines):
            fh = getattr(self, "_fh", None)
            if fh is not None:
                fh.flush()
            write_bytes_atomic(self.path, "".join(kept).encode("utf-8"))
            if fh is not None:  # the old handle points at the replaced file
                fh.close()
                self._fh = open(self.path, "a", encoding="utf-8", newline="")
        self.n_rows = len(kept) - 1
        log.info("%s: kept %d rows before frame %d", self.path, self.n_rows, frame)
        return self.n_rows

    def write(self, frame: int, time_s: float, track_id: int, weights: np.ndarray) -> None:
        """Append one row: frame number, time in seconds, track id, weights (A,) in column order."""
        if self._fh is None:
            raise WriterError(f"{self.path}: the CSV writer is closed")
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != (len(self.names),):
            raise ValueError(f"{self.path}: weights must be ({len(self.names)},), got {np.shape(weights)}")
        line = self._row_format % (int(frame), float(time_s), int(track_id), *w.tolist())
        self._fh.write(line)
        self._fh.flush()
        self.n_rows += 1

    def flush(self) -> None:
        """Flush to the OS (every :meth:`write` already does; for symmetry with other writers)."""
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "BlendshapeCsvWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None:
            fh.close()


def read_blendshape_csv(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a blendshape CSV back: ``names`` (A,), ``frame`` (R,) int64, ``time_s`` (R,),
    ``track_id`` (R,) int64, ``weights`` (R, A) float64. Complete lines only."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except (OSError, UnicodeDecodeError) as exc:
        raise WriterError(f"{path}: cannot read ({exc})") from None
    if not lines or not lines[0].startswith(",".join(CSV_LEADING_COLUMNS)):
        raise WriterError(f"{path}: not a blendshape CSV (header must start with {','.join(CSV_LEADING_COLUMNS)})")
    names = lines[0].rstrip("\r\n").split(",")[len(CSV_LEADING_COLUMNS):]
    rows = [ln for ln in lines[1:] if ln.endswith("\n")]
    try:
        table = np.loadtxt(io.StringIO("".join(rows)), delimiter=",", ndmin=2).reshape(len(rows), len(names) + 3)
    except ValueError as exc:
        raise WriterError(f"{path}: malformed rows ({exc})") from None
    return {
        "names": names,
        "frame": table[:, 0].astype(np.int64),
        "time_s": table[:, 1],
        "track_id": table[:, 2].astype(np.int64),
        "weights": table[:, 3:],
    }


def write_params_npz(path: str | os.PathLike[str], /, **arrays: Any) -> Path:
    """Write named arrays to a compressed ``.npz`` atomically (:func:`write_npz_atomic`)."""
    return write_npz_atomic(path, arrays)


def write_npz_atomic(path: str | os.PathLike[str], arrays: Mapping[str, Any], *, compress: bool = True) -> Path:
    """Write named arrays to an ``.npz`` atomically (compressed unless ``compress=False``); object
    arrays are refused (no pickle).

    Read back with ``np.load(path, allow_pickle=False)``.
    """
    path = Path(path)
    clean: dict[str, np.ndarray] = {}
    for name, a in arrays.items():
        arr = np.asarray(a)
        if arr.dtype.hasobject:
            raise ValueError(f"{path}: array {name!r} has dtype object; only plain numeric/string arrays are stored")
        clean[name] = arr
    save = np.savez_compressed if compress else np.savez
    with atomic_file(path, suffix=".npz") as fh:
        save(fh, **clean)  # type: ignore[arg-type]  # the stubs match **kwds to allow_pickle
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike[str], obj: Any, *, allow_nan: bool = True) -> Path:
    """Write ``obj`` as indented JSON atomically (numpy scalars/arrays and paths are converted)."""
    return write_json_atomic(path, _jsonable(obj), allow_nan=allow_nan)
