"""CIFAR-100's files: the python version, ``<root>/cifar-100-python/{train,test,meta}`` (as the
official tarball extracts and as torchvision's ``CIFAR100(root)`` stores it) or the three files
directly in ``<root>``, read without running any code they name (an unpickler that builds only
arrays, lists and strings), and the seeded hold-out of the validation images."""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtbench.errors import MtbenchError

log = logging.getLogger("mtbench")

FOLDER = "cifar-100-python"
FILES = ("train", "test", "meta")
LAYOUT = (
    f"expected <root>/{FOLDER}/{{train,test,meta}} (CIFAR-100 python version: pickles with data, "
    f"fine_labels, coarse_labels; meta with fine_label_names, coarse_label_names) or those files directly in <root>"
)
NUM_FINE, NUM_COARSE = 100, 20


# -- reading the pickles ---------------------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only (what the CIFAR files hold), so a
    pickle from elsewhere cannot run code. NumPy 1 and NumPy 2 name the same functions in
    different modules (``numpy.core`` / ``numpy._core``); a file re-saved by NumPy 2 with
    pickle protocol 5 rebuilds its arrays with ``numeric._frombuffer`` (bytes, dtype, shape,
    order: no code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core") :]
        elif module.startswith("numpy._core") and not hasattr(np, "_core"):
            module = "numpy.core" + module[len("numpy._core") :]
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 - any failure means the file is not usable
        raise MtbenchError(
            f"CIFAR-100 file {path} is corrupt or not a CIFAR-100 pickle ({type(e).__name__}: {e}); {LAYOUT}"
        ) from None
    if not isinstance(obj, dict):
        raise MtbenchError(f"CIFAR-100 file {path} holds a {type(obj).__name__}, not a dict; {LAYOUT}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def find_cifar100(root: str | Path) -> Path:
    """The folder holding ``train``, ``test`` and ``meta`` under ``root`` (either layout)."""
    root = Path(root).expanduser()
    for folder in (root / FOLDER, root):
        if all((folder / f).is_file() for f in FILES):
            return folder
    for folder in (root / FOLDER, root):  # a partial copy: name what is missing
        present = [f for f in FILES if (folder / f).is_file()]
        if present:
            missing = [str(folder / f) for f in FILES if f not in present]
            raise MtbenchError(f"CIFAR-100 files missing: {', '.join(missing)}; {LAYOUT}")
    raise MtbenchError(
        f"no CIFAR-100 in data.root={root}: {root / FOLDER}/{{train,test,meta}} not found; {LAYOUT}; "
        f"or set data.download=true to fetch it there"
    )


def _split_arrays(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d = _read_pickle(path)
    missing = [k for k in ("data", "fine_labels", "coarse_labels") if k not in d]
    if missing:
        raise MtbenchError(f"CIFAR-100 file {path} lacks key(s) {', '.join(missing)}; {LAYOUT}")
    data = np.asarray(d["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise MtbenchError(
            f"CIFAR-100 file {path}: data is {data.dtype} {data.shape}, expected uint8 [N, 3072]; {LAYOUT}"
        )
    n = data.shape[0]
    labels = []
    for key, classes in (("fine_labels", NUM_FINE), ("coarse_labels", NUM_COARSE)):
        try:
            y = torch.as_tensor(np.asarray(d[key], dtype=np.int64))
        except (TypeError, ValueError):
            raise MtbenchError(f"CIFAR-100 file {path}: {key} is not a list of integers; {LAYOUT}") from None
        if y.shape != (n,) or (n and (int(y.min()) < 0 or int(y.max()) >= classes)):
            raise MtbenchError(f"CIFAR-100 file {path}: {key} must hold {n} integers in [0, {classes}); {LAYOUT}")
        labels.append(y)
    images = torch.from_numpy(np.ascontiguousarray(data)).view(n, 3, 32, 32)
    return images, labels[0], labels[1]


@dataclass
class Cifar100:
    """The two files of CIFAR-100 in memory: uint8 images [N, 3, 32, 32] and int64 labels."""

    train_images: torch.Tensor
    train_fine: torch.Tensor
    train_coarse: torch.Tensor
    test_images: torch.Tensor
    test_fine: torch.Tensor
    test_coarse: torch.Tensor
    fine_names: list[str]
    coarse_names: list[str]
    folder: Path


def load_cifar100(root: str | Path | None, download: bool = False) -> Cifar100:
    """Read CIFAR-100 from ``root`` (see :data:`LAYOUT`); with ``download`` fetch it there first
    (torchvision's downloader) when it is not there yet."""
    if root is None or str(root) == "":
        raise MtbenchError(
            f"data.root is not set: give the folder that holds {FOLDER}/ (data.root=/path), or add data.download=true to fetch it there"
        )
    root = Path(str(root)).expanduser()
    if download and not (all((root / FOLDER / f).is_file() for f in FILES) or all((root / f).is_file() for f in FILES)):
        import torchvision

        log.info(f"downloading CIFAR-100 into {root} (torchvision)")
        try:
            torchvision.datasets.CIFAR100(str(root), train=True, download=True)
        except Exception as e:  # noqa: BLE001
            raise MtbenchError(
                f"data.download=true: could not download CIFAR-100 into {root} ({type(e).__name__}: {e})"
            ) from None
    folder = find_cifar100(root)
    train = _split_arrays(folder / "train")
    test = _split_arrays(folder / "test")
    meta = _read_pickle(folder / "meta")
    names = []
    for key, count in (("fine_label_names", NUM_FINE), ("coarse_label_names", NUM_COARSE)):
        value = meta.get(key)
        if not isinstance(value, (list, tuple)) or len(value) != count:
            raise MtbenchError(f"CIFAR-100 file {folder / 'meta'}: {key} must be a list of {count} names; {LAYOUT}")
        names.append([str(v) for v in value])
    return Cifar100(*train, *test, fine_names=names[0], coarse_names=names[1], folder=folder)


def split_train_val(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val) of a random hold-out of ``val_size`` of ``n`` training images, each sorted."""
    if not 0 < val_size < n:
        raise MtbenchError(f"task.val_size={val_size} must be between 1 and {n - 1} (the training file has {n} images)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return order[val_size:].sort().values, order[:val_size].sort().values
