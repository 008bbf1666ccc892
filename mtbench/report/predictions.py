"""``predictions.png``: what the dense tasks' combiners predict, before anyone reads a number.

Each completed run of a dense task leaves ``predictions.pt`` (a plain dict of tensors from the
reported model on a few fixed test images: ``index``, ``image`` uint8 [N, 3, H, W] and, per
trained task ``t``, ``t`` and ``t_target``). The figure has one line per (image, task): the
input, the ground truth, then each row of the table (its first seed's run): segmentation in a
fixed colour map, depth in one colour scale per image (the ground truth's valid range), normals
as RGB (n + 1) / 2. Pixels without ground truth (label -1, depth 0, normal (0, 0, 0)) are grey.

The file is untrusted: it is read with ``torch.load(weights_only=True)`` and every shape and
dtype is checked; a run whose file does not pass is left out with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mtbench.files import atomic_write
from mtbench.report.load import row_keys

PREDICTIONS = "predictions.pt"
#: the dense tasks, in their canonical order
TASKS = ("segmentation", "depth", "normal")
#: the grey of pixels without ground truth (RGB, 0..1)
GREY = (0.5, 0.5, 0.5)
#: the segmentation colours, class c gets PALETTE[c % 20] (matplotlib's tab20, fixed here)
PALETTE = np.array(
    [
        (31, 119, 180), (174, 199, 232), (255, 127, 14), (255, 187, 120), (44, 160, 44),
        (152, 223, 138), (214, 39, 40), (255, 152, 150), (148, 103, 189), (197, 176, 213),
        (140, 86, 75), (196, 156, 148), (227, 119, 194), (247, 182, 210), (127, 127, 127),
        (199, 199, 199), (188, 189, 34), (219, 219, 141), (23, 190, 207), (158, 218, 229),
    ],
    dtype=np.float64,
) / 255.0  # fmt: skip


def load_predictions(path: Path | str) -> dict[str, np.ndarray]:
    """The checked contents of one ``predictions.pt`` as NumPy arrays; ValueError naming the
    file and what is wrong otherwise."""
    import torch

    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ValueError(f"{path}: not a readable predictions file ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(raw).__name__}")

    def tensor(key: str, dtype, ndim: int):
        value = raw.get(key)
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: '{key}' is missing or not a tensor")
        if value.dtype != dtype or value.ndim != ndim:
            raise ValueError(
                f"{path}: '{key}' must be {dtype} with {ndim} dims, got {value.dtype} {tuple(value.shape)}"
            )
        return value

    image = tensor("image", torch.uint8, 4)
    n, c, h, w = image.shape
    if c != 3 or n == 0:
        raise ValueError(f"{path}: 'image' must be [N, 3, H, W] with N > 0, got {tuple(image.shape)}")
    index = tensor("index", torch.int64, 1)
    if index.shape[0] != n:
        raise ValueError(f"{path}: 'index' has {index.shape[0]} entries for {n} images")
    out = {"index": index.numpy(), "image": image.permute(0, 2, 3, 1).numpy()}
    shapes = {
        "segmentation": (torch.int64, (n, h, w)),
        "depth": (torch.float32, (n, h, w)),
        "normal": (torch.float32, (n, 3, h, w)),
    }
    for task, (dtype, shape) in shapes.items():
        if task not in raw and f"{task}_target" not in raw:
            continue
        for key in (task, f"{task}_target"):
            value = tensor(key, dtype, len(shape))
            if tuple(value.shape) != shape:
                raise ValueError(f"{path}: '{key}' must have shape {list(shape)}, got {list(value.shape)}")
            if dtype == torch.float32 and not bool(torch.isfinite(value).all()):
                raise ValueError(f"{path}: '{key}' has non-finite values")
            out[key] = value.numpy()
    if not any(t in out for t in TASKS):
        raise ValueError(f"{path}: no task's predictions (expected some of {', '.join(TASKS)})")
    return out


def _segmentation_rgb(labels: np.ndarray, missing: np.ndarray) -> np.ndarray:
    rgb = PALETTE[np.clip(labels, 0, None) % len(PALETTE)]
    rgb[missing] = GREY
    return rgb


def _depth_rgb(depth: np.ndarray, missing: np.ndarray, lo: float, hi: float) -> np.ndarray:
    from matplotlib import colormaps

    scaled = np.clip((depth - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    rgb = colormaps["viridis"](scaled)[..., :3]
    rgb[missing] = GREY
    return rgb


def _normal_rgb(normal: np.ndarray, missing: np.ndarray) -> np.ndarray:
    rgb = np.clip((np.transpose(normal, (1, 2, 0)) + 1.0) / 2.0, 0.0, 1.0)
    rgb[missing] = GREY
    return rgb


def panels(pred: dict[str, np.ndarray], task: str, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(ground truth, prediction) of image ``i`` for ``task`` as RGB in 0..1, missing pixels grey."""
    target, value = pred[f"{task}_target"][i], pred[task][i]
    if task == "segmentation":
        missing = target < 0
        return _segmentation_rgb(target, missing), _segmentation_rgb(value, missing)
    if task == "depth":
        missing = target == 0
        valid = target[~missing]
        lo, hi = (float(valid.min()), float(valid.max())) if valid.size else (0.0, 1.0)
        return _depth_rgb(target, missing, lo, hi), _depth_rgb(value, missing, lo, hi)
    missing = ~np.any(target != 0, axis=0)
    return _normal_rgb(target, missing), _normal_rgb(value, missing)


def collect(runs: pd.DataFrame) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(row label, predictions) per row of the table that has a readable ``predictions.pt`` (its
    first seed's); rows whose images differ from the first row's are left out with a warning."""
    done = runs[runs["status"] == "completed"] if len(runs) else runs
    out: list[tuple[str, dict[str, np.ndarray]]] = []
    for name, variant in row_keys(done):
        sub = done[(done["combiner"] == name) & (done["variant"] == variant)].sort_values(
            "seed", key=lambda s: s.map(str)
        )
        for _, run in sub.iterrows():
            path = Path(run["run_dir"]) / PREDICTIONS
            if not path.is_file():
                continue
            try:
                pred = load_predictions(path)
            except ValueError as e:
                warnings.warn(f"predictions.png: skipping {e}", stacklevel=2)
                continue
            if out and (
                pred["image"].shape != out[0][1]["image"].shape or not np.array_equal(pred["index"], out[0][1]["index"])
            ):
                warnings.warn(
                    f"predictions.png: skipping {path}: not the same test images as the other runs", stacklevel=2
                )
                continue
            out.append((str(run.get("label", name)), pred))
            break
    return out


def predictions_figure(rows: list[tuple[str, dict[str, np.ndarray]]]):
    """The grid: one line per (image, task); columns input, ground truth, each row's prediction."""
    from matplotlib.figure import Figure

    first = rows[0][1]
    tasks = [t for t in TASKS if all(t in p and f"{t}_target" in p for _, p in rows)]
    n = first["image"].shape[0]
    h, w = first["image"].shape[1:3]
    ncols = 2 + len(rows)
    nlines = n * max(len(tasks), 1)
    size = 1.6
    fig = Figure(figsize=(size * ncols * w / max(h, w) + 1.0, size * nlines * h / max(h, w) + 0.5))
    axes = fig.subplots(nlines, ncols, squeeze=False)
    fig.subplots_adjust(left=0.08, right=0.99, bottom=0.01, top=0.95, wspace=0.04, hspace=0.08)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for i in range(n):
        for j, task in enumerate(tasks):
            line = axes[i * len(tasks) + j]
            line[0].imshow(first["image"][i])
            line[0].set_ylabel(f"#{int(first['index'][i])} {task}", fontsize=8)
            truth, _ = panels(first, task, i)
            line[1].imshow(truth)
            for k, (_, pred) in enumerate(rows):
                line[2 + k].imshow(panels(pred, task, i)[1])
    for k, title in enumerate(["input", "ground truth"] + [label for label, _ in rows]):
        axes[0][k].set_title(title, fontsize=9)
    return fig


def draw_predictions(folder: Path | str, runs: pd.DataFrame) -> list[Path]:
    """Write ``predictions.png`` in ``folder`` when some run has a readable ``predictions.pt``;
    return the files written."""
    rows = collect(runs)
    if not rows:
        return []
    fig = predictions_figure(rows)
    path = Path(folder) / "predictions.png"
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100), binary=True)
    return [path]
