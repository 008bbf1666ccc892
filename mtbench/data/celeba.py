"""CelebA: aligned and cropped face images, 40 binary attributes, the official partition.

Files, as distributed (``<root>/...``) or as torchvision's downloader lays them out
(``<root>/celeba/...``)::

    img_align_celeba/000001.jpg ... 202599.jpg   178 x 218 RGB JPEGs
    list_attr_celeba.txt       line 1: the image count; line 2: the 40 attribute names;
                               then "<file> v1 ... v40", each value -1 or 1 (runs of spaces)
    list_eval_partition.txt    "<file> <0|1|2>": train / val / test (162,770 / 19,867 / 19,962)

Labels -1/1 become 0/1; the attribute names come from the file. Each image's centred square
(178 x 178: 20 rows off the top and the bottom) is resized to ``image_size`` (bilinear,
antialiased; JPEGs decoded at a reduced DCT scale when that still leaves ``image_size`` pixels)
and decoded once into a uint8 cache per split, ``<cache>/celeba-<S>px-<fingerprint>/{train,val,
test}.npy`` ([N, 3, S, S], memory-mapped), with the normalisation statistics (up to 20,000 train
images) in its ``meta.json``. The fingerprint covers the text files, every image's size and
mtime, ``S`` and the crop policy; a build is renamed into place only after ``meta.json`` is
written, and an incomplete or corrupt cache is rebuilt (``data/celeba_cache.py``). The cache
lives in ``data.cache_dir``, else ``<folder of the files>/.mtbench_cache/``, else (not writable)
``$XDG_CACHE_HOME/mtbench/celeba``. Normalisation and the random flips (the run's augmentation
generator) run on tensors on the training device. Details: docs/tasks/celeba.md.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtbench.data.base import BinaryAttributeTask, Split, TaskSpec, binary_columns, check_binary_head
from mtbench.data.celeba_cache import (  # noqa: F401 - the cache's names, re-exported
    CACHE_FORMAT,
    CROP,
    META,
    SPLITS,
    STATS_IMAGES,
    build_cache,
    cache_root,
    decode_image,
    fingerprint,
)
from mtbench.errors import MtbenchError
from mtbench.options import check_bool, check_choice, check_int, check_str

log = logging.getLogger("mtbench")

IMAGE_DIR = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
NUM_ATTRIBUTES = 40

#: ``task.preprocess``: how a 178x218 image becomes an ``image_size`` square. ``center_crop``
#: (the default): the centred 178x178 square, bilinear (antialiased); ``full``: the whole
#: image squeezed to the square, bilinear (antialiased; torchvision's ``Resize``); ``full_nearest``:
#: the whole image, nearest neighbour (PIL's ``NEAREST``)
PREPROCESS = ("center_crop", "full", "full_nearest")

LAYOUT = (
    f"expected <root>/{IMAGE_DIR}/*.jpg, <root>/{ATTR_FILE} and <root>/{PARTITION_FILE} "
    f"(or the same under <root>/celeba/, torchvision's layout)"
)


@dataclass
class CelebAFiles:
    """Where the dataset's files are: ``base`` holds the two text files and the image folder."""

    base: Path

    @property
    def images(self) -> Path:
        return self.base / IMAGE_DIR

    @property
    def attr(self) -> Path:
        return self.base / ATTR_FILE

    @property
    def partition(self) -> Path:
        return self.base / PARTITION_FILE


@dataclass
class CelebAData:
    """The loaded dataset: attribute names, per-split uint8 images (memory-mapped) and 0/1 labels."""

    names: list[str]
    splits: dict[str, Split]
    mean: torch.Tensor
    std: torch.Tensor
    cache: Path
    files: CelebAFiles


# --------------------------------------------------------------------------------------------
# finding the files


def _present(base: Path) -> list[bool]:
    return [(base / IMAGE_DIR).is_dir(), (base / ATTR_FILE).is_file(), (base / PARTITION_FILE).is_file()]


def find_files(root: str | os.PathLike | None, download: bool = False) -> CelebAFiles:
    """The folder holding CelebA's files under ``root`` (``root`` itself or ``root/celeba``).

    With ``download``, torchvision's downloader fetches the dataset into ``root/celeba`` when
    neither layout is complete. Raises ``MtbenchError`` naming the first missing file.
    """
    if root is None or not str(root).strip():
        raise MtbenchError(
            f"data.root is not set: task=celeba needs data.root=/path/to/celeba; {LAYOUT}; data.download=true fetches it with torchvision"
        )
    root = Path(str(root)).expanduser().absolute()
    if root.exists() and not root.is_dir():
        raise MtbenchError(f"data.root={root} is not a folder; {LAYOUT}")
    candidates = [root, root / "celeba"]
    for base in candidates:
        if all(_present(base)):
            return CelebAFiles(base)
    if download:
        _download(root)
        if all(_present(root / "celeba")):
            return CelebAFiles(root / "celeba")
    if not root.exists():
        raise MtbenchError(f"data.root={root} does not exist; {LAYOUT}; data.download=true fetches it with torchvision")
    # name the first missing file of the layout that is most nearly there (root/ on a tie)
    base = max(candidates, key=lambda b: sum(_present(b)))
    missing = [name for name, ok in zip((IMAGE_DIR + "/", ATTR_FILE, PARTITION_FILE), _present(base)) if not ok][0]
    raise MtbenchError(
        f"CelebA file not found: {base / missing}; {LAYOUT}; data.download=true fetches it with torchvision"
    )


def _download(root: Path) -> None:
    """torchvision's CelebA downloader (Google Drive, needs the ``gdown`` package)."""
    log.info(f"celeba: downloading with torchvision into {root / 'celeba'} (about 1.4 GB)")
    try:
        root.mkdir(parents=True, exist_ok=True)
        from torchvision.datasets import CelebA

        CelebA(str(root), split="all", target_type=[], download=True)
    except Exception as e:  # noqa: BLE001 - any failure of the downloader is reported as one line
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise MtbenchError(
            f"data.download=true: torchvision's CelebA download into {root / 'celeba'} failed ({reason}); "
            f"it needs `pip install gdown` and Google Drive access, or download the files yourself: {LAYOUT}"
        ) from None


# --------------------------------------------------------------------------------------------
# the two text files


def _read_lines(path: Path) -> tuple[list[str], bytes]:
    """The file's lines (without line ends; LF or CRLF) and its raw bytes."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise MtbenchError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise MtbenchError(f"{path}, line {line}: not a text line (byte {e.start} is not UTF-8)") from None
    return text.split("\n"), raw


def _check_row(path: Path, line_no: int, line: str, n_names: int) -> None:
    """Raise the precise error of a malformed image line of the attribute file (if it is)."""
    parts = line.split()
    if not parts:
        raise MtbenchError(f"{path}, line {line_no}: empty line; expected a file name and {n_names} values of -1 or 1")
    values = parts[1:]
    if len(values) != n_names:
        hint = " (the file looks truncated)" if len(values) < n_names else ""
        raise MtbenchError(
            f"{path}, line {line_no}: {len(values)} attribute values for {parts[0]}, expected {n_names}{hint}"
        )
    bad = [v for v in values if v not in ("1", "-1")]
    if bad:
        raise MtbenchError(f"{path}, line {line_no}: value {bad[0]!r} for {parts[0]}; attribute values must be -1 or 1")


def _check_file_name(path: Path, line_no: int, name: str) -> None:
    if "/" in name or "\\" in name or name in (".", ".."):
        raise MtbenchError(f"{path}, line {line_no}: {name!r} is not a file name in {IMAGE_DIR}/")


#: deletes the characters of "1", "-1" and whitespace: what is left is a bad value
_SIGN_CHARS = str.maketrans("", "", "1- \t\r\x0b\x0c")


def _only_signs(text: str) -> bool:
    """Is ``text`` nothing but whitespace-separated "1" and "-1" (no "01", "+1", "1-1", ...)?"""
    if text.translate(_SIGN_CHARS):
        return False
    if any(bad in text for bad in ("11", "--", "1-", "- ", "-\t", "-\r", "-\x0b", "-\x0c")):
        return False
    return not text.rstrip().endswith("-")


def read_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray, bytes]:
    """Parse ``list_attr_celeba.txt``: (attribute names, file names, labels uint8 [N, 40] in {0, 1},
    raw bytes). Every malformed line is an error naming the file and the line."""
    path = Path(path)
    lines, raw = _read_lines(path)
    first = lines[0].split() if lines else []
    if len(first) != 1 or not first[0].isdigit() or int(first[0]) == 0:
        raise MtbenchError(
            f"{path}, line 1: expected the number of images, found {lines[0].strip()[:40]!r}"
            if lines and lines[0].strip()
            else f"{path}, line 1: empty; expected the number of images"
        )
    count = int(first[0])
    if len(lines) < 2 or not lines[1].strip():
        raise MtbenchError(
            f"{path}, line 2: missing; expected the {NUM_ATTRIBUTES} attribute names (the file looks truncated)"
        )
    names = lines[1].split()
    if len(names) != NUM_ATTRIBUTES:
        raise MtbenchError(f"{path}, line 2: {len(names)} attribute names, expected {NUM_ATTRIBUTES}")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise MtbenchError(f"{path}, line 2: attribute name {dup!r} appears twice")

    body = lines[2:]
    while body and not body[-1].strip():  # the final line end, trailing blank lines
        body.pop()
    if len(body) > count:
        raise MtbenchError(f"{path}, line {2 + count + 1}: line 1 announces {count} images but the file lists more")
    files: list[str] = []
    rows: list[str] = []
    fast = True
    for line in body:
        parts = line.split(None, 1)
        # each of the 40 values (-1 or 1) holds exactly one "1": a cheap per-line column check
        if len(parts) != 2 or parts[1].count("1") != NUM_ATTRIBUTES:
            fast = False
            break
        files.append(parts[0])
        rows.append(parts[1])
    values = None
    text = " ".join(rows) if fast else ""
    if fast and _only_signs(text):  # numpy alone would also read "01", "+1" or "1.0" as 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                values = np.fromstring(text, dtype=np.int8, sep=" ")
        except (ValueError, DeprecationWarning):
            values = None
        if values is not None and (values.size != len(rows) * NUM_ATTRIBUTES or not np.isin(values, (-1, 1)).all()):
            values = None
    if values is None:  # find the first bad line, for the message
        for i, line in enumerate(body):
            _check_row(path, i + 3, line, NUM_ATTRIBUTES)
        raise MtbenchError(f"{path}: malformed attribute values")  # not reached: some line is bad
    if len(body) < count:
        raise MtbenchError(
            f"{path}, line {2 + len(body) + 1}: the file ends after {len(body)} of the {count} images that line 1 announces (truncated)"
        )
    for i, name in enumerate(files):
        _check_file_name(path, i + 3, name)
    if len(set(files)) != len(files):
        seen: dict[str, int] = {}
        for i, name in enumerate(files):
            if name in seen:
                raise MtbenchError(f"{path}, line {i + 3}: {name} is listed twice (also line {seen[name] + 3})")
            seen[name] = i
    labels = (values.reshape(count, NUM_ATTRIBUTES) > 0).astype(np.uint8)
    return names, files, labels, raw


def read_partition(path: Path, files: list[str], attr_path: Path) -> tuple[np.ndarray, bytes]:
    """Parse ``list_eval_partition.txt``: the split (0 train, 1 val, 2 test) of each of ``files``."""
    path = Path(path)
    lines, raw = _read_lines(path)
    n = len(files)
    part = np.full(n, -1, dtype=np.int8)
    position = {name: i for i, name in enumerate(files)}
    for i, line in enumerate(lines):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise MtbenchError(f"{path}, line {i + 1}: expected '<file> <0|1|2>', found {line.strip()[:60]!r}")
        k = position.get(parts[0])
        if k is None:
            raise MtbenchError(f"{path}, line {i + 1}: {parts[0]} is not listed in {attr_path.name}")
        if part[k] >= 0:
            raise MtbenchError(f"{path}, line {i + 1}: {parts[0]} is listed twice")
        part[k] = int(parts[1])
    if (part < 0).any():
        k = int(np.flatnonzero(part < 0)[0])
        raise MtbenchError(
            f"{path}: {files[k]} (line {k + 3} of {attr_path.name}) has no split (the file looks truncated)"
        )
    for s, split in enumerate(SPLITS):
        if not (part == s).any():
            raise MtbenchError(f"{path}: no image in the {split} split (value {s})")
    return part, raw


# --------------------------------------------------------------------------------------------
# the task


def load_celeba(
    root: str | os.PathLike | None,
    image_size: int = 64,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    preprocess: str = "center_crop",
) -> CelebAData:
    """Find and check the files, build (or reuse) the cache, memory-map the splits."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise MtbenchError(f"data.image_size must be an integer >= 8 (got {image_size!r})")
    files = find_files(root, download)
    names, image_names, labels, attr_raw = read_attributes(files.attr)
    partition, partition_raw = read_partition(files.partition, image_names, files.attr)
    fp = fingerprint(files, image_names, attr_raw, partition_raw, image_size, preprocess)
    folder = build_cache(
        files, image_names, partition, fp, image_size, cache_root(files, cache_dir), workers, progress, preprocess
    )
    meta = json.loads((folder / META).read_text())
    splits = {}
    for s, split in enumerate(SPLITS):
        # copy-on-write mapping: writable for torch, the file is never modified
        images = torch.from_numpy(np.load(folder / f"{split}.npy", mmap_mode="c"))
        splits[split] = Split(images, torch.from_numpy(np.ascontiguousarray(labels[partition == s])))
    mean = torch.tensor(meta["mean"], dtype=torch.float32)
    std = torch.tensor(meta["std"], dtype=torch.float32)
    return CelebAData(names, splits, mean, std, folder, files)


@dataclass(eq=False)
class CelebATask(BinaryAttributeTask):
    """CelebA's 40 attributes; training batches are randomly flipped left-right (``hflip``)."""

    hflip: bool = True
    cache: Path | None = field(default=None)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Flip each image of a training batch left-right with probability 1/2 (in place).

        Training batches come in a random order (a fresh permutation of the split each epoch),
        so flipping the first k ~ Binomial(B, 1/2) images flips each image independently with
        probability 1/2, as one coin per image would; it is one contiguous in-place flip (no
        gather, no select), and k is drawn on the host (from ``augment_generator``, the run's
        augmentation generator), so a GPU is never synchronised.
        """
        if not self.hflip:
            return x
        from torchvision.transforms.v2 import functional as TF

        k = int((torch.rand(x.shape[0], generator=self.augment_generator) < 0.5).sum())
        if k:
            x[:k] = TF.horizontal_flip(x[:k])
        return x


def check_options(cfg: Any) -> TaskSpec:
    """Check the ``task=celeba`` options (no file is read); a one-line error names the option."""
    check_str("data.root", cfg.get("root"), optional=True)
    check_bool("data.download", cfg.get("download", False))
    check_int("data.image_size", cfg.get("image_size", 64), minimum=8)
    check_str("data.cache_dir", cfg.get("cache_dir"), optional=True)
    check_int("data.workers", cfg.get("workers"), minimum=1, optional=True)
    check_bool("task.hflip", cfg.get("hflip", True))
    check_choice("task.preprocess", cfg.get("preprocess", "center_crop"), PREPROCESS)
    check_binary_head(cfg)
    return TaskSpec(NUM_ATTRIBUTES, tuple(c.key for c in binary_columns(cfg.get("columns"))))


def build_celeba(cfg: Any) -> CelebATask:
    """The ``task=celeba`` builder (``cfg`` is the task node; see configs/task/celeba.yaml)."""
    check_options(cfg)
    size = cfg.get("image_size", 64)
    data = load_celeba(
        cfg.get("root"),
        image_size=size,
        download=bool(cfg.get("download", False)),
        cache_dir=cfg.get("cache_dir"),
        workers=cfg.get("workers"),
        **({} if cfg.get("preprocess", "center_crop") == "center_crop" else {"preprocess": str(cfg.preprocess)}),
    )
    task = CelebATask(
        "celeba",
        data.names,
        train=data.splits["train"],
        val=data.splits["val"],
        test=data.splits["test"],
        mean=data.mean,
        std=data.std,
        hflip=bool(cfg.get("hflip", True)),
        cache=data.cache,
    )
    task.metric_columns = binary_columns(cfg.get("columns"))
    task.two_way = cfg.get("head", "sigmoid") == "softmax2"
    return task
