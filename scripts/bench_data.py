#!/usr/bin/env python
"""Benchmark of the CelebA, NYUv2 and Cityscapes data paths on this machine (not a test).

    python scripts/bench_data.py --root /path/to/celeba
    python scripts/bench_data.py --root /tmp/fake_celeba --fake 20000     # writes a fake CelebA first
    python scripts/bench_data.py --task nyuv2 --root /tmp/fake_nyuv2 --fake 795   # a fake at 288 x 384

NYUv2 / Cityscapes (``--task``): the first pass (every .npy read, checked and written into a fresh
cache), the start of a later run (listing and fingerprinting the files, mapping the cache), and
training-ready batches (gathered from the memory-mapped cache, to the device, the peers'
augmentation, ``Task.augment_batch``), at the papers' batch size unless ``--batch-size`` is given.

CelebA:

Reports:

1. the first decoding pass: every JPEG decoded, cropped, resized and written into a fresh uint8
   cache (images/s), with ``--workers`` threads; the cache goes to a temporary folder (removed at
   the end unless ``--keep``), so an existing cache is neither used nor touched;
2. the start of a later run: parsing the text files, checking every listed image, mapping the
   cache (seconds);
3. the throughput of training-ready batches from the cache (images/s): the trainer's own code
   path, i.e. a random batch gathered from the memory-mapped cache, converted to float and
   normalised (``mtbench.train.batches.Preprocess``) and flipped (``CelebATask.augment``), on
   ``--device``, with 1 torch thread and with torch's default. When the dataset's train split is
   smaller than the real one (162,770 images), it is measured on a cache of the real size (the
   decoded images repeated), so the random gathers touch as much memory as on the real data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REAL_TRAIN = 162770


def throughput(
    task, device: torch.device, batch_size: int, seconds: float, augment: bool = True, prepare: bool = True
) -> float:
    """Images/s of training-ready batches (random batches of the train split for ``seconds``)."""
    from mtbench.train.batches import Preprocess, batches

    prep = Preprocess(task, device)
    gen = torch.Generator().manual_seed(0)
    for i, (images, labels) in enumerate(batches(task.train, batch_size, gen)):  # warm-up (imports, allocator)
        task.augment_batch(*prep(images, labels))
        if i == 3:
            break
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for images, labels in batches(task.train, batch_size, gen):
            if prepare:
                x, y = prep(images, labels)
                if augment:
                    x, y = task.augment_batch(x, y)
            n += images.shape[0]
            if time.perf_counter() - t0 > seconds:
                break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Benchmark of the CelebA data path (decoding pass, cache throughput).")
    p.add_argument("--root", required=True, help="data.root: a CelebA folder (or where --fake writes one)")
    p.add_argument(
        "--fake",
        type=int,
        default=0,
        help="write a fake CelebA of this many images into --root first (if none is there)",
    )
    p.add_argument("--task", default="celeba", choices=("celeba", "nyuv2", "cityscapes"))
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=None, help="default: 256 (celeba), 2 (nyuv2), 8 (cityscapes)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: one per core)")
    p.add_argument(
        "--threads", default=None, help="torch CPU threads, a comma-separated list (default: 1 and torch's default)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=10.0, help="minimum duration of each throughput measurement")
    p.add_argument(
        "--cache-dir", default=None, help="where the temporary cache goes (default: a temporary folder in --root)"
    )
    p.add_argument("--no-tile", action="store_true", help="skip the measurement on a real-size tiled cache")
    p.add_argument("--keep", action="store_true", help="keep the temporary cache")
    args = p.parse_args(argv)
    if args.task != "celeba":
        return dense_main(args)
    args.batch_size = args.batch_size or 256

    default_threads = torch.get_num_threads()
    thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, default_threads})
    from mtbench.data.base import Split
    from mtbench.data.celeba import CelebATask, find_files, load_celeba
    from mtbench.errors import MtbenchError

    root = Path(args.root)
    if args.fake:
        try:
            find_files(root)
            print(f"{root} already holds a CelebA; --fake ignored")
        except MtbenchError:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from make_fake_celeba import make_fake_celeba

            t = time.perf_counter()
            make_fake_celeba(root, args.fake, workers=os.cpu_count() or 1)
            print(f"wrote {args.fake} fake images in {time.perf_counter() - t:.1f} s")
    files = find_files(root)
    parent = Path(args.cache_dir) if args.cache_dir else files.base
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".bench_cache_", dir=parent))
    device = torch.device(args.device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows: list[tuple[str, str]] = []
    try:
        t = time.perf_counter()
        data = load_celeba(root, args.image_size, cache_dir=tmp, workers=args.workers)
        first_wall = time.perf_counter() - t
        meta = json.loads((data.cache / "meta.json").read_text())
        n = sum(meta["counts"].values())
        rows.append(
            (
                "first pass: decode + crop + resize + write",
                f"{meta['images_per_s']:.0f} images/s ({n} images in {meta['build_s']:.1f} s; {first_wall:.1f} s with parsing)",
            )
        )

        t = time.perf_counter()
        data = load_celeba(root, args.image_size, cache_dir=tmp)
        rows.append(("later runs: parse, check every image, map the cache", f"{time.perf_counter() - t:.2f} s"))

        def task_of(train: Split) -> CelebATask:
            s = data.splits
            return CelebATask(
                "celeba", data.names, train=train, val=s["val"], test=s["test"], mean=data.mean, std=data.std
            )

        task = task_of(data.splits["train"])
        ntrain = len(task.train)
        label = f"train split, {ntrain} images"
        if ntrain < REAL_TRAIN and not args.no_tile:
            # a cache of the real train split's size (the fake images repeated), so that random
            # gathers touch as much memory as they will on the real data
            src = np.load(data.cache / "train.npy", mmap_mode="r")
            big = np.lib.format.open_memmap(
                tmp / "tiled_train.npy", mode="w+", dtype=np.uint8, shape=(REAL_TRAIN, *src.shape[1:])
            )
            for a in range(0, REAL_TRAIN, ntrain):
                big[a : a + ntrain] = src[: REAL_TRAIN - a]
            big.flush()
            del big, src
            images = torch.from_numpy(np.load(tmp / "tiled_train.npy", mmap_mode="c"))
            labels = data.splits["train"].labels.repeat((REAL_TRAIN + ntrain - 1) // ntrain, 1)[:REAL_TRAIN]
            task = task_of(Split(images, labels))
            label = f"real-size train cache, {REAL_TRAIN} images (the {ntrain} tiled)"
        for threads in thread_counts:
            torch.set_num_threads(threads)
            gather = throughput(task, device, args.batch_size, args.seconds, prepare=False)
            ready = throughput(task, device, args.batch_size, args.seconds)
            rows.append((f"cache ({label}), {threads} torch thread(s): random uint8 batches", f"{gather:.0f} images/s"))
            rows.append(
                (
                    f"cache ({label}), {threads} torch thread(s): training-ready batches (gather, to float, normalise, flip)",
                    f"{ready:.0f} images/s",
                )
            )
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print()
    print(
        f"CelebA data path, image_size {args.image_size}, batch {args.batch_size}, device {device}, "
        f"{cores} cores, decoding threads {args.workers or cores}, load average {load:.1f} (other processes share the cores)"
    )
    print()
    print("| measurement | result |")
    print("|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if args.keep:
        print(f"\ncache kept in {tmp}")
    return 0


def dense_main(args: argparse.Namespace) -> int:
    """The NYUv2 / Cityscapes rows (see the module docstring)."""
    from omegaconf import OmegaConf

    from mtbench.data import build_task
    from mtbench.data.dense import DATASETS, find_files
    from mtbench.data.fake.dense import write_fake_dense
    from mtbench.errors import MtbenchError

    ds = DATASETS[args.task]
    batch = args.batch_size or (2 if args.task == "nyuv2" else 8)
    root = Path(args.root)
    if args.fake:
        try:
            find_files(ds, root, ["image"], ds.classes[0])
            print(f"{root} already holds files; --fake ignored")
        except MtbenchError:
            t = time.perf_counter()
            write_fake_dense(
                args.task, root, n=args.fake, n_val=max(1, args.fake // 4), height=ds.size[0], width=ds.size[1]
            )
            print(
                f"wrote a fake {args.task} of {args.fake} + {max(1, args.fake // 4)} examples in {time.perf_counter() - t:.1f} s"
            )
    parent = Path(args.cache_dir) if args.cache_dir else root
    tmp = Path(tempfile.mkdtemp(prefix=".bench_cache_", dir=parent))
    cfg = OmegaConf.create({"name": args.task, "root": str(root), "cache_dir": str(tmp), "augment": True})
    device = torch.device(args.device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows: list[tuple[str, str]] = []
    try:
        t = time.perf_counter()
        task = build_task(cfg)
        first = time.perf_counter() - t
        n = len(task.train) + len(task.val) + len(task.test)
        rows.append(
            ("first pass: read + check + write the cache", f"{n / first:.0f} examples/s ({n} in {first:.1f} s)")
        )
        t = time.perf_counter()
        task = build_task(cfg)
        rows.append(("later runs: list and fingerprint the files, map the cache", f"{time.perf_counter() - t:.2f} s"))
        task.augment_generator = torch.Generator().manual_seed(0)
        threads = [int(x) for x in args.threads.split(",")] if args.threads else sorted({1, torch.get_num_threads()})
        for k in threads:
            torch.set_num_threads(k)
            ready = throughput(task, device, batch, args.seconds, augment=False)
            augmented = throughput(task, device, batch, args.seconds)
            rows.append((f"{k} torch thread(s): batches gathered, on the device", f"{ready:.0f} examples/s"))
            rows.append(
                (f"{k} torch thread(s): the same, augmented (scale crop + flip)", f"{augmented:.0f} examples/s")
            )
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    h, w = task.train.images.shape[-2:]
    print()
    print(
        f"{args.task} data path, {h} x {w}, batch {batch}, device {device}, {cores} cores, "
        f"load average {load:.1f} (other processes share the cores)"
    )
    print()
    print("| measurement | result |")
    print("|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
