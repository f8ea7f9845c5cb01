"""Tests of the derived-label cache, labelling run, correspondences and label-quality report (mlanet.data.labels).

Fake labellers and tiny image files in ``tmp_path`` keep the unit tests free of MediaPipe and
the teacher's files; the ``assets`` test labels a few real faces of every source.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mlanet.cli import main as mlanet_main
from mlanet.data.labels import (
    DETECTOR_REFINE,
    IBUG68_LANDMARKS,
    REFERENCE_POINTS,
    WHOLE_IMAGE,
    BoxRule,
    ContentHasher,
    FaceLabels,
    LabelCache,
    LabelEntry,
    annotation_digest,
    box_rule_for,
    correspondence,
    label_quality,
    label_source,
    labeller_id,
    load_labels,
    markdown_table,
)
from mlanet.data.labels.cache import MP_FOUND, MP_NONE, STATUS_LABELLED, STATUS_NO_FACE, STATUS_UNREADABLE
from mlanet.data.labels.correspondence import (
    IBUG68_INNER,
    MEDIAPIPE468,
    MP468_LEFT_BROW,
    MP468_LEFT_EYE,
    MP468_RIGHT_BROW,
    MP468_RIGHT_EYE,
    TDDFA68,
)
from mlanet.data.labels.report import box_size, nme_per_face, point_errors, source_report, summarise
from mlanet.data.landmarks import IBUG68_FLIP_PERMUTATION
from mlanet.data.sources.schema import AFLW21, IBUG68, MTFL5, FaceSample, LandmarkSet

pytestmark = pytest.mark.filterwarnings("ignore:SymbolDatabase.GetPrototype:UserWarning")


# ----------------------------------------------------------------------------- fakes
class FakeReader(list):
    """A source reader: a list of samples with ``source``, ``terms``, ``root``."""

    def __init__(self, samples: list[FaceSample], source: str, root: Path) -> None:
        super().__init__(samples)
        self.source, self.terms, self.root = source, f"fake terms of {source}", root


def _ibug_points(rng: np.random.Generator, cx: float = 40.0, cy: float = 40.0) -> np.ndarray:
    return np.array([cx, cy]) + rng.uniform(-20, 20, size=(68, 2))


def make_reader(tmp_path: Path, n: int = 7, source: str = "fake-src", with_68: bool = True) -> FakeReader:
    rng = np.random.default_rng(0)
    root = tmp_path / source
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        path = root / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, size=(80, 80, 3), dtype=np.uint8)).save(path)
        sets = {"ibug68": LandmarkSet("ibug68", _ibug_points(rng), np.ones(68, bool))} if with_68 else {}
        samples.append(FaceSample(key=f"{source}:img{i:02d}.png", source=source, terms="t", image_path=path,
                                  landmark_sets=sets, yaw_deg=float(i)))
    return FakeReader(samples, source, root)


class FakeLabeller:
    """Teacher points = manual iBUG points + a fixed offset; MediaPipe found on every other face.

    ``interrupt_after``: raise KeyboardInterrupt on that call (1-based).
    """

    def __init__(self, version: int = 1, interrupt_after: int | None = None, offset: float = 1.0) -> None:
        self.version, self.interrupt_after, self.offset = version, interrupt_after, offset
        self.calls = 0

    def identity(self) -> dict[str, Any]:
        return {"name": "fake", "version": self.version, "terms": {"fake": "no terms"}}

    def label(self, image: np.ndarray, sample: FaceSample, rule: BoxRule) -> FaceLabels:
        self.calls += 1
        if self.interrupt_after is not None and self.calls >= self.interrupt_after:
            raise KeyboardInterrupt
        H, W = image.shape[:2]
        ls = sample.landmark_sets.get("ibug68")
        if ls is None:
            return FaceLabels(status=STATUS_NO_FACE, image_hw=(H, W))
        t68 = ls.points.astype(np.float64) + self.offset
        mp = None
        if self.calls % 2:
            mp = np.full((468, 2), 40.0)
        return FaceLabels(status=STATUS_LABELLED, image_hw=(H, W), crop_box=np.array([0.0, 0.0, 80.0]),
                          t68=t68, t68_3d=np.concatenate([t68, np.zeros((68, 1))], axis=1),
                          pose=np.array([0.1, -0.2, 0.3]), mp_status=MP_FOUND if mp is not None else MP_NONE, mp468=mp)


# ----------------------------------------------------------------------------- cache
def _entry(i: int, **kw: Any) -> LabelEntry:
    rng = np.random.default_rng(i)
    base = dict(key=f"s:{i}", content=f"{i:064x}", box_rule="whole-image", annotation="a" * 16,
                status=STATUS_LABELLED, box_from=1, image_hw=(120, 120), crop_box=np.array([0, 0, 120.0]),
                t68=rng.random((68, 2)) * 120, t68_3d=rng.random((68, 3)), pose=rng.random(3),
                mp_status=MP_FOUND, mp468=rng.random((468, 2)) * 120, yaw_deg=float(i), seconds=0.01,
                manual={"aflw21": np.where(rng.random((21, 1)) < 0.2, np.nan, rng.random((21, 2)))})
    base.update(kw)
    return LabelEntry(**base)


def test_cache_round_trip(tmp_path):
    cache = LabelCache(tmp_path / "c")
    entries = [_entry(i) for i in range(5)] + [_entry(5, status=STATUS_NO_FACE, t68=None, t68_3d=None, pose=None,
                                                      crop_box=None, mp_status=MP_NONE, mp468=None, yaw_deg=None)]
    cache.write_shard("src", entries[:4], {"labeller_id": "L1"})
    cache.write_shard("src", entries[4:], {"labeller_id": "L1"})
    cache.write_shard("src", [_entry(9)], {"labeller_id": "OTHER"})
    cache.write_manifest("src", {"terms": "t", "labeller_id": "L1"})
    assert cache.sources() == ["src"]
    table = cache.load("src", "L1")
    assert len(table) == 6 and len(table.shards) == 2
    by_key = {k: i for i, k in enumerate(table["key"].tolist())}
    for e in entries:
        r = by_key[e.key]
        assert table["content"][r] == e.content and table["status"][r] == e.status
        for name in ("t68", "t68_3d", "pose", "mp468", "crop_box"):
            v = getattr(e, name)
            if v is None:
                assert np.isnan(table[name][r]).all()
            else:
                np.testing.assert_allclose(table[name][r], v, rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(table.manual("aflw21")[r], e.manual["aflw21"], rtol=1e-6, equal_nan=True)
    assert np.isnan(table["yaw_deg"][by_key["s:5"]]) and table["yaw_deg"][by_key["s:3"]] == 3.0
    assert table.row(entries[2].content, "whole-image", "a" * 16) == by_key["s:2"]
    assert table.row("nope", "whole-image", "a" * 16) is None
    assert table.counts()["status"] == {"labelled": 5, "no face found": 1}
    assert len(cache.load("src")) == 7  # all labeller ids
    assert len(load_labels(cache, "src")) == 6  # the manifest's labeller id
    assert cache.existing("src", "OTHER") == {_entry(9).lookup}


def test_cache_ignores_bad_shards_and_has_no_pickles(tmp_path, caplog):
    cache = LabelCache(tmp_path)
    path = cache.write_shard("src", [_entry(0)], {"labeller_id": "L"})
    with np.load(path, allow_pickle=False) as z:  # everything loads without pickle
        assert json.loads(str(z["meta"]))["format"] == "mlanet-label-cache"
        assert {k: z[k].dtype.kind for k in z.files}["key"] == "U"
    (path.parent / "shard-broken.npz").write_bytes(b"not a zip")
    assert len(cache.load("src")) == 1
    assert "unreadable label shard" in caplog.text
    with pytest.raises(ValueError):
        cache.write_shard("src", [], {"labeller_id": "L"})
    with pytest.raises(ValueError):
        cache.write_shard("src", [_entry(1)], {})


# ----------------------------------------------------------------------------- keys and runs
def test_box_rules_and_keys(tmp_path):
    reader = make_reader(tmp_path, n=2)
    s = reader[0]
    assert box_rule_for(s) == IBUG68_LANDMARKS  # unknown source with 68 manual points
    assert box_rule_for(FaceSample(key="x:y", source="x", terms="", image_path=s.image_path)) == DETECTOR_REFINE
    for src, rule in (("aflw-crops", WHOLE_IMAGE), ("300w", IBUG68_LANDMARKS), ("mtfl", DETECTOR_REFINE),
                      ("video-folder", DETECTOR_REFINE)):
        assert box_rule_for(FaceSample(key=f"{src}:a", source=src, terms="", image_path=s.image_path)) == rule
    assert len({WHOLE_IMAGE.tag, IBUG68_LANDMARKS.tag, DETECTOR_REFINE.tag}) == 3
    with pytest.raises(ValueError):
        BoxRule("landmarks")
    hasher = ContentHasher()
    import hashlib

    sha = hashlib.sha256(s.image_path.read_bytes()).hexdigest()
    assert hasher(s) == sha
    frame = FaceSample(key="v:a#000005", source="v", terms="", image_path=s.image_path, meta={"frame_index": 5})
    assert hasher(frame) == f"{sha}#000005"
    # the annotation digest follows the manual points and yaw, not the key
    moved = FaceSample(key="other:key", source="x", terms="", image_path=s.image_path, yaw_deg=s.yaw_deg,
                       landmark_sets={"ibug68": LandmarkSet("ibug68", s.landmark_sets["ibug68"].points + 0.01,
                                                            np.ones(68, bool))})
    same = FaceSample(key="other:key", source="x", terms="", image_path=s.image_path, yaw_deg=s.yaw_deg,
                      landmark_sets=dict(s.landmark_sets))
    assert annotation_digest(same) == annotation_digest(s) != annotation_digest(moved)
    assert labeller_id({"name": "a", "version": 1, "terms": "x"}) == labeller_id({"name": "a", "version": 1})
    assert labeller_id({"name": "a", "version": 1}) != labeller_id({"name": "a", "version": 2})


def test_label_source_caches_and_keys(tmp_path):
    reader = make_reader(tmp_path, n=7)
    cache = LabelCache(tmp_path / "cache")
    lab = FakeLabeller()
    st = label_source(reader, cache, lab, shard_size=3, progress=False)
    assert (st.samples, st.computed, st.hits, st.shards_written) == (7, 7, 0, 3)
    assert st.counts["status"] == {"labelled": 7} and st.counts["mediapipe"]["found"] == 4
    manifest = cache.read_manifest("fake-src")
    assert manifest["state"] == "complete" and manifest["terms"] == "fake terms of fake-src"
    assert manifest["labeller"]["terms"] == {"fake": "no terms"} and manifest["labeller_id"] == st.labeller_id
    table = load_labels(cache, "fake-src")
    assert len(table) == 7
    np.testing.assert_allclose(table["t68"][0], reader[0].landmark_sets["ibug68"].points + 1.0, atol=1e-4)
    assert (table["box_rule"] == IBUG68_LANDMARKS.tag).all()

    # second run: everything is a hit
    lab2 = FakeLabeller()
    st2 = label_source(reader, cache, lab2, progress=False)
    assert (st2.computed, st2.hits, lab2.calls) == (0, 7, 0)
    # changed file bytes -> that one face is a miss
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(reader[3].image_path)
    st3 = label_source(reader, cache, FakeLabeller(), progress=False)
    assert (st3.computed, st3.hits) == (1, 6)
    # a new labeller version -> all miss (old shards stay, unused)
    st4 = label_source(reader, cache, FakeLabeller(version=2), progress=False)
    assert (st4.computed, st4.hits) == (7, 0)
    assert len(load_labels(cache, "fake-src")) == 7
    # another crop rule -> all miss
    st5 = label_source(reader, cache, FakeLabeller(version=2), progress=False, rule_for=lambda s: DETECTOR_REFINE)
    assert (st5.computed, st5.hits) == (7, 0)
    # limit
    st6 = label_source(make_reader(tmp_path / "b", n=5), LabelCache(tmp_path / "c2"), FakeLabeller(), limit=2,
                       progress=False)
    assert (st6.samples, st6.computed) == (2, 2)


def test_unreadable_and_unhashable_samples(tmp_path):
    reader = make_reader(tmp_path, n=3)
    reader[1].image_path.write_bytes(b"not an image")
    gone = FaceSample(key="fake-src:gone.png", source="fake-src", terms="t", image_path=tmp_path / "gone.png")
    reader.append(gone)
    st = label_source(reader, LabelCache(tmp_path / "cache"), FakeLabeller(), progress=False)
    assert st.unhashable == 1 and st.computed == 3
    assert st.counts["status"] == {"labelled": 2, "image unreadable": 1}
    table = load_labels(LabelCache(tmp_path / "cache"), "fake-src")
    assert (table["status"] == STATUS_UNREADABLE).sum() == 1


@pytest.mark.parametrize("k", [1, 5, 7])
def test_resume_after_interrupt(tmp_path, k):
    reader = make_reader(tmp_path, n=8)
    cache = LabelCache(tmp_path / "cache")
    with pytest.raises(KeyboardInterrupt):
        label_source(reader, cache, FakeLabeller(interrupt_after=k), shard_size=3, progress=False)
    kept = 3 * ((k - 1) // 3)  # faces in shards finished before the k-th call
    d = cache.source_dir("fake-src")
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]  # the in-flight shard left nothing
    assert len(cache.shard_paths("fake-src")) == kept // 3
    assert cache.read_manifest("fake-src")["state"] == "interrupted"
    lab = FakeLabeller()
    st = label_source(reader, cache, lab, shard_size=3, progress=False)
    assert (st.hits, st.computed, lab.calls) == (kept, 8 - kept, 8 - kept)
    table = load_labels(cache, "fake-src")
    assert len(table) == 8 and len(set(table["content"].tolist())) == 8


def test_stale_temporaries_are_removed(tmp_path):
    reader = make_reader(tmp_path, n=2)
    cache = LabelCache(tmp_path / "cache")
    d = cache.source_dir("fake-src")
    d.mkdir(parents=True)
    (d / ".shard-abc.npz.x.tmp").write_bytes(b"half")
    label_source(reader, cache, FakeLabeller(), progress=False)
    assert not list(d.glob(".*.tmp"))


# ----------------------------------------------------------------------------- correspondences
def test_correspondence_constants():
    names = [p.name for p in REFERENCE_POINTS]
    assert len(names) == len(set(names)) == 19
    for p in REFERENCE_POINTS:
        assert all(0 <= i < 68 for i in p.ibug68) and all(0 <= i < 468 for i in p.mp468)
    aflw = sorted(p.aflw21 for p in REFERENCE_POINTS if p.aflw21 is not None)
    assert aflw == [i for i in range(21) if i not in (12, 16)]  # all but the ear lobes
    assert sorted(p.mtfl5 for p in REFERENCE_POINTS if p.mtfl5 is not None) == [0, 1, 2, 3, 4]
    # left/right: every r_ point has an l_ twin whose iBUG, AFLW and MTFL indices are the mirror images
    by_name = {p.name: p for p in REFERENCE_POINTS}
    for p in REFERENCE_POINTS:
        twin = by_name[p.name.replace("r_", "l_", 1)] if p.name.startswith("r_") else (
            by_name[p.name.replace("l_", "r_", 1)] if p.name.startswith("l_") else p)
        assert sorted(IBUG68_FLIP_PERMUTATION[i] for i in p.ibug68) == sorted(twin.ibug68)
        if p.aflw21 is not None:
            assert AFLW21.flip_permutation[p.aflw21] == twin.aflw21
        if p.mtfl5 is not None:
            assert MTFL5.flip_permutation[p.mtfl5] == twin.mtfl5
        assert len(p.mp468) == len(twin.mp468)
        # image side on a frontal face: AFLW / MTFL "left" is the subject's right
        if p.aflw21 is not None:
            assert AFLW21.frontal_side[p.aflw21] == IBUG68.frontal_side[p.ibug68[0]]
    assert len(MP468_RIGHT_EYE) == len(MP468_LEFT_EYE) == 16 and not set(MP468_RIGHT_EYE) & set(MP468_LEFT_EYE)
    assert all(len(c) == 5 for c in (*MP468_RIGHT_BROW, *MP468_LEFT_BROW))
    assert IBUG68_INNER == tuple(range(17, 68))

    c = correspondence("aflw21", TDDFA68)
    assert len(c) == 19 and c.manual_groups[7] == (7,) and c.groups[7] == (36, 37, 38, 39, 40, 41)
    c = correspondence("mtfl5", MEDIAPIPE468)
    assert [g[0] for g in c.manual_groups] == [0, 1, 2, 3, 4]
    assert len(correspondence("ibug68", TDDFA68, "all68")) == 68
    assert len(correspondence("ibug68", TDDFA68, "inner51")) == 51
    assert len(correspondence("ibug68", MEDIAPIPE468)) == 19
    for bad in (("aflw21", "nope"), ("nope", TDDFA68)):
        with pytest.raises(ValueError):
            correspondence(*bad)
    with pytest.raises(ValueError):
        correspondence("aflw21", TDDFA68, "all68")
    # gather averages groups
    pts = np.zeros((1, 68, 2))
    pts[0, 36:42] = np.arange(12).reshape(6, 2)
    c = correspondence("mtfl5", TDDFA68)
    np.testing.assert_allclose(c.gather(pts)[0, 0], [5.0, 6.0])


# ----------------------------------------------------------------------------- report math
def test_report_math_known_values():
    manual = np.array([[[0, 0], [10, 0], [10, 40], [0, 40]]], dtype=float)  # w 10, h 40 -> sqrt(wh) 20
    assert box_size(manual)[0] == pytest.approx(20.0)
    pred = manual + [3.0, 4.0]  # every point 5 px off
    assert nme_per_face(pred, manual, box_size(manual))[0] == pytest.approx(0.25)
    manual_nan = manual.copy()
    manual_nan[0, 0] = np.nan  # invisible point is ignored
    pred2 = pred.copy()
    pred2[0, 0] += 100
    assert nme_per_face(pred2, manual_nan, np.array([20.0]))[0] == pytest.approx(0.25)
    assert np.isnan(nme_per_face(pred, np.full_like(manual, np.nan), np.array([20.0]))[0])
    np.testing.assert_allclose(point_errors(pred, manual, np.array([10.0])), [[0.5] * 4])
    s = summarise(np.array([0.01, 0.02, 0.03, np.nan]))
    assert s["n_faces"] == 3 and s["nme_mean_pct"] == pytest.approx(2.0) and s["nme_median_pct"] == pytest.approx(2.0)
    assert summarise(np.zeros(0))["nme_mean_pct"] is None


def _write_synthetic_source(cache: LabelCache, source: str, defn: str, entries: list[LabelEntry]) -> None:
    cache.write_shard(source, entries, {"labeller_id": "L"})
    cache.write_manifest(source, {"terms": f"{source} terms", "labeller_id": "L", "state": "complete"})


def test_report_on_synthetic_cache(tmp_path):
    cache = LabelCache(tmp_path)
    rng = np.random.default_rng(5)
    # 300-W-like: teacher = manual + (3, 4) on every point; box 100 x 100 -> NME 5 %
    entries = []
    for i in range(4):
        man = rng.uniform(0, 100, size=(68, 2))
        man[0], man[1] = (0, 0), (100, 100)
        mp = rng.uniform(0, 100, size=(468, 2))
        entries.append(_entry(i, manual={"ibug68": man}, t68=man + [3.0, 4.0], mp468=mp,
                              mp_status=MP_FOUND if i < 3 else MP_NONE, yaw_deg=None))
    _write_synthetic_source(cache, "w", "ibug68", entries)
    entries_w = entries
    # MTFL-like: eyes 50 px apart; teacher eye centres 5 px off -> 10 % on the eyes, 0 elsewhere
    entries = []
    for i in range(3):
        t68 = rng.uniform(0, 100, size=(68, 2))
        c = correspondence("mtfl5", TDDFA68)
        man = c.gather(t68[None])[0]
        man[1] = man[0] + [50.0, 0.0]
        t68[36:42] += man[0] - t68[36:42].mean(axis=0) + [0.0, 5.0]  # right-eye centre 5 px below manual
        t68[42:48] += man[1] - t68[42:48].mean(axis=0) + [0.0, 5.0]
        t68[[30, 48, 54]] = man[2:]
        entries.append(_entry(10 + i, manual={"mtfl5": man}, t68=t68, mp_status=MP_NONE, mp468=None, yaw_deg=None))
    _write_synthetic_source(cache, "m", "mtfl5", entries)
    report = label_quality(cache)
    w = {(c["predicted"], c["points"], c["subset"]): c for c in report["sources"]["w"]["comparisons"]}
    assert w[(TDDFA68, 68, "teacher labelled")]["nme_mean_pct"] == pytest.approx(5.0)
    assert w[(TDDFA68, 51, "teacher labelled")]["nme_mean_pct"] == pytest.approx(5.0)
    # MediaPipe: recomputed here point by point from the constants
    expected = []
    for e in entries_w[:3]:
        errs = [np.linalg.norm(e.mp468[list(p.mp468)].mean(axis=0) - e.manual["ibug68"][list(p.ibug68)].mean(axis=0))
                for p in REFERENCE_POINTS]
        expected.append(np.mean(errs) / 100.0)
    assert w[(MEDIAPIPE468, 19, "mediapipe found")]["nme_mean_pct"] == pytest.approx(100 * np.mean(expected), abs=2e-3)
    assert w[(MEDIAPIPE468, 19, "mediapipe found")]["n_faces"] == 3
    assert w[(TDDFA68, 19, "both labelled")]["n_faces"] == 3
    m = {(c["predicted"], c["subset"]): c for c in report["sources"]["m"]["comparisons"]}
    assert m[(TDDFA68, "teacher labelled")]["nme_mean_pct"] == pytest.approx(100 * (2 * 0.1) / 5, rel=1e-4)
    assert m[(TDDFA68, "teacher labelled")]["per_point_mean_pct"]["r_eye_centre"] == pytest.approx(10.0, abs=0.01)
    assert m[(MEDIAPIPE468, "mediapipe found")]["n_faces"] == 0
    assert report["sources"]["w"]["terms"] == "w terms"
    json.dumps(report, allow_nan=False)
    md = markdown_table(report)
    assert "| w | tddfa68 | ibug68 | 68 | 4 | teacher labelled | 5.00 |" in md


def test_report_yaw_bins_and_agreement(tmp_path):
    cache = LabelCache(tmp_path)
    entries = [_entry(i, yaw_deg=float(y)) for i, y in enumerate((10, -45, 70, 100, 20))]
    _write_synthetic_source(cache, "a", "aflw21", entries)
    rep = source_report(load_labels(cache, "a"))
    c = rep["comparisons"][0]
    assert {k: v["n_faces"] for k, v in c["by_abs_yaw_deg"].items()} == {"0-30": 2, "30-60": 1, "60-90": 1,
                                                                           "90-180": 1}
    assert "teacher_box_over_normaliser" in rep
    # no manual points -> teacher vs MediaPipe agreement
    entries = [_entry(20 + i, manual={}) for i in range(3)]
    _write_synthetic_source(cache, "v", "", entries)
    rep = source_report(load_labels(cache, "v"))
    assert rep["comparisons"][0]["predicted"] == f"{TDDFA68} vs {MEDIAPIPE468}"
    assert rep["comparisons"][0]["n_faces"] == 3


# ----------------------------------------------------------------------------- CLI
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    cases = [
        ["data", "label", "--source", "300w", "--cache", str(tmp_path / "c")],
        ["data", "label", "--source", "nosuch=" + str(tmp_path), "--cache", str(tmp_path / "c")],
        ["data", "label", "--source", "300w=" + str(tmp_path / "missing"), "--cache", str(tmp_path / "c"),
         "--teacher", str(tmp_path)],
        ["data", "label", "--source", "300w=a", "--source", "300w=b", "--cache", str(tmp_path / "c")],
        ["data", "label-report", "--cache", str(tmp_path / "missing"), "--json", str(tmp_path / "r.json")],
        ["data", "label-report", "--cache", str(tmp_path), "--json", str(tmp_path / "r.json")],
        ["data", "eye-report", "--labels", str(tmp_path / "missing"), "--json", str(tmp_path / "e.json")],
        ["data", "eye-report", "--labels", str(tmp_path), "--json", str(tmp_path / "e.json")],
    ]
    (tmp_path / "file").write_text("x")
    cases.append(["data", "label", "--source", "300w=a", "--cache", str(tmp_path / "file")])
    for argv in cases:
        assert mlanet_main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), (argv, err)


def test_cli_report_writes_json_and_markdown(tmp_path, capsys):
    cache = LabelCache(tmp_path / "cache")
    _write_synthetic_source(cache, "a", "aflw21", [_entry(i) for i in range(3)])
    out = tmp_path / "out" / "q.json"
    assert mlanet_main(["data", "label-report", "--cache", str(cache.root), "--json", str(out),
                        "--markdown", str(tmp_path / "out" / "q.md")]) == 0
    rep = json.loads(out.read_text())
    assert rep["format"] == "mlanet-label-quality" and "a" in rep["sources"]
    assert (tmp_path / "out" / "q.md").read_text().startswith("# Label quality")


def test_labels_package_does_not_import_mediapipe_at_module_level():
    import mlanet.data.labels

    for path in Path(mlanet.data.labels.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                continue
            for sub in ast.walk(node):
                names = [a.name for a in sub.names] if isinstance(sub, ast.Import) else (
                    [sub.module or ""] if isinstance(sub, ast.ImportFrom) else [])
                assert not any(n.split(".")[0] in ("mediapipe", "cv2", "torch") for n in names), (path, names)


# ----------------------------------------------------------------------------- real data
@pytest.mark.assets
def test_real_sources_tiny_run(shared, tmp_path, capsys):
    pytest.importorskip("mediapipe")
    pytest.importorskip("av")
    train, video = shared / "data" / "train", shared / "data" / "video" / "expressions"
    teacher = shared / "models" / "3ddfa_v2_mb05"
    if not (train.is_dir() and video.is_dir() and teacher.is_dir()):
        pytest.skip("training sources, expression clips or the teacher folder missing")
    cache = tmp_path / "labels"
    argv = ["data", "label", "--cache", str(cache), "--limit", "3", "--teacher", str(teacher), "--no-progress",
            "--source", f"aflw-crops={train / 'aflw-crops'}", "--source", f"300w={train / '300w'}",
            "--source", f"mtfl={train / 'mtfl'}", "--source", f"video-folder={video}"]
    assert mlanet_main(argv) == 0
    out = capsys.readouterr().out
    assert "300w: 3 faces, 3 labelled" in out
    lc = LabelCache(cache)
    assert lc.sources() == ["300w", "aflw-crops", "mtfl", "video-folder"]
    for src in lc.sources():
        table = load_labels(lc, src)
        assert len(table) == 3
        ok = table["status"] == STATUS_LABELLED
        assert ok.sum() >= 2, src
        assert np.isfinite(table["t68"][ok]).all() and np.isfinite(table["pose"][ok]).all()
        H, W = table["image_hw"][0]
        centre = table["t68"][ok].mean(axis=1)
        assert ((centre > 0) & (centre < [W, H])).all(), src  # the face lies in the image
        assert "research" in lc.read_manifest(src)["terms"]
    assert (load_labels(lc, "video-folder")["content"][1]).endswith("#000005")
    # rerun: everything cached
    assert mlanet_main(argv) == 0
    assert "0 computed" in capsys.readouterr().out
    report = label_quality(lc)
    w = report["sources"]["300w"]["comparisons"][1]
    assert w["points"] == 51 and w["nme_mean_pct"] < 6.0
    a = report["sources"]["aflw-crops"]["comparisons"][0]
    assert a["manual"] == "aflw21" and a["nme_mean_pct"] < 8.0


@pytest.mark.assets
def test_mediapipe_groups_mirror_on_the_canonical_mesh(shared):
    """The MediaPipe groups of twin reference points are mirror images on the canonical mesh."""
    from mlanet.data.mediapipe_labels import mediapipe468_flip_permutation

    obj = shared / "assets" / "mediapipe-canonical" / "canonical_face_model.obj"
    perm = mediapipe468_flip_permutation(obj)
    by_name = {p.name: p for p in REFERENCE_POINTS}
    for p in REFERENCE_POINTS:
        if p.name.startswith("r_"):
            twin = by_name["l_" + p.name[2:]]
            assert sorted(int(perm[i]) for i in p.mp468) == sorted(twin.mp468), p.name
        elif not p.name.startswith("l_"):
            assert sorted(int(perm[i]) for i in p.mp468) == sorted(p.mp468), p.name
    assert sorted(int(perm[i]) for i in MP468_RIGHT_EYE) == sorted(MP468_LEFT_EYE)
    for a, b in zip(MP468_RIGHT_BROW, MP468_LEFT_BROW):
        assert [int(perm[i]) for i in a] == list(b)


def test_eye_report_cli_writes_the_report_with_its_environment(tmp_path, ict_model_file, capsys):
    """`mlanet data eye-report`: per-source apertures (JSON + Markdown), and the environment block every record
    carries (commit, versions, command), so the record says what made it."""
    cache = LabelCache(tmp_path / "labels")
    _write_synthetic_source(cache, "a", "aflw21", [_entry(i, yaw_deg=5.0) for i in range(4)])
    out = tmp_path / "eyes.json"
    assert mlanet_main(["data", "eye-report", "--labels", str(tmp_path / "labels"), "--json", str(out),
                        "--face-model", str(ict_model_file)]) == 0
    rep = json.loads(out.read_text())
    assert "a" in rep["sources"] and out.with_suffix(".md").is_file()
    env = rep["environment"]
    assert {"commit", "versions", "command", "device"} <= set(env) and env["versions"]
