"""Write a small stand-in for CIFAR-100 in the python pickle layout (no download).

    mtbench-fake cifar100 --root DIR --n 256 [--n-test 64] [--seed 0] [--flat]

writes ``DIR/cifar-100-python/{train,test,meta}`` (with ``--flat``: the three files directly
in ``DIR``), the layout of the official ``cifar-100-python.tar.gz`` once extracted:

- ``train``, ``test``: a pickled dict with ``data`` (uint8 array [N, 3072]: each row one 32x32
  image, the 1024 red values, then green, then blue, each row-major), ``fine_labels`` and
  ``coarse_labels`` (lists of N ints in [0, 100) and [0, 20)), ``filenames``, ``batch_label``;
- ``meta``: ``fine_label_names`` (100 names) and ``coarse_label_names`` (20 names).

The pickles use protocol 2, as the official files do. Every fine class appears
(round-robin, then shuffled) whenever N >= 100; fine class c belongs to coarse class c // 5
(the real grouping differs; only its shape matters here). Each class has its own mean colour
plus noise, so a few training steps can learn something. Needs only numpy.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

FINE, COARSE = 100, 20


def _write(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _split(rng: np.random.Generator, palette: np.ndarray, count: int, name: str) -> dict:
    fine = rng.permutation(np.arange(count) % FINE)
    noise = rng.normal(0.0, 40.0, size=(count, 3, 32, 32))
    images = np.clip(palette[fine][:, :, None, None] + noise, 0, 255).astype(np.uint8)
    return {
        "filenames": [f"fake_{name}_{i:05d}.png" for i in range(count)],
        "batch_label": f"fake {name} batch 1 of 1",
        "fine_labels": [int(c) for c in fine],
        "coarse_labels": [int(c) // (FINE // COARSE) for c in fine],
        "data": images.reshape(count, 3 * 32 * 32),
    }


def write_fake_cifar100(
    root: str | Path, n: int = 256, n_test: int | None = None, seed: int = 0, flat: bool = False
) -> Path:
    """Write the fake dataset under ``root``; return the folder holding ``train``, ``test``, ``meta``."""
    if n < 1:
        raise ValueError("--n must be at least 1")
    n_test = max(1, n // 4) if n_test is None else int(n_test)
    folder = Path(root) if flat else Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = rng.uniform(30, 225, size=(FINE, 3))
    _write(folder / "train", _split(rng, palette, int(n), "training"))
    _write(folder / "test", _split(rng, palette, n_test, "testing"))
    _write(
        folder / "meta",
        {
            "fine_label_names": [f"fine_{i:02d}" for i in range(FINE)],
            "coarse_label_names": [f"coarse_{i:02d}" for i in range(COARSE)],
        },
    )
    return folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mtbench-fake cifar100``."""
    parser.add_argument("--root", required=True, type=Path, help="folder to write cifar-100-python/ into")
    parser.add_argument("--n", type=int, default=256, help="training images, at least 1 (default 256)")
    parser.add_argument("--n-test", type=int, default=None, help="test images (default n // 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flat", action="store_true", help="write train/test/meta directly into --root")


def run(args: argparse.Namespace) -> str:
    """Write the files ``args`` ask for; the line that says what was written."""
    folder = write_fake_cifar100(args.root, args.n, args.n_test, args.seed, args.flat)
    return f"wrote a fake CIFAR-100 ({args.n} train images) to {folder}"


def main(argv: list[str] | None = None) -> int:
    """``mtbench-fake cifar100 ...`` (``argv``: the arguments after ``cifar100``)."""
    import sys

    from mtbench.data.fake import main as fake_main

    return fake_main(["cifar100", *(sys.argv[1:] if argv is None else argv)])
