"""Write a small, fake CelebA in exactly the layout of the real one.

    mtbench-fake celeba --root /tmp/fake_celeba --n 300
    mtbench-fake celeba --root /tmp/fake_celeba --n 300 --layout torchvision

Files (``--layout plain``: directly under ``--root``; ``--layout torchvision``: under
``--root/celeba/``, as torchvision's downloader leaves them):

    img_align_celeba/000001.jpg ...   178 x 218 RGB JPEGs (the real size), named like the real ones
    list_attr_celeba.txt              line 1: the image count; line 2: the 40 real attribute names in
                                      the real order (space-separated, with the real trailing space);
                                      then "<file> v1 ... v40", each value -1 or 1 printed as "%2d"
                                      after one space (so runs of spaces separate them)
    list_eval_partition.txt           "<file> <0|1|2>" (train / val / test), contiguous blocks in the
                                      real proportions (162,770 / 19,867 / 19,962 of 202,599)

Labels are drawn independently with roughly CelebA's base rates, and a few of them are drawn
into the picture (hair colour, glasses, smile, open mouth, hat, lipstick, beard, pale skin, blur),
so a network can learn those; the rest are noise. Needs only numpy and Pillow.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: CelebA's 40 attribute names, in the order of ``list_attr_celeba.txt``
ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
    "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
    "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
assert len(ATTRIBUTES) == 40

#: approximate positive rates of the real attributes (only to make the fake labels look plausible)
RATES = (
    0.11,
    0.27,
    0.51,
    0.20,
    0.02,
    0.15,
    0.24,
    0.23,
    0.24,
    0.15,
    0.05,
    0.20,
    0.14,
    0.06,
    0.05,
    0.07,
    0.06,
    0.04,
    0.39,
    0.45,
    0.42,
    0.48,
    0.04,
    0.12,
    0.83,
    0.28,
    0.04,
    0.28,
    0.08,
    0.07,
    0.06,
    0.48,
    0.21,
    0.32,
    0.19,
    0.05,
    0.47,
    0.12,
    0.07,
    0.77,
)
assert len(RATES) == 40

#: the real split sizes (train, val, test)
REAL_SPLITS = (162770, 19867, 19962)
WIDTH, HEIGHT = 178, 218  # the aligned-and-cropped images' size

_A = {name: i for i, name in enumerate(ATTRIBUTES)}


def split_sizes(n: int) -> tuple[int, int, int]:
    """Train / val / test counts for n images in the real proportions (each >= 1 when n >= 3)."""
    total = sum(REAL_SPLITS)
    n_val = max(1, round(n * REAL_SPLITS[1] / total)) if n >= 3 else 0
    n_test = max(1, round(n * REAL_SPLITS[2] / total)) if n >= 3 else 0
    return n - n_val - n_test, n_val, n_test


def draw_face(labels: np.ndarray, seed: int) -> Image.Image:
    """A cartoon face whose look follows some of its labels (1 = present)."""
    rng = np.random.default_rng(seed)
    has = lambda name: bool(labels[_A[name]])  # noqa: E731
    w, h = WIDTH, HEIGHT
    # background: a vertical gradient between two random colours
    top, bottom = rng.integers(30, 226, 3), rng.integers(30, 226, 3)
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    bg = (top * (1 - t) + bottom * t).repeat(w, axis=1).astype(np.uint8)
    img = Image.fromarray(bg, "RGB")
    d = ImageDraw.Draw(img)

    cx, cy = w / 2 + rng.normal(0, 4), h / 2 + 8 + rng.normal(0, 4)
    fw, fh = rng.uniform(50, 62) * (1.12 if has("Chubby") else 1.0), rng.uniform(68, 80)
    hair = None
    for name, colour in (
        ("Black_Hair", (25, 20, 20)),
        ("Blond_Hair", (225, 195, 110)),
        ("Brown_Hair", (110, 70, 40)),
        ("Gray_Hair", (165, 165, 165)),
    ):
        if has(name):
            hair = colour
            break
    if hair is None:
        hair = tuple(int(c) for c in rng.integers(40, 120, 3))
    if not has("Bald"):
        d.ellipse([cx - fw - 10, cy - fh - 16, cx + fw + 10, cy + fh * 0.6], fill=hair)
        if not has("Straight_Hair"):  # curls on the sides
            for s in (-1, 1):
                d.ellipse([cx + s * (fw + 4) - 14, cy - 20, cx + s * (fw + 4) + 14, cy + 40], fill=hair)
    skin = np.array([224, 190, 160]) if not has("Pale_Skin") else np.array([248, 232, 222])
    skin = tuple(int(c) for c in np.clip(skin + rng.normal(0, 12, 3), 0, 255))
    d.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=skin)
    if has("Bangs") and not has("Bald"):
        d.chord([cx - fw, cy - fh, cx + fw, cy - fh * 0.2], 180, 360, fill=hair)
    if has("Wearing_Hat"):
        hat = tuple(int(c) for c in rng.integers(0, 255, 3))
        d.rectangle([cx - fw - 14, cy - fh - 6, cx + fw + 14, cy - fh + 12], fill=hat)
        d.rectangle([cx - fw * 0.7, cy - fh - 40, cx + fw * 0.7, cy - fh], fill=hat)
    if has("Rosy_Cheeks"):
        for s in (-1, 1):
            d.ellipse([cx + s * 30 - 9, cy + 8, cx + s * 30 + 9, cy + 22], fill=(230, 120, 120))
    ey = cy - 14
    eye_h = 3 if has("Narrow_Eyes") else 6
    for s in (-1, 1):
        ex = cx + s * 22
        d.ellipse([ex - 8, ey - eye_h, ex + 8, ey + eye_h], fill=(250, 250, 250))
        d.ellipse([ex - 3, ey - 3, ex + 3, ey + 3], fill=(40, 30, 30))
        brow = 4 if has("Bushy_Eyebrows") else 2
        d.line([ex - 10, ey - 12, ex + 10, ey - 12 - (4 if has("Arched_Eyebrows") else 0)], fill=hair, width=brow)
        if has("Eyeglasses"):
            d.rectangle([ex - 13, ey - 10, ex + 13, ey + 10], outline=(10, 10, 10), width=3)
    if has("Eyeglasses"):
        d.line([cx - 9, ey, cx + 9, ey], fill=(10, 10, 10), width=3)
    nose = 9 if has("Big_Nose") else 6
    d.polygon([(cx, cy - 4), (cx - nose, cy + 14), (cx + nose, cy + 14)], fill=tuple(max(0, c - 30) for c in skin))
    lip = (200, 20, 50) if has("Wearing_Lipstick") else (170, 90, 90)
    my = cy + 36
    if has("Mouth_Slightly_Open"):
        d.ellipse([cx - 14, my - 6, cx + 14, my + 8], fill=(60, 20, 20), outline=lip, width=3)
    elif has("Smiling"):
        d.arc([cx - 20, my - 14, cx + 20, my + 8], 20, 160, fill=lip, width=4)
    else:
        d.line([cx - 15, my, cx + 15, my], fill=lip, width=4)
    if has("Male") and not has("No_Beard"):
        d.chord([cx - fw + 6, cy + 10, cx + fw - 6, cy + fh], 0, 180, fill=hair)
    if has("Mustache"):
        d.rectangle([cx - 16, my - 10, cx + 16, my - 5], fill=hair)
    if has("Wearing_Necktie"):
        d.polygon([(cx, cy + fh + 6), (cx - 8, h), (cx + 8, h)], fill=(30, 30, 120))

    arr = np.asarray(img, dtype=np.int16) + rng.normal(0, 5, (h, w, 1)).astype(np.int16)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    if has("Blurry"):
        img = img.filter(ImageFilter.GaussianBlur(2.5))
    return img


def attr_lines(names: list[str], labels: np.ndarray) -> list[str]:
    """``list_attr_celeba.txt`` as the real file writes it (-1 / 1, "%2d" after one space)."""
    head = [f"{len(names)}", " ".join(ATTRIBUTES) + " "]
    return head + [
        name + "".join(f" {v:2d}" for v in (2 * row.astype(np.int64) - 1)) for name, row in zip(names, labels)
    ]


def make_fake_celeba(
    root: str | Path, n: int = 200, seed: int = 0, layout: str = "plain", quality: int = 90, workers: int = 2
) -> Path:
    """Write the fake dataset; return the folder holding the files (``root`` or ``root/celeba``)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    base = Path(root) / "celeba" if layout == "torchvision" else Path(root)
    images = base / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 40)) < np.asarray(RATES)).astype(np.uint8)
    names = [f"{i:06d}.jpg" for i in range(1, n + 1)]

    def write(i: int) -> None:
        draw_face(labels[i], seed * 1_000_003 + i).save(images / names[i], "JPEG", quality=quality)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(write, range(n)))
    (base / "list_attr_celeba.txt").write_text("\n".join(attr_lines(names, labels)) + "\n")
    n_train, n_val, _ = split_sizes(n)
    parts = [0 if i < n_train else 1 if i < n_train + n_val else 2 for i in range(n)]
    (base / "list_eval_partition.txt").write_text("".join(f"{name} {p}\n" for name, p in zip(names, parts)))
    return base


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``mtbench-fake celeba``."""
    p.add_argument("--root", required=True, help="folder to write into (created if needed)")
    p.add_argument("--n", type=int, default=200, help="number of images, at least 1 (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--layout",
        choices=("plain", "torchvision"),
        default="plain",
        help="files in ROOT (plain) or ROOT/celeba (torchvision)",
    )
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--workers", type=int, default=2, help="threads writing images (default 2)")


def run(args: argparse.Namespace) -> str:
    """Write the files ``args`` ask for; the line that says what was written."""
    base = make_fake_celeba(args.root, args.n, args.seed, args.layout, args.quality, args.workers)
    sizes = split_sizes(args.n)
    return f"wrote {args.n} fake CelebA images (train/val/test {sizes[0]}/{sizes[1]}/{sizes[2]}) to {base}"


def main(argv: list[str] | None = None) -> int:
    """``mtbench-fake celeba ...`` (``argv``: the arguments after ``celeba``)."""
    from mtbench.data.fake import main as fake_main

    return fake_main(["celeba", *(sys.argv[1:] if argv is None else argv)])
