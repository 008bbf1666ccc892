"""CelebA's decoded cache: every image decoded once into uint8 ``.npy`` files per split, with
the normalisation statistics and checksums in ``meta.json`` (the "complete" marker).

``<cache>/celeba-<S>px-<fingerprint>/{train,val,test}.npy`` ([N, 3, S, S]) and ``meta.json``.
The fingerprint covers everything the content depends on (``data/celeba.py``'s docstring).

Verification, on every load: ``meta.json`` holds the SHA-256 of each 4 MiB block of every split
file and a SHA-256 of its own content (the statistics, counts and block digests included). A
load hashes every block of every split (one sequential read of the cache, spread over
``data.workers`` threads) and the metadata; any difference (a flipped byte anywhere, a file of
the same size with other content, statistics edited in ``meta.json``) makes the cache invalid:
it is removed and rebuilt, never used. This guards against damage and stray edits, not against
someone who rewrites the data and recomputes the digests (the cache holds pixels and numbers
only: nothing in it can run code).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import sys
import time
import uuid
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from mtbench.data.base import given_cache_dir
from mtbench.errors import MtbenchError

log = logging.getLogger("mtbench")

SPLITS = ("train", "val", "test")  # partition values 0, 1, 2
#: bump when the cache's content for the same inputs changes (decoding, crop, file format)
CACHE_FORMAT = 1
CROP = "center-square"
META = "meta.json"
#: images whose statistics give the normalisation mean / std (evenly spaced over train)
STATS_IMAGES = 20000
#: bytes per checksummed block of a split file
BLOCK = 4 << 20


def _workers(workers: int | None = None) -> int:
    if workers:
        return int(workers)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def block_digests(path: Path, workers: int | None = None) -> list[str]:
    """The SHA-256 of each :data:`BLOCK` bytes of ``path`` (hashed in parallel threads)."""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:

        def one(i: int) -> str:
            return hashlib.sha256(os.pread(fd, BLOCK, i * BLOCK)).hexdigest()

        with ThreadPoolExecutor(_workers(workers)) as pool:
            return list(pool.map(one, range(max(1, math.ceil(size / BLOCK)))))
    finally:
        os.close(fd)


def meta_digest(meta: dict[str, Any]) -> str:
    """The SHA-256 of ``meta.json``'s content without its own ``meta_sha256`` entry."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def verify(folder: Path, meta: dict[str, Any], workers: int | None = None) -> str | None:
    """Why the cache in ``folder`` does not match its checksums, or None when it does."""
    if meta.get("meta_sha256") != meta_digest(meta):
        return f"{folder / META} differs from its checksum"
    sums = meta.get("checksums")
    if not isinstance(sums, dict) or set(sums) != set(SPLITS):
        return f"{folder / META} has no checksums (built by an earlier version)"
    for split in SPLITS:
        if block_digests(folder / f"{split}.npy", workers) != sums[split]:
            return f"{folder / split}.npy differs from its checksum"
    return None


def fingerprint(
    files: Any,
    names: list[str],
    attr_raw: bytes,
    partition_raw: bytes,
    image_size: int,
    preprocess: str = "center_crop",
) -> str:
    """A hash of everything the cache's content depends on; stats every listed image (a listed
    image that is missing is an error naming it and its line)."""
    h = hashlib.sha256()
    crop = CROP if preprocess == "center_crop" else preprocess  # the default's caches stay valid
    h.update(f"mtbench-celeba format={CACHE_FORMAT} crop={crop} size={image_size}\n".encode())
    h.update(hashlib.sha256(attr_raw).digest())
    h.update(hashlib.sha256(partition_raw).digest())
    folder = str(files.images)
    for i, name in enumerate(names):
        try:
            st = os.stat(os.path.join(folder, name))
        except OSError:
            raise MtbenchError(f"{files.images / name}: listed in {files.attr} (line {i + 3}) but missing") from None
        h.update(b"%s %d %d\n" % (name.encode(), st.st_size, st.st_mtime_ns))
    return h.hexdigest()


def cache_root(files: Any, cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``<base>/.mtbench_cache`` if writable, else the user cache."""
    if cache_dir:
        return given_cache_dir(cache_dir)
    local = files.base / ".mtbench_cache"
    try:
        local.mkdir(exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "mtbench" / "celeba"
    why = f"{local} is a file, not a folder" if local.is_file() else f"{files.base} is not writable"
    log.info(f"celeba: {why}; the cache goes to {user} (data.cache_dir= moves it)")
    try:
        user.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MtbenchError(
            f"the CelebA cache folder {user} cannot be created ({e.strerror or e}); set data.cache_dir=<a writable folder>"
        ) from None
    return user


def _expected_bytes(path: Path, shape: tuple[int, ...]) -> bool:
    """Is ``path`` a complete .npy of uint8 ``shape``?"""
    try:
        arr = np.load(path, mmap_mode="r")
        ok = arr.shape == tuple(shape) and arr.dtype == np.uint8 and path.stat().st_size == arr.offset + arr.nbytes
        del arr
        return ok
    except (OSError, ValueError, EOFError):
        return False


def _usable_stats(meta: dict[str, Any]) -> bool:
    """Does ``meta`` hold a per-channel ``mean`` (3 finite numbers) and ``std`` (3 finite numbers > 0)?"""

    def numbers(key: str) -> list[float] | None:
        value = meta.get(key)
        if not isinstance(value, list) or len(value) != 3:
            return None
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
            return None
        return [float(v) for v in value]

    mean, std = numbers("mean"), numbers("std")
    return mean is not None and std is not None and all(v > 0 for v in std)


def _valid_cache(
    folder: Path, fp: str, image_size: int, counts: dict[str, int], workers: int | None = None
) -> dict[str, Any] | None:
    """The cache's meta.json if ``folder`` is a complete cache for these inputs whose content
    matches its checksums (:func:`verify`), else None."""
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not _usable_stats(meta):
        return None
    if meta.get("format") != CACHE_FORMAT or meta.get("fingerprint") != fp or meta.get("image_size") != image_size:
        return None
    for split, n in counts.items():
        if meta.get("counts", {}).get(split) != n or not _expected_bytes(
            folder / f"{split}.npy", (n, 3, image_size, image_size)
        ):
            return None
    why = verify(folder, meta, workers)
    if why is not None:
        log.warning(f"celeba: {why}; the cache is not used (it is rebuilt)")
        return None
    return meta


def decode_image(path: str | os.PathLike, size: int, preprocess: str = "center_crop") -> np.ndarray:
    """One image -> uint8 [size, size, 3]: the centred square, resized (bilinear, antialiased);
    or (``preprocess``) the whole image, bilinear (``full``) or nearest neighbour (``full_nearest``)."""
    from PIL import Image

    if preprocess != "center_crop":
        with Image.open(path) as im:
            im = im.convert("RGB")
            resample = Image.Resampling.NEAREST if preprocess == "full_nearest" else Image.Resampling.BILINEAR
            return np.asarray(im.resize((size, size), resample))
    with Image.open(path) as im:
        w, h = im.size
        side = min(w, h)
        # JPEG: decode at the smallest DCT scale (1/2, 1/4, 1/8) that keeps the square >= size
        im.draft("RGB", (math.ceil(size * w / side), math.ceil(size * h / side)))
        im = im.convert("RGB")
        w, h = im.size
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        out = im.resize((size, size), Image.Resampling.BILINEAR, box=box)
        return np.asarray(out)


class _Unreadable(Exception):
    def __init__(self, path: Path, reason: str):
        super().__init__(reason)
        self.path = path
        self.reason = reason


def _decode_into(
    out: np.ndarray, folder: Path, names: list[str], start: int, size: int, preprocess: str = "center_crop"
) -> int:
    for k, name in enumerate(names):
        path = folder / name
        try:
            out[start + k] = (
                decode_image(path, size) if preprocess == "center_crop" else decode_image(path, size, preprocess)
            ).transpose(2, 0, 1)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
            raise _Unreadable(path, " ".join(f"{type(e).__name__}: {e}".split())) from None
    return len(names)


def _stats(train: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean / std in [0, 1] units over up to STATS_IMAGES evenly spaced images."""
    n = train.shape[0]
    idx = np.unique(np.linspace(0, n - 1, min(n, STATS_IMAGES)).round().astype(np.int64))
    s = np.zeros(3)
    s2 = np.zeros(3)
    count = 0
    for start in range(0, len(idx), 1000):
        x = train[idx[start : start + 1000]].astype(np.float64) / 255.0
        s += x.sum(axis=(0, 2, 3))
        s2 += np.square(x).sum(axis=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / count
    std = np.sqrt(np.maximum(s2 / count - mean**2, 0.0))
    return mean.tolist(), np.maximum(std, 1e-3).tolist()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):  # gone, or not a pid of this system
        return False
    except OSError:
        return True
    return True


def _remove_stale(root: Path, prefix: str) -> None:
    """Temporary folders of builds that died (same host, dead pid; other hosts: older than a day)."""
    host = socket.gethostname()
    for tmp in root.glob(f".{prefix}*.tmp-*"):
        try:
            owner, pid = tmp.name.rsplit(".tmp-", 1)[1].rsplit("-", 2)[:2]
            dead = (owner == host and not _pid_alive(int(pid))) or (
                owner != host and time.time() - tmp.stat().st_mtime > 86400
            )
        except (ValueError, OSError):
            continue
        if dead:
            log.info(f"celeba: removing the partial cache {tmp} (a build that did not finish)")
            shutil.rmtree(tmp, ignore_errors=True)


def build_cache(
    files: Any,
    names: list[str],
    partition: np.ndarray,
    fp: str,
    image_size: int,
    root: Path,
    workers: int | None = None,
    progress: bool | None = None,
    preprocess: str = "center_crop",
) -> Path:
    """Decode every image once into ``root/celeba-<S>px-<fp16>/`` (``celeba-<S>px-<preprocess>-<fp16>``
    for a ``preprocess`` other than the default; or reuse it); return the folder."""
    prefix = f"celeba-{image_size}px-" if preprocess == "center_crop" else f"celeba-{image_size}px-{preprocess}-"
    final = root / f"{prefix}{fp[:16]}"
    counts = {split: int((partition == s).sum()) for s, split in enumerate(SPLITS)}
    if _valid_cache(final, fp, image_size, counts, workers) is not None:
        return final
    if final.exists() and not final.is_dir():
        raise MtbenchError(
            f"the CelebA cache path {final} is a file, not a folder; remove it or set data.cache_dir=<another folder>"
        )
    if final.exists():
        log.warning(f"celeba: {final} is incomplete or outdated (an interrupted build?); rebuilding it")
        shutil.rmtree(final, ignore_errors=True)
    _remove_stale(root, prefix)

    n = len(names)
    need = n * 3 * image_size * image_size
    free = shutil.disk_usage(root).free
    if free < need * 1.02 + (64 << 20):
        raise MtbenchError(
            f"not enough disk space for the CelebA cache in {root}: needs {need / 1e9:.2f} GB, {free / 1e9:.2f} GB free; set data.cache_dir="
        )
    workers = _workers(workers)
    show = sys.stderr.isatty() if progress is None else bool(progress)

    tmp = root / f".{final.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        raise _cache_error(root, e) from None
    log.info(
        f"celeba: decoding {n} images into a {image_size}x{image_size} uint8 cache ({need / 1e9:.2f} GB) in {final}, {workers} thread(s); only the first run does this"
    )
    t0 = time.perf_counter()
    try:
        from tqdm import tqdm

        bar = tqdm(
            total=n,
            desc=f"celeba: decoding ({image_size}px cache)",
            unit="img",
            disable=not show,
            file=sys.stderr,
            smoothing=0.1,
        )
        pool = ThreadPoolExecutor(workers)
        try:
            for s, split in enumerate(SPLITS):
                members = [names[i] for i in np.flatnonzero(partition == s)]
                out = np.lib.format.open_memmap(
                    tmp / f"{split}.npy", mode="w+", dtype=np.uint8, shape=(len(members), 3, image_size, image_size)
                )
                args = () if preprocess == "center_crop" else (preprocess,)
                pending = {
                    pool.submit(_decode_into, out, files.images, members[a : a + 64], a, image_size, *args)
                    for a in range(0, len(members), 64)
                }
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for f in done:
                        if f.exception() is not None:
                            raise f.exception()  # type: ignore[misc]
                        bar.update(f.result())
                out.flush()
                del out
        finally:  # on an error or an interruption, the queued chunks are dropped
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        mean, std = _stats(np.load(tmp / "train.npy", mmap_mode="r"))
        elapsed = time.perf_counter() - t0
        meta = {
            "format": CACHE_FORMAT,
            "fingerprint": fp,
            "image_size": image_size,
            "crop": CROP if preprocess == "center_crop" else preprocess,
            "counts": counts,
            "mean": mean,
            "std": std,
            "source": str(files.base),
            "build_s": round(elapsed, 2),
            "images_per_s": round(n / max(elapsed, 1e-9), 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "checksums": {split: block_digests(tmp / f"{split}.npy", workers) for split in SPLITS},
        }
        meta["meta_sha256"] = meta_digest(meta)
        with open(tmp / META, "w", encoding="utf-8") as f:  # the "complete" marker: written last
            json.dump(meta, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.rename(tmp, final)
        except OSError:
            # another process finished the same cache first: use it if it is complete
            if _valid_cache(final, fp, image_size, counts, workers) is None:
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    except _Unreadable as e:
        line = names.index(e.path.name) + 3
        raise MtbenchError(
            f"{e.path}: unreadable image ({e.reason}); replace the file (listed in {files.attr}, line {line})"
        ) from None
    except OSError as e:  # writing the cache (reading an image is _Unreadable)
        raise _cache_error(root, e) from None
    finally:
        if tmp.exists():  # an error or an interruption: nothing half-written is left behind
            shutil.rmtree(tmp, ignore_errors=True)
    log.info(f"celeba: cache built in {elapsed:.1f} s ({n / max(elapsed, 1e-9):.0f} images/s)")
    _remove_outdated(root, prefix, final, files.base)
    return final


def _cache_error(root: Path, e: OSError) -> MtbenchError:
    """The one-line error of a cache that cannot be written: it names the cache folder."""
    hint = "free some disk space or " if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    where = f" ({e.filename})" if e.filename else ""
    return MtbenchError(
        f"cannot write the CelebA cache in {root}{where}: {e.strerror or e}; {hint}set data.cache_dir=<a writable folder>"
    )


def _remove_outdated(root: Path, prefix: str, keep: Path, source: Path) -> None:
    """Caches of the same size and source with another fingerprint (the source changed). In the
    dataset's own ``.mtbench_cache`` every cache is of this dataset (even if it was moved)."""
    own = root == source / ".mtbench_cache"
    for other in root.glob(f"{prefix}*"):
        if other == keep or not other.is_dir():
            continue
        try:
            meta = json.loads((other / META).read_text())
        except (OSError, ValueError):
            continue
        if own or meta.get("source") == str(source):
            log.info(f"celeba: removing the outdated cache {other} (its source files changed)")
            shutil.rmtree(other, ignore_errors=True)
