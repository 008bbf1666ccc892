"""CelebA pipeline (task=celeba) on a fake CelebA written in the real layout; nothing is downloaded."""

from __future__ import annotations

import errno
import importlib.util
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import cli_case, run_cli, run_dir
from PIL import Image

from mtbench.data import celeba, celeba_cache
from mtbench.errors import MtbenchError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_fake_celeba.py"

# the second line of the real list_attr_celeba.txt (with its trailing space), written out here
# independently of the generator
REAL_NAMES_LINE = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young "
)
N = 40  # fake images per dataset: 32 train / 4 val / 4 test
SIZE = 16  # image_size of the tests (fast to decode)


def _generator():
    spec = importlib.util.spec_from_file_location("make_fake_celeba", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A fake CelebA (plain layout), written once; tests work on copies."""
    root = tmp_path_factory.mktemp("celeba_src")
    _generator().make_fake_celeba(root, N, seed=1)
    return root


@pytest.fixture
def fake(pristine, tmp_path) -> Path:
    root = tmp_path / "celeba"
    shutil.copytree(pristine, root, copy_function=shutil.copy2)
    return root


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Count the images decoded (the cache's first pass)."""
    seen: list[str] = []
    original = celeba.decode_image

    def counting(path, size):
        seen.append(Path(path).name)
        return original(path, size)

    monkeypatch.setattr(celeba_cache, "decode_image", counting)
    return seen


def load(root, **kw) -> celeba.CelebAData:
    kw.setdefault("image_size", SIZE)
    kw.setdefault("workers", 2)
    kw.setdefault("progress", False)
    return celeba.load_celeba(root, **kw)


def cache_entries(root: Path) -> list[str]:
    folder = root / ".mtbench_cache"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------ fake generator


def test_fake_generator_writes_the_real_layout(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(tmp_path), "--n", "25", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    attr = (tmp_path / "list_attr_celeba.txt").read_text().split("\n")
    assert attr[0] == "25" and attr[1] == REAL_NAMES_LINE and attr[-1] == ""
    rows = attr[2:-1]
    assert len(rows) == 25
    for i, line in enumerate(rows, start=1):
        assert re.fullmatch(rf"{i:06d}\.jpg( (-1| 1)){{40}}", line), line
    parts = (tmp_path / "list_eval_partition.txt").read_text().splitlines()
    assert [p.split()[0] for p in parts] == [f"{i:06d}.jpg" for i in range(1, 26)]
    values = [int(p.split()[1]) for p in parts]
    assert values == sorted(values) and [values.count(s) for s in (0, 1, 2)] == [21, 2, 2]  # the real proportions
    images = sorted((tmp_path / "img_align_celeba").iterdir())
    assert [p.name for p in images] == [f"{i:06d}.jpg" for i in range(1, 26)]
    with Image.open(images[0]) as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (178, 218))
    # the torchvision layout: the same files under celeba/
    _generator().make_fake_celeba(tmp_path / "tv", 5, layout="torchvision")
    assert {p.name for p in (tmp_path / "tv" / "celeba").iterdir()} == {
        "img_align_celeba",
        "list_attr_celeba.txt",
        "list_eval_partition.txt",
    }


# ------------------------------------------------------------------------------ loading


def test_labels_partition_and_names(fake):
    data = load(fake)
    lines = (fake / "list_attr_celeba.txt").read_text().splitlines()
    assert data.names == lines[1].split() and len(data.names) == 40
    values = np.array([[int(v) for v in line.split()[1:]] for line in lines[2:]])  # -1 / 1
    part = np.array([int(line.split()[1]) for line in (fake / "list_eval_partition.txt").read_text().splitlines()])
    assert set(np.unique(values)) == {-1, 1}
    for s, split in enumerate(("train", "val", "test")):
        sp = data.splits[split]
        expected = (values[part == s] + 1) // 2
        assert sp.labels.dtype == torch.uint8 and torch.equal(sp.labels, torch.from_numpy(expected.astype(np.uint8)))
        assert sp.images.dtype == torch.uint8 and tuple(sp.images.shape) == (int((part == s).sum()), 3, SIZE, SIZE)
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [32, 4, 4]
    # the cached pixels are the decoded images, in file order
    first_val = fake / "img_align_celeba" / f"{32 + 1:06d}.jpg"
    assert np.array_equal(data.splits["val"].images[0].numpy(), celeba.decode_image(first_val, SIZE).transpose(2, 0, 1))
    assert data.mean.shape == (3,) and (data.std > 0).all()


def test_both_layouts_give_the_same_data(pristine, tmp_path):
    tv = tmp_path / "tv"
    (tv / "celeba").parent.mkdir()
    shutil.copytree(pristine, tv / "celeba")
    a, b = load(pristine, cache_dir=tmp_path / "c1"), load(tv)
    assert b.files.base == tv / "celeba" and a.files.base == pristine
    assert (tv / "celeba" / ".mtbench_cache").is_dir()
    assert a.names == b.names
    for s in ("train", "val", "test"):
        assert torch.equal(a.splits[s].labels, b.splits[s].labels) and torch.equal(
            a.splits[s].images, b.splits[s].images
        )


def test_crlf_line_ends_are_read(fake):
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        path = fake / name
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    data = load(fake)
    assert data.names == REAL_NAMES_LINE.split() and len(data.splits["train"]) == 32


def test_hflip_flips_a_random_subset_in_place():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 4, 5)
    task = celeba.CelebATask(
        "celeba",
        ["a"],
        *(celeba.Split(torch.zeros(1, 3, 4, 5, dtype=torch.uint8), torch.zeros(1, 1)) for _ in range(3)),
    )
    y = task.augment(x.clone())
    flipped = [bool(torch.equal(y[i], x[i].flip(-1))) for i in range(64)]
    kept = [bool(torch.equal(y[i], x[i])) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept)) and 10 < sum(flipped) < 54
    task.hflip = False
    assert torch.equal(task.augment(x.clone()), x)


# ------------------------------------------------------------------------------ cache


def test_cache_is_reused_without_decoding(fake, decodes):
    load(fake)
    assert len(decodes) == N
    (entry,) = cache_entries(fake)
    assert re.fullmatch(rf"celeba-{SIZE}px-[0-9a-f]{{16}}", entry)
    files = {p.name: p.stat().st_mtime_ns for p in (fake / ".mtbench_cache" / entry).iterdir()}
    assert set(files) == {"train.npy", "val.npy", "test.npy", "meta.json"}
    data = load(fake)
    assert len(decodes) == N, "the second load decoded images"
    assert {p.name: p.stat().st_mtime_ns for p in (fake / ".mtbench_cache" / entry).iterdir()} == files
    assert isinstance(np.load(fake / ".mtbench_cache" / entry / "train.npy", mmap_mode="r"), np.memmap)
    assert data.cache.name == entry
    # another image size is another cache, next to the first
    load(fake, image_size=SIZE * 2)
    assert len(decodes) == 2 * N and len(cache_entries(fake)) == 2


def test_cache_is_rebuilt_when_the_source_changes(fake, decodes):
    before = load(fake)
    old = before.cache.name
    image = fake / "img_align_celeba" / "000002.jpg"
    Image.new("RGB", (178, 218), (255, 0, 0)).save(image, "JPEG")
    after = load(fake)
    assert len(decodes) == 2 * N and after.cache.name != old
    assert cache_entries(fake) == [after.cache.name], "the outdated cache was not removed"
    red = after.splits["train"].images[1].float()
    assert red[0].mean() > 200 and red[1].mean() < 50
    # a changed label is a change of the source too
    attr = fake / "list_attr_celeba.txt"
    lines = attr.read_text().split("\n")
    lines[5] = lines[5][:-2] + (" 1" if lines[5].endswith("-1") else "-1")
    attr.write_text("\n".join(lines))
    relabelled = load(fake)
    assert relabelled.cache.name not in (old, after.cache.name) and len(decodes) == 3 * N


def test_partial_cache_is_detected_and_rebuilt(fake, decodes):
    good = load(fake)
    entry = good.cache
    del good
    # a cache folder without its "complete" marker (meta.json): never used
    (entry / "meta.json").unlink()
    data = load(fake)
    assert len(decodes) == 2 * N and (entry / "meta.json").is_file()
    # a short file behind a meta.json: rebuilt too
    del data
    with open(entry / "train.npy", "r+b") as f:
        f.truncate(entry.joinpath("train.npy").stat().st_size - 100)
    data = load(fake)
    assert len(decodes) == 3 * N and len(data.splits["train"]) == 32
    # a temporary folder left by a killed build (its process is gone) is removed
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    stale = (
        fake / ".mtbench_cache" / f".celeba-{SIZE * 3}px-0123456789abcdef.tmp-{socket.gethostname()}-{dead}-deadbeef"
    )
    stale.mkdir()
    (stale / "train.npy").write_bytes(b"\x93NUMPY partial")
    load(fake, image_size=SIZE * 3)
    assert not stale.exists()


def test_killed_build_is_never_used(fake, decodes):
    """SIGKILL in the middle of a build: the next load ignores and removes its leftovers."""
    code = (
        "import time, sys\n"
        "from mtbench.data import celeba, celeba_cache\n"
        "original = celeba_cache.decode_image\n"
        "def slow(path, size):\n"
        "    time.sleep(0.1)\n"
        "    return original(path, size)\n"
        "celeba_cache.decode_image = slow\n"
        f"celeba.load_celeba({str(fake)!r}, image_size={SIZE}, workers=1, progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cache = fake / ".mtbench_cache"
        deadline = time.time() + 60
        while not list(cache.glob(".celeba-*.tmp-*/train.npy")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        proc.kill()
        proc.wait()
    leftovers = cache_entries(fake)
    assert len(leftovers) == 1 and ".tmp-" in leftovers[0], leftovers  # killed mid-build
    data = load(fake)
    assert len(decodes) == N and cache_entries(fake) == [data.cache.name]
    assert len(data.splits["train"]) == 32


def test_interrupted_build_leaves_nothing(fake, monkeypatch):
    original = celeba.decode_image
    calls = []

    def dying(path, size):
        calls.append(path)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return original(path, size)

    monkeypatch.setattr(celeba_cache, "decode_image", dying)
    with pytest.raises(KeyboardInterrupt):
        load(fake, workers=1)
    assert cache_entries(fake) == []
    monkeypatch.setattr(celeba_cache, "decode_image", original)
    assert len(load(fake).splits["test"]) == 4


@pytest.mark.parametrize(
    "damage",
    [
        lambda m: m.pop("mean"),
        lambda m: m.pop("std"),
        lambda m: m.update(std=[0.2, 0.0, 0.2]),
        lambda m: m.update(mean=[0.5, "x", 0.5]),
        lambda m: m.update(mean=[0.5, 0.5]),
    ],
    ids=["no mean", "no std", "zero std", "text in mean", "two channels"],
)
def test_cache_without_usable_statistics_is_rebuilt(fake, decodes, damage):
    entry = load(fake).cache
    meta_path = entry / "meta.json"
    meta = json.loads(meta_path.read_text())
    good = {"mean": meta["mean"], "std": meta["std"]}
    damage(meta)
    meta_path.write_text(json.dumps(meta))
    data = load(fake)
    assert len(decodes) == 2 * N, "the cache was not rebuilt"
    rebuilt = json.loads(meta_path.read_text())
    assert {"mean": rebuilt["mean"], "std": rebuilt["std"]} == good
    assert data.std.tolist() == pytest.approx(good["std"])


def test_cache_paths_that_are_files(fake, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(MtbenchError) as e:
        load(fake, cache_dir=blocker)
    msg = one_line_error(e)
    assert str(blocker) in msg and "data.cache_dir" in msg and "is a file" in msg
    # the cache's own folder name taken by a file
    entry = load(fake, cache_dir=tmp_path / "c").cache
    shutil.rmtree(entry)
    entry.write_text("not a folder")
    with pytest.raises(MtbenchError) as e:
        load(fake, cache_dir=tmp_path / "c")
    msg = one_line_error(e)
    assert str(entry) in msg and "data.cache_dir" in msg and "is a file" in msg
    # the default cache folder a file: the cache goes to the user's cache folder
    (fake / ".mtbench_cache").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert load(fake).cache.parent == tmp_path / "xdg" / "mtbench" / "celeba"


def test_cache_write_error_names_the_cache(fake, tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "c" / "x.npy"))

    monkeypatch.setattr(celeba.np.lib.format, "open_memmap", no_space)
    with pytest.raises(MtbenchError) as e:
        load(fake, cache_dir=tmp_path / "c")
    msg = one_line_error(e)
    assert "CelebA cache" in msg and str(tmp_path / "c") in msg and "data.cache_dir" in msg and "disk space" in msg
    assert list((tmp_path / "c").iterdir()) == [], "a half-written cache was left behind"


def test_user_cache_dir(fake, tmp_path):
    data = load(fake, cache_dir=tmp_path / "elsewhere")
    assert data.cache.parent == tmp_path / "elsewhere" and cache_entries(fake) == []


# ------------------------------------------------------------------------------ bad input


def _edit_line(path: Path, index: int, fn) -> None:
    lines = path.read_text().split("\n")
    lines[index] = fn(lines[index])
    path.write_text("\n".join(lines))


def test_missing_root_and_files(tmp_path, fake):
    with pytest.raises(MtbenchError) as e:
        load(None)
    assert "data.root" in one_line_error(e) and "list_attr_celeba.txt" in str(e.value)
    with pytest.raises(MtbenchError) as e:
        load(tmp_path / "nowhere")
    assert "nowhere" in one_line_error(e) and "img_align_celeba" in str(e.value)
    (fake / "list_eval_partition.txt").unlink()
    with pytest.raises(MtbenchError) as e:
        load(fake)
    assert f"{fake / 'list_eval_partition.txt'}" in one_line_error(e) and "<root>/celeba/" in str(e.value)


def test_truncated_attribute_file(fake):
    attr = fake / "list_attr_celeba.txt"
    text = attr.read_text()
    cut = text.index("000011.jpg") + 30  # in the middle of line 13
    attr.write_text(text[:cut])
    with pytest.raises(MtbenchError) as e:
        load(fake)
    msg = one_line_error(e)
    assert str(attr) in msg and "line 13" in msg and "truncated" in msg
    attr.write_text(text[: text.index("000011.jpg")])  # at a line boundary
    with pytest.raises(MtbenchError) as e:
        load(fake)
    msg = one_line_error(e)
    assert str(attr) in msg and "line 13" in msg and f"10 of the {N}" in msg
    assert cache_entries(fake) == []


def test_wrong_number_of_attribute_columns(fake):
    attr = fake / "list_attr_celeba.txt"
    _edit_line(attr, 9, lambda s: s[:-3])  # line 10 loses a value
    with pytest.raises(MtbenchError) as e:
        load(fake)
    msg = one_line_error(e)
    assert str(attr) in msg and "line 10" in msg and "39 attribute values" in msg
    _edit_line(attr, 9, lambda s: s + "  1  1")  # 41 values
    with pytest.raises(MtbenchError) as e:
        load(fake)
    assert "line 10" in one_line_error(e) and "41" in str(e.value)
    _edit_line(attr, 9, lambda s: s[:-3])
    _edit_line(attr, 1, lambda s: s.replace("Young", ""))  # 39 names
    with pytest.raises(MtbenchError) as e:
        load(fake)
    assert "line 2" in one_line_error(e) and "39 attribute names" in str(e.value)


def test_bad_attribute_value(fake):
    attr = fake / "list_attr_celeba.txt"
    _edit_line(attr, 4, lambda s: s[:-2] + " 0")
    with pytest.raises(MtbenchError) as e:
        load(fake)
    msg = one_line_error(e)
    assert str(attr) in msg and "line 5" in msg and "'0'" in msg


@pytest.mark.parametrize("value", ["01", "+1", "-01", "1.0"])
def test_attribute_value_that_only_reads_as_one(fake, value):
    """Only "-1" and "1" are attribute values: a number that merely parses as +-1 is refused."""
    attr = fake / "list_attr_celeba.txt"
    _edit_line(attr, 4, lambda s: s[:-2].rstrip() + " " + value)
    with pytest.raises(MtbenchError) as e:
        load(fake)
    msg = one_line_error(e)
    assert str(attr) in msg and "line 5" in msg and repr(value) in msg


def test_bad_partition_line(fake):
    part = fake / "list_eval_partition.txt"
    _edit_line(part, 6, lambda s: s.split()[0] + " 3")
    with pytest.raises(MtbenchError) as e:
        load(fake)
    assert str(part) in one_line_error(e) and "line 7" in str(e.value)
    _edit_line(part, 6, lambda s: "999999.jpg 0")
    with pytest.raises(MtbenchError) as e:
        load(fake)
    assert "line 7" in one_line_error(e) and "999999.jpg" in str(e.value)


def test_listed_image_missing(fake):
    (fake / "img_align_celeba" / "000020.jpg").unlink()
    with pytest.raises(MtbenchError) as e:
        load(fake)
    msg = one_line_error(e)
    assert str(fake / "img_align_celeba" / "000020.jpg") in msg and "line 22" in msg
    assert cache_entries(fake) == []


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_jpeg(fake, damage):
    image = fake / "img_align_celeba" / "000031.jpg"
    raw = image.read_bytes()
    image.write_bytes(b"this is not a JPEG" * 50 if damage == "garbage" else raw[: len(raw) // 3])
    with pytest.raises(MtbenchError) as e:
        load(fake)
    assert str(image) in one_line_error(e) and "unreadable image" in str(e.value) and "line 33" in str(e.value)
    assert cache_entries(fake) == [], "a half-written cache was left behind"


def test_download_is_used_only_when_files_are_missing(fake, tmp_path, monkeypatch):
    import torchvision.datasets

    made = []

    class FakeDownloader:  # stands in for torchvision's CelebA(download=True): no network
        def __init__(self, root, split, target_type, download):
            assert download and split == "all"
            made.append(root)
            _generator().make_fake_celeba(root, 12, layout="torchvision")

    monkeypatch.setattr(torchvision.datasets, "CelebA", FakeDownloader)
    load(fake, download=True)
    assert made == []
    data = load(tmp_path / "new", download=True)
    assert made == [str(tmp_path / "new")] and data.files.base == tmp_path / "new" / "celeba"

    def failing(*a, **k):
        raise RuntimeError("no internet\nat all")

    monkeypatch.setattr(torchvision.datasets, "CelebA", failing)
    with pytest.raises(MtbenchError) as e:
        load(tmp_path / "other", download=True)
    assert "data.download" in one_line_error(e) and "no internet" in str(e.value)


# ------------------------------------------------------------------------------ config and CLI


def test_config_composition():
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="mtbench.configs", version_base="1.3"):
        cfg = compose("config", overrides=["task=celeba", "data.root=/data/celeba"])
        assert (cfg.task.name, cfg.model.name, cfg.model.small_input) == ("celeba", "resnet18", True)
        assert (cfg.task.root, cfg.task.image_size, cfg.data.image_size) == ("/data/celeba", 64, 64)
        assert (cfg.trainer.optimizer, cfg.trainer.lr, cfg.trainer.batch_size, cfg.trainer.epochs) == (
            "adam",
            0.001,
            256,
            15,
        )
        cfg = compose(
            "config",
            overrides=["task=celeba", "model=small_cnn", "trainer.epochs=2", "trainer.lr=0.01", "data.image_size=32"],
        )
        assert (cfg.model.name, cfg.trainer.epochs, cfg.trainer.lr, cfg.task.image_size) == ("small_cnn", 2, 0.01, 32)
        cfg = compose("config")
        assert (cfg.task.name, cfg.model.name, cfg.trainer.batch_size) == ("shapes40", "small_cnn", 64)


cli_case(__name__, "no data.root", "mtbench", ["task=celeba", "trainer.device=cpu"])


def test_cli_without_data_root(cli_runs):
    proc = cli_runs[__name__, "no data.root"]
    tmp_path = proc.cwd
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("mtbench: error:")]
    assert len(lines) == 1 and "data.root" in lines[0] and "list_attr_celeba.txt" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("results/**/metrics.json")), "a run that never started must leave no metrics.json"


@pytest.fixture(scope="module")
def celeba_sweep(pristine, tmp_path_factory) -> tuple[Path, list[str]]:
    """`mtbench -m task=celeba combiner=baseline,graddrop` on a copy of the fake: (its folder, its arguments)."""
    tmp_path = tmp_path_factory.mktemp("celeba_sweep")
    tv = tmp_path / "data"
    shutil.copytree(pristine, tv / "celeba")  # torchvision's layout
    args = [
        "-m", "task=celeba", f"data.root={tv}", "combiner=baseline,graddrop", "model=small_cnn", "model.width=8",
        "model.rep_dim=16", f"data.image_size={SIZE}", "trainer.epochs=1", "trainer.batch_size=16",
        "trainer.eval_batch_size=64", "trainer.device=cpu", "trainer.num_threads=1",
    ]  # fmt: skip
    proc = run_cli("mtbench", args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp_path, args


def test_sweep_end_to_end(celeba_sweep):
    tmp_path, _ = celeba_sweep
    tv = tmp_path / "data"
    folder = tmp_path / "results" / "celeba"
    for name in ("baseline", "graddrop"):
        run = run_dir(folder, name, 0)
        m = json.loads((run / "metrics.json").read_text())
        assert m["status"] == "completed", m.get("reason")
        assert (m["task"], m["combiner"], m["model"]) == ("celeba", name, "small_cnn")
        assert m["config"]["task"]["root"] == str(tv) and m["config"]["data"]["image_size"] == SIZE
        attrs = pd.read_csv(run / "per_attribute.csv")
        assert list(attrs["attribute"]) == REAL_NAMES_LINE.split()
        assert attrs["error"].mean() == pytest.approx(m["test"]["error_rate"])
    table = (folder / "table.md").read_text()
    assert "| baseline |" in table and "| graddrop |" in table
    assert len([p for p in (tv / "celeba" / ".mtbench_cache").iterdir()]) == 1  # built once, shared by both runs


@pytest.mark.slow
def test_a_run_alone_has_the_numbers_it_has_second_in_the_sweep(pristine, celeba_sweep, tmp_path):
    """graddrop alone, first in its process and building its own cache (another copy of the
    files), has exactly the numbers it had second in the sweep (random flips included)."""
    sweep_path, args = celeba_sweep
    tv = sweep_path / "data"
    folder = sweep_path / "results" / "celeba"
    other = tmp_path / "other"
    shutil.copytree(pristine, other)
    alone = run_cli("mtbench", [a.replace(f"data.root={tv}", f"data.root={other}") for a in args[1:] if not a.startswith("combiner=")]
                    + ["combiner=graddrop", "results_dir=alone"], cwd=tmp_path)  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-4000:]
    assert (other / ".mtbench_cache").is_dir()

    def numbers(run: Path) -> dict:
        m = json.loads((run / "metrics.json").read_text())
        history = pd.read_csv(run / "history.csv").drop(columns=["train_step_s"])
        return {
            "test": m["test"],
            "val": m["val"],
            "history": history.to_dict("list"),
            "per_attribute": (run / "per_attribute.csv").read_text(),
        }

    assert numbers(run_dir(tmp_path / "alone" / "celeba", "graddrop", 0)) == numbers(run_dir(folder, "graddrop", 0))


@pytest.mark.parametrize("damage", ["flipped byte", "same-size file", "edited statistics", "no checksums"])
def test_damaged_cache_is_rebuilt_never_used(fake, decodes, damage):
    """The cache is verified on every load (meta.json's block SHA-256s and its own digest): a
    damaged one is rebuilt, and the data and statistics are those of an undamaged cache."""
    first = load(fake)
    images = {s: first.splits[s].images.clone() for s in celeba.SPLITS}
    mean, std = first.mean.clone(), first.std.clone()
    del first
    (folder,) = [p for p in (fake / ".mtbench_cache").iterdir() if p.is_dir()]
    built = len(decodes)
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text())
    if damage == "flipped byte":
        path = folder / "val.npy"
        raw = bytearray(path.read_bytes())
        raw[-7] ^= 0x01
        path.write_bytes(bytes(raw))
    elif damage == "same-size file":
        path = folder / "train.npy"
        raw = path.read_bytes()
        header = len(raw) - images["train"].numel()
        path.write_bytes(raw[:header] + bytes(reversed(raw[header:])))
    elif damage == "edited statistics":
        meta["mean"] = [0.5, 0.5, 0.5]
        meta_path.write_text(json.dumps(meta))
    else:  # a cache of an earlier version: no checksums
        del meta["checksums"], meta["meta_sha256"]
        meta_path.write_text(json.dumps(meta))
    again = load(fake)
    assert len(decodes) == 2 * built  # decoded again
    for s in celeba.SPLITS:
        assert torch.equal(again.splits[s].images, images[s])
    assert torch.equal(again.mean, mean) and torch.equal(again.std, std)
    load(fake)
    assert len(decodes) == 2 * built  # an intact cache is used as it is
