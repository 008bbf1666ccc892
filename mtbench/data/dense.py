"""Dense prediction tasks on the MTAN-preprocessed NumPy layout (NYUv2, Cityscapes).

The layout of lorenmt/mtan's ``im2im_pred/create_dataset.py`` (copied by CAGrad, Nash-MTL, FAMO
and LibMTL): ``ROOT/{train,val}/<folder>/<i>.npy``, i = 0 .. N-1 in every folder of a split,
with ``image`` (H x W x 3 floats), the segmentation folder (``label`` on NYUv2, ``label_7`` /
``label_19`` on Cityscapes: class index, -1 unlabelled), ``depth`` (H x W x 1, 0 missing) and
``normal`` (NYUv2: H x W x 3 unit vectors, (0, 0, 0) missing).

``val`` is the papers' test split and our ``test``; our validation split is
``task.val_fraction`` of ``train``, drawn by a permutation seeded with ``task.val_seed``.

The first run checks every file and writes one contiguous array per split and folder into a
cache (``data.cache_dir``, else ``ROOT/.mtbench_cache``, else ``~/.cache/mtbench/<task>``):
float32 images [N, 3, H, W], int64 labels [N, H, W], float32 depth [N, 1, H, W] and normals
[N, 3, H, W]; training rows in the permutation's order, validation first, so both splits are
contiguous slices. Runs memory-map it; it is reused while no file's name, size or mtime changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from mtbench.data.base import HeadSpec, Labels, MetricColumn, Split, Task, TaskSpec, given_cache_dir
from mtbench.data.dense_metrics import METRICS, DenseMetrics
from mtbench.errors import MtbenchError
from mtbench.options import check_bool, check_choice, check_int, check_number

log = logging.getLogger("mtbench")

#: bump when the cache's content for the same files changes
CACHE_VERSION = 1

#: the metric columns of each task, in the table's order
COLUMNS: dict[str, tuple[MetricColumn, ...]] = {
    "segmentation": (
        MetricColumn("seg_miou", "seg mIoU (%)", True),
        MetricColumn("seg_pixacc", "seg pix acc (%)", True),
    ),
    "depth": (
        MetricColumn("depth_abs_err", "depth abs err", False),
        MetricColumn("depth_rel_err", "depth rel err", False),
    ),
    "normal": (
        MetricColumn("normal_mean", "normal mean (°)", False),
        MetricColumn("normal_median", "normal median (°)", False),
        MetricColumn("normal_within_11", "within 11.25° (%)", True),
        MetricColumn("normal_within_22", "within 22.5° (%)", True),
        MetricColumn("normal_within_30", "within 30° (%)", True),
    ),
}

#: the zoom factors of the peers' ``RandomScaleCrop``
SCALES = (1.0, 1.2, 1.5)


@dataclass(frozen=True)
class DenseDataset:
    """What differs between NYUv2 and Cityscapes."""

    name: str
    #: the tasks, in their canonical order
    tasks: tuple[str, ...]
    #: the segmentation classes allowed (``task.classes``); the first is the default
    classes: tuple[int, ...]
    #: the preprocessed resolution (H, W) of the peers' files (others are accepted if consistent)
    size: tuple[int, int]

    def seg_folder(self, classes: int) -> str:
        return "label" if self.name == "nyuv2" else f"label_{classes}"

    def folder(self, task: str, classes: int) -> str:
        return self.seg_folder(classes) if task == "segmentation" else task

    def known_folders(self) -> list[str]:
        """Every folder the cache takes when present: image, then each task's (all label sets)."""
        out = ["image"]
        for t in self.tasks:
            out += [self.seg_folder(c) for c in self.classes] if t == "segmentation" else [t]
        return out

    def columns(self, tasks: list[str]) -> tuple[MetricColumn, ...]:
        return tuple(c for t in tasks for c in COLUMNS[t])

    def layout(self, classes: int | None = None) -> str:
        folders = ["image"] + [self.folder(t, classes or self.classes[0]) for t in self.tasks]
        return f"expected data.root/{{train,val}}/{{{','.join(folders)}}}/<i>.npy, i = 0..N-1 (the MTAN-preprocessed {self.name}; docs/tasks/{self.name}.md)"


NYUV2 = DenseDataset("nyuv2", ("segmentation", "depth", "normal"), (13,), (288, 384))
CITYSCAPES = DenseDataset("cityscapes", ("segmentation", "depth"), (7, 19), (128, 256))
DATASETS = {d.name: d for d in (NYUV2, CITYSCAPES)}


# -- options ---------------------------------------------------------------------------------------


def selected_tasks(ds: DenseDataset, value: Any) -> list[str]:
    """``task.tasks``: null (all) or a list of the dataset's task names, in the canonical order."""
    if value is None:
        return list(ds.tasks)
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise MtbenchError(
            f"task.tasks must be a list, e.g. task.tasks=[depth] (got {value!r}); choose among {', '.join(ds.tasks)}"
        )
    names = [str(v) for v in value]
    for name in names:
        if name not in ds.tasks:
            raise MtbenchError(
                f"task.tasks: {name!r} is not a task of {ds.name}; choose among {', '.join(ds.tasks)} (e.g. task.tasks=[{ds.tasks[0]}])"
            )
    if not names or len(set(names)) != len(names):
        raise MtbenchError(
            f"task.tasks={names} must name at least one task, each once; choose among {', '.join(ds.tasks)}"
        )
    return [t for t in ds.tasks if t in names]


def _classes(ds: DenseDataset, cfg: Any) -> int:
    value = cfg.get("classes", ds.classes[0])
    if value is None:
        return ds.classes[0]
    if isinstance(value, bool) or not isinstance(value, int) or value not in ds.classes:
        raise MtbenchError(
            f"task.classes={value!r} is not allowed for {ds.name}; choose {' or '.join(map(str, ds.classes))}"
        )
    return int(value)


def check_options(ds: DenseDataset, cfg: DictConfig, files: bool = True) -> TaskSpec:
    """Every ``task.*`` option of a dense task, and (``files``) the folders and file counts
    under ``data.root``, without reading any array."""
    tasks = selected_tasks(ds, cfg.get("tasks"))
    classes = _classes(ds, cfg)
    check_bool("task.augment", cfg.get("augment", True))
    check_choice("task.metrics", cfg.get("metrics", "exact"), METRICS)
    check_number("task.val_fraction", cfg.get("val_fraction", 0.1), minimum=0, maximum=1, min_open=True, max_open=True)
    check_int("task.val_seed", cfg.get("val_seed", 0), minimum=0)
    check_number("task.normal_tol", cfg.get("normal_tol", 0.1), minimum=0, min_open=True)
    if files:
        find_files(ds, cfg.get("root"), required_folders(ds, tasks, classes), classes)
    return TaskSpec(
        num_tasks=len(tasks), metric_keys=tuple(c.key for c in ds.columns(tasks)), dense=True, task_names=tuple(tasks)
    )


def required_folders(ds: DenseDataset, tasks: list[str], classes: int) -> list[str]:
    return ["image"] + [ds.folder(t, classes) for t in tasks]


# -- the files ---------------------------------------------------------------------------------------

_NAME = re.compile(r"(\d+)\.npy")


def _listing(folder: Path) -> dict[int, Path]:
    out = {}
    for entry in os.scandir(folder):
        m = _NAME.fullmatch(entry.name)
        if m and entry.is_file():
            out[int(m.group(1))] = Path(entry.path)
    return out


def find_files(ds: DenseDataset, root: Any, required: list[str], classes: int) -> dict[str, dict[str, list[Path]]]:
    """``{split: {folder: [path of 0.npy, 1.npy, ...]}}`` for the required folders and every other
    known folder present; a missing folder or file, or counts that differ, is a one-line error."""
    layout = ds.layout(classes)
    if root is None or str(root) == "":
        raise MtbenchError(f"data.root is not set: give the folder that holds train/ and val/; {layout}")
    root = Path(str(root)).expanduser()
    if not root.is_dir():
        raise MtbenchError(f"data.root={root} is not a folder; {layout}")
    out: dict[str, dict[str, list[Path]]] = {}
    for split in ("train", "val"):
        out[split] = {}
        for folder in ds.known_folders():
            path = root / split / folder
            if not path.is_dir():
                if folder in required:
                    raise MtbenchError(f"{path} is missing; {layout}")
                continue
            files = _listing(path)
            n = len(files)
            if n == 0:
                raise MtbenchError(f"{path} holds no <i>.npy files; {layout}")
            missing = [i for i in range(n) if i not in files]
            if missing:
                raise MtbenchError(
                    f"{path}: {n} .npy files but {missing[0]}.npy is missing (the files must be numbered 0..{n - 1}); {layout}"
                )
            out[split][folder] = [files[i] for i in range(n)]
        counts = {f: len(v) for f, v in out[split].items()}
        first = counts["image"]
        for folder, n in counts.items():
            if n != first:
                raise MtbenchError(
                    f"{root / split}: image/ has {first} files but {folder}/ has {n}; every folder of a split needs the same files ({layout})"
                )
    return out


def _fingerprint(files: dict[str, dict[str, list[Path]]], val_seed: int) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION} val_seed={val_seed}".encode())
    for split, folders in files.items():
        for folder, paths in folders.items():
            h.update(f"|{split}/{folder}/{len(paths)}".encode())
            for p in paths:
                st = p.stat()
                h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _cache_root(ds: DenseDataset, root: Path, cache_dir: Any) -> Path:
    if cache_dir:
        return given_cache_dir(cache_dir)
    local = root / ".mtbench_cache"
    if os.access(root, os.W_OK) and (not local.exists() or os.access(local, os.W_OK)):
        return local
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "mtbench" / ds.name
    try:
        user.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MtbenchError(
            f"the cache folder {user} cannot be created ({e.strerror or e}); set data.cache_dir=<a writable folder>"
        ) from None
    return user


def _load_npy(path: Path, layout: str) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any failure means the file is not usable
        raise MtbenchError(f"{path} is not a readable .npy array ({type(e).__name__}: {e}); {layout}") from None
    if arr.dtype.kind not in "fiub":
        raise MtbenchError(f"{path} holds {arr.dtype} values, expected numbers; {layout}")
    return arr


def _check_file(kind: str, arr: np.ndarray, path: Path, hw: tuple[int, int], classes: int, layout: str) -> np.ndarray:
    """One file's array, checked, in the cache's layout (CHW, its dtype); ``kind`` is the folder
    (``label*`` for segmentation)."""
    h, w = hw
    expect = {"image": (h, w, 3), "depth": (h, w, 1), "normal": (h, w, 3)}.get(kind, (h, w))
    if kind == "depth" and arr.shape == (h, w):
        arr = arr[..., None]
    if arr.shape != expect:
        raise MtbenchError(
            f"{path} has shape {arr.shape}, expected {expect} (as {path.parent.name}/0.npy of train); {layout}"
        )
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise MtbenchError(f"{path} holds NaN or infinite values; {layout}")
    if kind.startswith("label"):
        if arr.dtype.kind == "f" and not (np.floor(arr) == arr).all():
            raise MtbenchError(f"{path}: labels must be whole numbers (class indices, -1 unlabelled); {layout}")
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < -1 or hi >= classes:
            raise MtbenchError(
                f"{path}: labels range over [{lo}, {hi}] but {kind}/ holds {classes} classes: values must be -1 (unlabelled) or 0..{classes - 1}; {layout}"
            )
        return arr.astype(np.int64)
    if kind == "depth" and arr.size and float(arr.min()) < 0:
        raise MtbenchError(f"{path}: negative depth ({float(arr.min()):g}); depth must be >= 0 (0 = missing); {layout}")
    return np.ascontiguousarray(np.moveaxis(arr, -1, 0), dtype=np.float32)


def _cache_shape(kind: str, n: int, hw: tuple[int, int]) -> tuple[tuple[int, ...], Any]:
    h, w = hw
    if kind == "image":
        return (n, 3, h, w), np.float32
    if kind == "depth":
        return (n, 1, h, w), np.float32
    if kind == "normal":
        return (n, 3, h, w), np.float32
    return (n, h, w), np.int64


def build_cache(
    ds: DenseDataset, root: Path, files: dict[str, dict[str, list[Path]]], val_seed: int, cache_dir: Any
) -> Path:
    """The cache folder for these files (built when missing); see the module docstring."""
    fp = _fingerprint(files, val_seed)
    base = _cache_root(ds, root, cache_dir)
    final = base / f"{ds.name}-{fp}"
    if (final / "meta.json").is_file():
        return final
    layout = ds.layout()
    first = _load_npy(files["train"]["image"][0], layout)
    if first.ndim != 3 or first.shape[2] != 3:
        raise MtbenchError(f"{files['train']['image'][0]} has shape {first.shape}, expected (H, W, 3); {layout}")
    hw = (int(first.shape[0]), int(first.shape[1]))
    if hw != ds.size:
        log.info(f"{ds.name}: images are {hw[0]}x{hw[1]} (the peers' files are {ds.size[0]}x{ds.size[1]})")
    need = sum(
        int(np.prod(_cache_shape(k, len(v), hw)[0])) * np.dtype(_cache_shape(k, len(v), hw)[1]).itemsize
        for split in files.values()
        for k, v in split.items()
    )
    free = shutil.disk_usage(base).free if base.exists() else None
    if free is not None and free < need:
        raise MtbenchError(
            f"not enough disk space for the {ds.name} cache in {base}: needs {need / 1e9:.2f} GB, {free / 1e9:.2f} GB free; set data.cache_dir=<another folder>"
        )
    tmp = base / f".{ds.name}-{fp}.tmp-{os.getpid()}"
    log.info(
        f"{ds.name}: checking and caching {sum(len(v['image']) for v in files.values())} examples ({need / 1e9:.2f} GB) in {final}; only the first run does this"
    )
    meta: dict[str, Any] = {
        "version": CACHE_VERSION,
        "fingerprint": fp,
        "val_seed": val_seed,
        "hw": list(hw),
        "splits": {},
    }
    worst = {"deviation": 0.0, "file": None}
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        for split, folders in files.items():
            n = len(folders["image"])
            order = (
                torch.randperm(n, generator=torch.Generator().manual_seed(int(val_seed))).tolist()
                if split == "train"
                else list(range(n))
            )
            meta["splits"][split] = {"n": n, "order": order, "folders": list(folders)}
            for kind, paths in folders.items():
                shape, dtype = _cache_shape(kind, n, hw)
                out = np.lib.format.open_memmap(tmp / f"{split}_{kind}.npy", mode="w+", dtype=dtype, shape=shape)
                classes = int(kind.split("_")[1]) if kind.startswith("label_") else ds.classes[0]
                for row, i in enumerate(order):
                    arr = _check_file(kind, _load_npy(paths[i], layout), paths[i], hw, classes, layout)
                    if kind == "normal":
                        norm = np.sqrt((arr.astype(np.float64) ** 2).sum(0))
                        valid = (arr != 0).any(0)
                        if valid.any():
                            dev = float(np.abs(norm[valid] - 1).max())
                            if dev > worst["deviation"]:
                                worst = {"deviation": dev, "file": str(paths[i])}
                    out[row] = arr
                out.flush()
                del out
        meta["normal_worst"] = worst
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():  # another process finished it first: use theirs
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except MtbenchError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MtbenchError(
            f"cannot write the {ds.name} cache in {base} ({e.strerror or e}); set data.cache_dir=<a writable folder>"
        ) from None
    return final


def _mmap(path: Path) -> torch.Tensor:
    # copy-on-write: a writable view for torch; nothing is ever written back to the file
    return torch.from_numpy(np.load(path, mmap_mode="c"))


# -- the task ---------------------------------------------------------------------------------------


@dataclass
class DenseTask(Task):
    """NYUv2 / Cityscapes: per-task dense outputs {name: [B, C_t, H, W]} (see the module
    docstring and docs/tasks/nyuv2.md)."""

    dataset: DenseDataset = NYUV2
    classes: int = 13
    augment_on: bool = True
    metrics_mode: str = "exact"
    columns: tuple[MetricColumn, ...] = field(default_factory=tuple)

    #: dense outputs: the models build per-task dense heads
    dense = True

    def __post_init__(self) -> None:
        self.metric_columns = self.columns or self.dataset.columns(self.task_names)  # type: ignore[misc]

    def head_spec(self) -> HeadSpec:
        widths = {"segmentation": self.classes, "depth": 1, "normal": 3}
        return HeadSpec(outputs={t: widths[t] for t in self.task_names})

    # training ---------------------------------------------------------------------------------

    def losses(self, outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([dense_loss(t, outputs[t], labels[t]) for t in self.task_names])

    def augment_batch(self, x: torch.Tensor, labels: Labels) -> tuple[torch.Tensor, Labels]:
        if not self.augment_on:
            return x, labels
        assert isinstance(labels, dict)
        return random_scale_crop_flip(x, labels, self.augment_generator)

    # evaluation --------------------------------------------------------------------------------

    def accumulator(self) -> DenseMetrics:
        return DenseMetrics(self.task_names, self.classes, self.metrics_mode)

    def scores(self, outputs: Any) -> Any:
        raise NotImplementedError("dense tasks are evaluated batch by batch (Task.accumulator)")

    def evaluate(self, scores: Any, labels: Labels) -> dict[str, Any]:
        raise NotImplementedError("dense tasks are evaluated batch by batch (Task.accumulator)")


def dense_loss(task: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One task's loss of a batch: ``segmentation`` cross-entropy over the pixels whose label is
    not -1; ``depth`` L1 over the pixels whose target is not 0; ``normal`` 1 - cosine of the
    L2-normalised prediction over the pixels whose target is not (0, 0, 0). Means over the
    valid pixels of the batch (0 when there is none)."""
    if task == "segmentation":
        target = target.long()
        n = (target != -1).sum().clamp_min(1)
        return F.cross_entropy(pred.float(), target, ignore_index=-1, reduction="sum") / n
    if task == "depth":
        valid = (target != 0).to(pred.dtype)
        return ((pred.float() - target).abs() * valid).sum() / valid.sum().clamp_min(1)
    if task == "normal":
        valid = (target != 0).any(1, keepdim=True).to(torch.float32)
        p = F.normalize(pred.float(), dim=1)
        return 1 - (p * target * valid).sum() / valid.sum().clamp_min(1)
    raise ValueError(f"unknown dense task {task!r}")


def valid_counts(task: str, target: torch.Tensor) -> torch.Tensor:
    """How many elements :func:`dense_loss` averages ``task``'s loss over in a batch (its valid
    pixels, by the same rules), as a 0-d tensor: what a rank's local loss is weighted by when
    a batch is split over several processes."""
    if task == "segmentation":
        return (target.long() != -1).sum()
    if task == "depth":
        return (target != 0).sum()
    if task == "normal":
        return (target != 0).any(1).sum()
    raise ValueError(f"unknown dense task {task!r}")


def _zoom(t: torch.Tensor, box: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """The crop ``box`` = (row, column, height, width) of ``t`` [C, H, W], resized back to H x W."""
    i, j, ch, cw = box
    crop = t[None, :, i : i + ch, j : j + cw]
    size = (t.shape[-2], t.shape[-1])
    if mode == "nearest":
        return F.interpolate(crop, size=size, mode="nearest")[0]
    return F.interpolate(crop, size=size, mode="bilinear", align_corners=True)[0]


def random_scale_crop_flip(
    x: torch.Tensor, labels: dict[str, torch.Tensor], generator: torch.Generator | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The peers' training augmentation, per example: a zoom factor ``s`` drawn from
    :data:`SCALES`, a crop of ``int(H / s) x int(W / s)`` at a uniformly drawn corner, resized
    back to ``H x W`` (image and normals bilinear with aligned corners, labels and depth nearest),
    depth divided by ``s``; then with probability 1/2 a left-right flip that negates the normals'
    x component. Draws per example, from ``generator`` (host), in this order: the scale's index,
    the crop's row, its column, the flip's coin."""
    b, _, h, w = x.shape
    xs, outs = [], {k: [] for k in labels}
    for e in range(b):
        s = SCALES[int(torch.randint(len(SCALES), (1,), generator=generator))]
        ch, cw = int(h / s), int(w / s)
        i = int(torch.randint(h - ch + 1, (1,), generator=generator))
        j = int(torch.randint(w - cw + 1, (1,), generator=generator))
        flip = bool(torch.rand(1, generator=generator) < 0.5)

        box = (i, j, ch, cw)
        img = _zoom(x[e], box, "bilinear")
        out = {}
        for k, v in labels.items():
            if k == "segmentation":
                out[k] = _zoom(v[e][None].float(), box, "nearest")[0].to(v.dtype)
            elif k == "depth":
                out[k] = _zoom(v[e], box, "nearest") / s
            else:
                out[k] = _zoom(v[e], box, "bilinear")
        if flip:
            img = img.flip(-1)
            out = {k: v.flip(-1) for k, v in out.items()}
            if "normal" in out:
                out["normal"] = torch.cat([-out["normal"][:1], out["normal"][1:]])
        xs.append(img)
        for k in outs:
            outs[k].append(out[k])
    return torch.stack(xs), {k: torch.stack(v) for k, v in outs.items()}


def build_dense(ds: DenseDataset, cfg: DictConfig) -> DenseTask:
    """The task of ``ds`` as ``cfg`` (the ``task`` node) configures it."""
    check_options(ds, cfg, files=False)
    tasks = selected_tasks(ds, cfg.get("tasks"))
    classes = _classes(ds, cfg)
    root = Path(str(cfg.get("root") or "")).expanduser()
    files = find_files(ds, cfg.get("root"), required_folders(ds, tasks, classes), classes)
    val_seed = int(cfg.get("val_seed", 0))
    cache = build_cache(ds, root, files, val_seed, cfg.get("cache_dir"))
    meta = json.loads((cache / "meta.json").read_text(encoding="utf-8"))
    tol = float(cfg.get("normal_tol", 0.1))
    worst = meta.get("normal_worst") or {}
    if "normal" in tasks and worst.get("file") and worst["deviation"] > tol:
        raise MtbenchError(
            f"{worst['file']}: a valid normal has length {1 - worst['deviation']:.3f} or {1 + worst['deviation']:.3f}, not 1 (within task.normal_tol={tol:g}); normals must be unit vectors, (0, 0, 0) where missing (or raise task.normal_tol)"
        )
    folders = {t: ds.folder(t, classes) for t in tasks}

    def split(name: str, rows: slice | None = None) -> Split:
        images = _mmap(cache / f"{name}_image.npy")
        labels = {t: _mmap(cache / f"{name}_{f}.npy") for t, f in folders.items()}
        if rows is not None:
            images, labels = images[rows], {t: v[rows] for t, v in labels.items()}
        return Split(images, labels)

    n_train = int(meta["splits"]["train"]["n"])
    frac = float(cfg.get("val_fraction", 0.1))
    n_val = max(1, int(round(frac * n_train)))
    if n_val >= n_train:
        raise MtbenchError(
            f"task.val_fraction={frac:g} leaves no training images ({n_train} in train/); lower it or add images"
        )
    task = DenseTask(
        ds.name,
        tasks,
        train=split("train", slice(n_val, None)),
        val=split("train", slice(0, n_val)),
        test=split("val"),
        dataset=ds,
        classes=classes,
        augment_on=bool(cfg.get("augment", True)),
        metrics_mode=str(cfg.get("metrics", "exact")),
    )
    log.info(
        f"{ds.name}: {len(task.train)} train / {len(task.val)} validation (of train/, val_seed={val_seed}) / {len(task.test)} test (val/) examples, tasks {', '.join(tasks)}"
    )
    return task
