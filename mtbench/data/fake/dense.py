"""``mtbench-fake nyuv2|cityscapes``: a small fake in the MTAN-preprocessed NumPy layout.

    mtbench-fake nyuv2 --root DIR [--n 16] [--n-val 8] [--height 96 --width 128] [--seed 0]
    mtbench-fake cityscapes --root DIR [--n 16] [--n-val 8] [--height 64 --width 128] [--seed 0]

writes ``DIR/{train,val}/<folder>/<i>.npy`` exactly as the real files are laid out (NYUv2:
``image``, ``label``, ``depth``, ``normal``; Cityscapes: ``image``, ``label_7``, ``label_19``,
``depth``), float32 arrays: images H x W x 3 in [0, 1], labels H x W (class indices stored as
floats, -1 unlabelled), depth H x W x 1 (0 missing), normals H x W x 3 (unit vectors, (0, 0, 0)
missing). The default sizes divide by 32 (SegNet pools five times).

The signal is learnable: each image is a grid of 4 x 4 cells, each cell one class whose colour,
depth and normal are fixed per class (plus noise and a vertical depth ramp); a few pixels are
unlabelled, missing depth and missing normals. Cityscapes' 7 classes are its 19 classes grouped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

__all__ = ["add_arguments", "run", "write_fake_dense"]

#: the default (height, width) of each dataset's fake (the real files: 288 x 384 and 128 x 256)
SIZES = {"nyuv2": (96, 128), "cityscapes": (64, 128)}
#: Cityscapes' 19 classes to its 7 categories (flat, construction, object, nature, sky, human, vehicle)
CITY_19_TO_7 = np.array([0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 6, 6, 6, 6])


def write_fake_dense(
    name: str,
    root: Path,
    n: int = 16,
    n_val: int = 8,
    height: int | None = None,
    width: int | None = None,
    seed: int = 0,
) -> Path:
    """Write the fake of ``name`` (``nyuv2`` | ``cityscapes``) into ``root``; returns ``root``."""
    h, w = height or SIZES[name][0], width or SIZES[name][1]
    rng = np.random.default_rng(seed)
    classes = 13 if name == "nyuv2" else 19
    colour = rng.uniform(0.1, 0.9, size=(classes, 3)).astype(np.float32)
    depth = np.linspace(1.0, 6.0, classes) if name == "nyuv2" else np.linspace(0.02, 0.3, classes)
    normal = rng.normal(size=(classes, 3))
    normal[:, 2] = np.abs(normal[:, 2]) + 0.5
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    root = Path(root)
    for split, count in (("train", n), ("val", n_val)):
        folders = ["image", "depth"] + (["label", "normal"] if name == "nyuv2" else ["label_7", "label_19"])
        for folder in folders:
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            cells = rng.integers(0, classes, size=(4, 4))
            rows = np.minimum(np.arange(h) * 4 // h, 3)
            cols = np.minimum(np.arange(w) * 4 // w, 3)
            label = cells[rows[:, None], cols[None, :]]
            image = colour[label] + rng.normal(0, 0.05, size=(h, w, 3)).astype(np.float32)
            image = np.clip(image, 0, 1).astype(np.float32)
            d = depth[label] * (1 + 0.2 * np.linspace(0, 1, h)[:, None])
            missing = rng.random((h, w)) < 0.05
            d[missing] = 0
            seg = label.astype(np.float32)
            seg[rng.random((h, w)) < 0.03] = -1
            np.save(root / split / "image" / f"{i}.npy", image)
            np.save(root / split / "depth" / f"{i}.npy", d[..., None].astype(np.float32))
            if name == "nyuv2":
                nrm = normal[label].astype(np.float32)
                nrm[missing] = 0
                np.save(root / split / "label" / f"{i}.npy", seg)
                np.save(root / split / "normal" / f"{i}.npy", nrm)
            else:
                seg7 = np.where(seg < 0, -1, CITY_19_TO_7[np.maximum(seg, 0).astype(int)]).astype(np.float32)
                np.save(root / split / "label_19" / f"{i}.npy", seg)
                np.save(root / split / "label_7" / f"{i}.npy", seg7)
    return root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mtbench-fake nyuv2`` and ``mtbench-fake cityscapes``."""
    parser.add_argument("--root", required=True, type=Path, help="folder to write train/ and val/ into")
    parser.add_argument("--n", type=int, default=16, help="training images (train/), at least 1 (default 16)")
    parser.add_argument("--n-val", type=int, default=8, help="test images (val/, the reported split; default 8)")
    parser.add_argument("--height", type=int, default=None, help="image height (default: 96 nyuv2, 64 cityscapes)")
    parser.add_argument("--width", type=int, default=None, help="image width (default: 128)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> str:
    """Write the files ``args`` ask for; the line that says what was written."""
    for key in ("n_val", "height", "width"):
        value = getattr(args, key)
        if value is not None and value < 1:
            raise SystemExit(
                f"mtbench-fake: error: --{key.replace('_', '-')} {value}: give at least 1; see mtbench-fake --help"
            )
    write_fake_dense(args.dataset, args.root, args.n, args.n_val, args.height, args.width, args.seed)
    return f"wrote a fake {args.dataset} ({args.n} train / {args.n_val} val examples) to {args.root}"
