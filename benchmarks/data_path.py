"""The store data path (issue 14.6): samples/s the loader delivers, and training steps/s it has to feed.

Measures on a store built by ``mlanet data prepare`` (:mod:`mlanet.data.store`):

- ``loader``: samples per second delivered by a ``DataLoader`` over
  :class:`~mlanet.data.store_dataset.StoreDataset` (batch ``--batch``, random order, the
  training collate) with the network idle, for each ``--workers`` count, with the default
  augmentation (similarity warp + flip + colour + blur + occlusion) and without any
  (``augment: false``, the centre crop). Median over ``--repeats`` windows of ``--batches``
  batches after warm-up batches (worker start-up excluded).
- ``train``: ``--model`` at the store's input size, one optimisation step as in
  :func:`mlanet.train.loop.train` (forward, :class:`~mlanet.losses.objective.Objective`
  with the default ``LossCfg``, backward, gradient clipping, AdamW) on one fixed batch of
  store samples, with the photometric term (renderer) and without it (weight 0). Median of
  ``--steps`` steps after 2 warm-up steps.
- ``end_to_end``: the same step fed by the loader (``--e2e-workers`` workers), with the time
  spent waiting for the next batch: the loader is the bottleneck when that wait is a large
  part of the step.

``verdict`` compares the loader's rate with one worker to the training rate without the
photometric term (the faster, harder case).

    OMP_NUM_THREADS=1 python -m mlanet.benchmarks.data_path --store /tmp/mlanet_store

Writes ``benchmarks/results/data/data_path.json`` (``--out`` for another folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler

from mlanet.benchmarks.record import RESULTS, time_call, write_record
from mlanet.data.augment import AugmentCfg
from mlanet.data.store import Store
from mlanet.data.store_dataset import StoreDataset
from mlanet.run_environment import load_average_1min
from mlanet.train.sampling import make_collate


class _WithSource(torch.utils.data.Dataset):
    """Adds the mixture's ``source`` key (as :class:`mlanet.train.sampling.MixtureDataset` does)."""

    def __init__(self, ds: StoreDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        return {**self.ds[i], "source": torch.tensor(0)}


def _loader(store: Store, augment: bool, workers: int, batch: int, n_params: int, seed: int) -> DataLoader:
    ds = _WithSource(StoreDataset(store, AugmentCfg() if augment else None, seed=seed))
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch, sampler=RandomSampler(ds, generator=g), num_workers=workers,
                      collate_fn=make_collate(n_params), persistent_workers=workers > 0, drop_last=True)


def measure_loader(store: Store, augment: bool, workers: int, batch: int, batches: int, repeats: int,
                   warmup: int, n_params: int) -> dict:
    it = iter(_loader(store, augment, workers, batch, n_params, seed=workers))
    for _ in range(warmup):
        next(it)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        rates.append(batches * batch / (time.perf_counter() - t0))
    del it
    return {"augment": augment, "workers": workers, "batch": batch, "samples_per_s": statistics.median(rates),
            "samples_per_s_all": [round(r, 1) for r in rates], "batches_per_window": batches,
            "ms_per_sample_per_process": 1e3 / statistics.median(rates) * max(workers, 1)}


def _train_parts(store: Store, model_name: str, face_model_path: str | None):
    from mlanet.models.registry import create_model
    from mlanet.morphable.model import MorphableModel

    face_model = MorphableModel.load(face_model_path)
    model = create_model(model_name, face_model=face_model, preprocess=store.preprocess)
    model.train()
    return face_model, model


def _step_fn(model, objective, optimizer, grad_clip: float = 5.0):
    def step(batch: dict) -> None:
        pred = model(batch["image"])
        out = objective(batch, pred.float())
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    return step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="a store folder (mlanet data prepare)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", default="0,1", help="DataLoader worker counts to measure")
    ap.add_argument("--batches", type=int, default=20, help="batches per timing window")
    ap.add_argument("--repeats", type=int, default=5, help="timing windows per loader setting")
    ap.add_argument("--model", default="mlanet_mobile")
    ap.add_argument("--face-model", help="face-model file (default: the asset home's)")
    ap.add_argument("--steps", type=int, default=6, help="timed training steps per setting")
    ap.add_argument("--e2e-workers", type=int, default=1)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--out", help=f"results root (default {RESULTS}); the record goes to <out>/data/")
    args = ap.parse_args(argv)

    from mlanet.losses.objective import LossCfg, Objective

    load_start = load_average_1min()
    t_start = time.perf_counter()
    store = Store(args.store)
    face_model = model = None
    n_params = 0
    if not args.skip_train:
        face_model, model = _train_parts(store, args.model, args.face_model)
        n_params = face_model.layout.total
    results: dict = {
        "store": {"path": str(store.path), "n": len(store), "n_ok": store.manifest["n_ok"], "size": store.size,
                  "input_size": store.input_size, "margin": store.margin,
                  "images_bytes": int(store.images.nbytes), "content_sha256": store.manifest["content_sha256"],
                  "prepare_seconds": store.manifest.get("prepare_seconds_last_call"),
                  "sources": {s["name"]: s["written"] for s in store.sources}},
        "settings": {"batch": args.batch, "batches_per_window": args.batches, "repeats": args.repeats,
                     "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                     "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "augment_cfg": dataclasses.asdict(AugmentCfg())},
    }

    loader_rows = []
    for w in [int(x) for x in args.workers.split(",")]:
        row = measure_loader(store, True, w, args.batch, args.batches, args.repeats, warmup=3, n_params=n_params)
        loader_rows.append(row)
        print(f"loader  augment  workers {w}: {row['samples_per_s']:8.1f} samples/s")
    row = measure_loader(store, False, 0, args.batch, args.batches, args.repeats, warmup=3, n_params=n_params)
    loader_rows.append(row)
    print(f"loader  centre crop workers 0: {row['samples_per_s']:8.1f} samples/s")
    results["loader"] = loader_rows

    if not args.skip_train:
        batch = next(iter(_loader(store, True, 0, args.batch, n_params, seed=123)))
        train_rows, e2e_rows = [], []
        for photometric in (LossCfg().photometric, 0.0):
            loss = dataclasses.replace(LossCfg(), photometric=photometric)
            objective = Objective(face_model, store.preprocess, loss)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
            step = _step_fn(model, objective, optimizer)
            t = time_call(lambda: step(batch), warmup=2, repeats=args.steps)
            r = {"model": args.model, "input_size": store.input_size, "batch": args.batch,
                 "photometric_weight": photometric, **t, "steps_per_s": 1e3 / t["median_ms"],
                 "samples_per_s": args.batch * 1e3 / t["median_ms"]}
            train_rows.append(r)
            print(f"train   photometric {photometric}: {r['median_ms']:8.1f} ms/step  {r['steps_per_s']:.3f} steps/s  "
                  f"{r['samples_per_s']:.1f} samples/s")
            # the same step fed by the loader: time waiting for batches vs the whole step
            it = iter(_loader(store, True, args.e2e_workers, args.batch, n_params, seed=7))
            step(next(it))  # warm-up (worker start)
            waits, totals = [], []
            for _ in range(args.steps):
                t0 = time.perf_counter()
                b = next(it)
                t1 = time.perf_counter()
                step(b)
                waits.append((t1 - t0) * 1e3)
                totals.append((time.perf_counter() - t0) * 1e3)
            del it
            e = {"photometric_weight": photometric, "workers": args.e2e_workers,
                 "median_step_ms": statistics.median(totals), "median_wait_ms": statistics.median(waits),
                 "wait_fraction": sum(waits) / sum(totals), "steps_per_s": 1e3 / statistics.median(totals)}
            e2e_rows.append(e)
            print(f"e2e     photometric {photometric}: {e['median_step_ms']:8.1f} ms/step, waiting for data "
                  f"{e['median_wait_ms']:.1f} ms ({100 * e['wait_fraction']:.1f} %)")
        results["train"] = train_rows
        results["end_to_end"] = e2e_rows
        fastest = max(r["samples_per_s"] for r in train_rows)
        one_worker = next((r["samples_per_s"] for r in loader_rows if r["augment"] and r["workers"] == 1), None)
        in_process = next(r["samples_per_s"] for r in loader_rows if r["augment"] and r["workers"] == 0)
        delivered = one_worker if one_worker is not None else in_process
        ratio = delivered / fastest
        results["verdict"] = {
            "loader_samples_per_s": delivered,
            "loader_workers": 1 if one_worker is not None else 0,
            "train_samples_per_s_fastest": fastest,
            "loader_over_train": ratio,
            "max_wait_fraction": max(e["wait_fraction"] for e in e2e_rows),
            "loader_is_bottleneck": bool(ratio < 3.0 or max(e["wait_fraction"] for e in e2e_rows) > 0.05),
            "rule": "bottleneck if the loader delivers < 3x the fastest training rate or the fed loop waits > 5 % "
                    "of its time for data",
        }
        v = results["verdict"]
        print(f"verdict: loader {v['loader_samples_per_s']:.0f} samples/s = {ratio:.1f} x the fastest training "
              f"rate ({fastest:.1f} samples/s); loader is {'' if v['loader_is_bottleneck'] else 'not '}the bottleneck")
    results["load_average_1min_start"] = load_start
    results["load_average_1min_end"] = load_average_1min()
    results["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    out = write_record("data_path", results, out_dir=Path(args.out or RESULTS) / "data")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
