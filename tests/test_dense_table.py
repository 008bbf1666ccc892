"""Δm% and Mean Rank in the tables of the dense tasks: single-task references found in the
results folder (synthetic metrics.json files, as the trainer writes them), the published
single-task row as the fallback, each labelled; the paper's rows with their own Δm%."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from mtbench.report.summary import delta_m, mean_ranks
from mtbench.report.table import build_tables

SEG = [["seg_miou", "seg mIoU (%)", True], ["seg_pixacc", "seg pix acc (%)", True]]
DEPTH = [["depth_abs_err", "depth abs err", False], ["depth_rel_err", "depth rel err", False]]
NORMAL = [
    ["normal_mean", "normal mean (°)", False],
    ["normal_median", "normal median (°)", False],
    ["normal_within_11", "within 11.25° (%)", True],
    ["normal_within_22", "within 22.5° (%)", True],
    ["normal_within_30", "within 30° (%)", True],
]
COLUMNS = {"segmentation": SEG, "depth": DEPTH, "normal": NORMAL}
ALL = SEG + DEPTH + NORMAL
KEYS = [k for k, _, _ in ALL]
HIGHER = {k: h for k, _, h in ALL}


def write_run(folder: Path, combiner: str, seed: int, test: dict, tasks=("segmentation", "depth", "normal"),
              task: str = "nyuv2", step_s: float = 0.1) -> Path:  # fmt: skip
    """A completed run's metrics.json as the trainer writes it (``metric_columns`` of the trained
    tasks only, ``tasks``, ``test``/``val``, the reported epoch)."""
    single = len(tasks) == 1
    variant = f"task.tasks=[{tasks[0]}]" if single else "default"
    run = folder / "runs" / combiner / variant / f"seed={seed}"
    run.mkdir(parents=True, exist_ok=True)
    columns = [c for t in tasks for c in COLUMNS[t]]
    m = {
        "task": task,
        "combiner": combiner,
        "variant": variant,
        "overrides": {"task.tasks": f"[{tasks[0]}]"} if single else {},
        "seed": seed,
        "status": "completed",
        "config": {"seed": seed, "task": {"name": task, "tasks": list(tasks) if single else None}},
        "tasks": list(tasks),
        "report": "last_k",
        "report_k": 10,
        "metric_columns": columns,
        "test": {k: test[k] for k, _, _ in columns},
        "val": {k: test[k] for k, _, _ in columns},
        "train_step_s": step_s,
        "train_step_cpu_s": step_s,
        "started_at": f"2026-01-01T00:00:{seed:02d}",
    }
    (run / "metrics.json").write_text(json.dumps(m))
    return run


STL = dict(zip(KEYS, [40.0, 65.0, 0.60, 0.25, 25.0, 19.0, 30.0, 57.0, 69.0]))
BASE = dict(zip(KEYS, [38.0, 64.0, 0.55, 0.22, 28.0, 24.0, 22.0, 48.0, 62.0]))
NASH = dict(zip(KEYS, [41.0, 66.0, 0.54, 0.22, 25.0, 19.0, 30.0, 57.0, 69.0]))


def hand_delta(values: dict, base: dict) -> float:
    """Δm% written out term by term (independent of the package)."""
    terms = [(-1 if HIGHER[k] else 1) * (values[k] - base[k]) / base[k] for k in KEYS]
    return 100 * sum(terms) / len(terms)


def nyuv2_folder(tmp_path: Path, with_stl: bool = True, task: str = "nyuv2") -> Path:
    folder = tmp_path / "results" / task
    for seed in (0, 1):
        shift = 0.5 if seed else -0.5  # seeds straddle the means above
        write_run(folder, "baseline", seed, {k: v + shift * 0.01 * v for k, v in BASE.items()}, task=task)
        write_run(folder, "nash_mtl", seed, {k: v + shift * 0.01 * v for k, v in NASH.items()}, task=task, step_s=0.3)
        if with_stl:
            for t in ("segmentation", "depth", "normal"):
                stl = {k: v + shift * 0.02 * v for k, v in STL.items()}
                write_run(folder, "baseline", seed, stl, tasks=(t,), task=task)
    return folder


def test_delta_m_by_hand():
    cols = [("a", "a", True), ("b", "b", False)]
    # a: higher is better, 10 -> 12 is +20% better; b: lower is better, 2 -> 3 is 50% worse
    assert delta_m({"a": 12, "b": 3}, {"a": 10, "b": 2}, cols) == pytest.approx(100 * (-0.2 + 0.5) / 2)
    assert delta_m({"a": 10, "b": 2}, {"a": 10, "b": 2}, cols) == 0
    assert math.isnan(delta_m({"a": 12}, {"a": 10, "b": 2}, cols))  # a metric missing: no number
    assert math.isnan(delta_m({"a": 12, "b": 3}, {"a": 0, "b": 2}, cols))  # a zero reference
    assert delta_m(NASH, STL, ALL) == pytest.approx(hand_delta(NASH, STL))


def test_mean_rank_ties_share_the_mean():
    cols = [("a", "a", True), ("b", "b", False)]
    frame = pd.DataFrame({"a": [1.0, 2.0, 2.0, 3.0], "b": [5.0, 5.0, 1.0, math.nan]})
    # a (higher better): 3 -> 1, the two 2s share ranks 2 and 3 -> 2.5, 1 -> 4
    # b (lower better): 1 -> 1, the two 5s share 2 and 3 -> 2.5; the missing value is left out
    assert list(mean_ranks(frame, cols, fmt="{}")) == [(4 + 2.5) / 2, (2.5 + 2.5) / 2, (2.5 + 1) / 2, 1.0]


def test_single_task_runs_are_the_reference_not_rows(tmp_path):
    folder = nyuv2_folder(tmp_path)
    tables = build_tables(folder)
    frame = tables.frame.set_index("combiner")
    assert list(frame.index) == ["baseline", "nash_mtl"]  # the single-task runs are no rows
    assert len(tables.stl_runs) == 6 and [k for k, _, _ in tables.columns] == KEYS
    # the references: the single-task runs' means over seeds (their spread cancels)
    assert frame.loc["nash_mtl", "delta_m"] == pytest.approx(hand_delta(NASH, STL))
    assert frame.loc["baseline", "delta_m"] == pytest.approx(hand_delta(BASE, STL))
    assert (frame["delta_m_vs"] == "single-task runs").all()
    # nash_mtl is better on every metric but rel err (a tie): ranks 1 x 8 and 1.5
    assert frame.loc["nash_mtl", "mean_rank"] == pytest.approx((8 * 1 + 1.5) / 9)
    assert frame.loc["baseline", "mean_rank"] == pytest.approx((8 * 2 + 1.5) / 9)
    md = (folder / "table.md").read_text()
    assert "| seg mIoU (%) ↑ | seg pix acc (%) ↑ | depth abs err ↓ |" in md and "| Δm% ↓ | mean rank ↓ |" in md
    assert "B_k from single-task baseline runs in this folder: segmentation (2 run(s)), depth (2 run(s))" in md
    assert "Reported epoch: the mean of the last 10 epochs' test metrics (trainer.report=last_k)." in md
    row = next(line for line in md.splitlines() if line.startswith("| nash_mtl |"))
    assert f"| **{hand_delta(NASH, STL):.2f}** | **{(8 + 1.5) / 9:.2f}** |" in row
    csv = pd.read_csv(folder / "table.csv").set_index("combiner")
    assert csv.loc["nash_mtl", "delta_m"] == pytest.approx(hand_delta(NASH, STL))


PAPER = """combiner,method,citation,seg_miou,seg_pixacc,depth_abs_err,depth_rel_err,normal_mean,normal_median,normal_within_11,normal_within_22,normal_within_30,delta_m,mean_rank
stl,STL,Test et al. 2000 Table 1,40.0,65.0,0.60,0.25,25.0,19.0,30.0,57.0,69.0,,
baseline,LS,Test et al. 2000 Table 1,38.0,64.0,0.55,0.22,28.0,24.0,22.0,48.0,62.0,{base_dm},
nash_mtl,Nash-MTL,Test et al. 2000 Table 1,41.0,66.0,0.54,0.22,25.0,19.0,30.0,57.0,69.0,{nash_dm},
"""


def test_published_single_task_row_when_the_folder_has_none(tmp_path):
    folder = nyuv2_folder(tmp_path, with_stl=False)
    paper = tmp_path / "nyuv2.csv"
    printed = {"base_dm": f"{hand_delta(BASE, STL):.2f}", "nash_dm": f"{hand_delta(NASH, STL):.2f}"}
    paper.write_text(PAPER.format(**printed))
    tables = build_tables(folder, paper=paper)
    frame = tables.frame.set_index("combiner")
    # ours against the published single-task row, labelled with its file and citation
    assert (frame["delta_m_vs"] == "published single-task").all()
    assert frame.loc["nash_mtl", "delta_m"] == pytest.approx(hand_delta(NASH, STL), rel=1e-3)
    md = (folder / "table.md").read_text()
    assert f"the published single-task numbers (row stl of {paper}, Test et al. 2000 Table 1)" in md
    # the paper's own Δm%, recomputed from its numbers and its STL row, matches what it prints
    assert frame.loc["nash_mtl", "paper_delta_m"] == pytest.approx(float(printed["nash_dm"]), abs=0.005)
    assert frame.loc["baseline", "paper_delta_m"] == pytest.approx(float(printed["base_dm"]), abs=0.005)
    assert frame.loc["nash_mtl", "paper_mean_rank"] == pytest.approx((8 + 1.5) / 9)
    head = md.splitlines()[0]
    assert "| paper seg mIoU (%) |" in head and "| Δm% ↓ | paper Δm% | mean rank ↓ | paper mean rank |" in head
    assert "against its single-task row (stl), ranks among the paper's 2 rows" in md


def test_without_any_single_task_reference_each_row_is_against_its_baseline(tmp_path):
    folder = nyuv2_folder(tmp_path, with_stl=False, task="my_dense_task")  # no published numbers
    tables = build_tables(folder)
    frame = tables.frame.set_index("combiner")
    assert (frame["delta_m_vs"] == "baseline").all() and frame.loc["baseline", "delta_m"] == pytest.approx(0)
    assert frame.loc["nash_mtl", "delta_m"] == pytest.approx(hand_delta(NASH, BASE))
    assert "B_k from each row's baseline run" in (folder / "table.md").read_text()


#: CAGrad's single-task references, as its authors' code computes its Δm% (the `base` arrays of
#: github.com/Cranial-XIX/CAGrad nyuv2/plot.py and cityscapes/plot.py; fractions there, % here)
CAGRAD_STL = {
    "nyuv2": [38.30, 63.76, 0.6754, 0.2780, 25.01, 19.21, 30.14, 57.20, 69.15],
    "cityscapes": [74.01, 93.16, 0.0125, 27.77],
}


def test_the_shipped_single_task_rows():
    from mtbench.report.published import PACKAGED_PAPER, read_paper

    for task, values in CAGRAD_STL.items():
        paper = read_paper(PACKAGED_PAPER / f"{task}.csv")
        assert list(paper.index) == ["stl"]  # no method rows: none checked against a primary source yet
        keys = KEYS if task == "nyuv2" else KEYS[:4]
        assert [float(paper.loc["stl", k]) for k in keys] == values
        assert "Cranial-XIX/CAGrad" in paper.loc["stl", "citation"]


def test_the_shipped_single_task_row_when_the_folder_has_none(tmp_path):
    """NYUv2 runs without single-task runs: Δm% against CAGrad's single-task row (labelled), and
    no paper columns (the file has no method rows)."""
    import io

    from mtbench.report.table import report

    folder = nyuv2_folder(tmp_path, with_stl=False)
    out = io.StringIO()
    tables = report(folder, out=out, plots=False)
    frame = tables.frame.set_index("combiner")
    stl = dict(zip(KEYS, CAGRAD_STL["nyuv2"]))
    assert (frame["delta_m_vs"] == "published single-task").all()
    assert frame.loc["nash_mtl", "delta_m"] == pytest.approx(hand_delta(NASH, stl), rel=1e-3)
    assert not [c for c in frame.columns if c.startswith("paper_")] and tables.paper_file is None
    text = out.getvalue()
    assert "B_k from the published single-task numbers (row stl of " in text and "Cranial-XIX/CAGrad" in text
    assert "(test split, mean of the last epochs)" in text
    assert "Paper columns: none, " in text and "has only the published single-task row (used for Δm%)" in text


def test_a_partial_single_task_sweep_takes_the_rest_from_the_published_row(tmp_path):
    """Single-task runs for segmentation and depth only: those from the runs, the normal
    metrics from the shipped single-task row; without a shipped row, the baseline."""
    stl = dict(zip(KEYS, CAGRAD_STL["nyuv2"]))
    for task in ("nyuv2", "my_dense_task"):
        folder = nyuv2_folder(tmp_path / task, with_stl=False, task=task)
        for t in ("segmentation", "depth"):
            write_run(folder, "baseline", 0, STL, tasks=(t,), task=task)
        tables = build_tables(folder)
        frame = tables.frame.set_index("combiner")
        assert list(frame.index) == ["baseline", "nash_mtl"]
        if task == "nyuv2":
            mixed = {k: (STL[k] if k.startswith(("seg", "depth")) else stl[k]) for k in KEYS}
            assert (frame["delta_m_vs"] == "single-task runs + published").all()
            assert frame.loc["nash_mtl", "delta_m"] == pytest.approx(hand_delta(NASH, mixed))
            assert (
                "single-task runs in this folder for seg_miou, seg_pixacc, depth_abs_err, depth_rel_err"
                in (folder / "table.md").read_text()
            )
        else:
            assert (frame["delta_m_vs"] == "baseline").all()


# --- predictions.png ------------------------------------------------------------------------


def write_predictions(run: Path, seed: int, n: int = 2, h: int = 6, w: int = 8) -> dict:
    """A predictions.pt in the contract's layout, with some pixels without ground truth."""
    import torch

    g = torch.Generator().manual_seed(seed)
    seg_t = torch.randint(0, 13, (n, h, w), generator=g)
    seg_t[:, 0, :] = -1  # ignore
    depth_t = torch.rand(n, h, w, generator=g) + 0.5
    depth_t[:, :, 0] = 0  # missing
    normal_t = torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=g), dim=1)
    normal_t[:, :, -1, :] = 0  # missing
    pred = {
        "index": torch.arange(n, dtype=torch.int64) * 10,
        "image": torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8),
        "segmentation": torch.randint(0, 13, (n, h, w), generator=g),
        "segmentation_target": seg_t,
        "depth": torch.rand(n, h, w, generator=g),
        "depth_target": depth_t,
        "normal": torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=g), dim=1),
        "normal_target": normal_t,
    }
    torch.save(pred, run / "predictions.pt")
    return pred


def test_predictions_png_from_synthetic_runs(tmp_path):
    import numpy as np

    from mtbench.report.predictions import GREY, PALETTE, collect, draw_predictions, load_predictions, panels

    folder = nyuv2_folder(tmp_path, with_stl=False)
    for combiner in ("baseline", "nash_mtl"):
        for seed in (0, 1):
            write_predictions(folder / "runs" / combiner / "default" / f"seed={seed}", seed)
    pred = load_predictions(folder / "runs" / "baseline" / "default" / "seed=0" / "predictions.pt")
    truth, mine = panels(pred, "segmentation", 0)
    assert truth.shape == (6, 8, 3) and np.allclose(truth[0], GREY) and np.allclose(mine[0], GREY)
    assert np.allclose(mine[1, 0], PALETTE[int(pred["segmentation"][0, 1, 0]) % len(PALETTE)])
    truth, _ = panels(pred, "depth", 1)
    assert np.allclose(truth[:, 0], GREY) and not np.allclose(truth[:, 1], GREY)
    truth, mine = panels(pred, "normal", 0)
    assert np.allclose(truth[-1], GREY)
    assert np.allclose(truth[0, 0], (pred["normal_target"][0, :, 0, 0] + 1) / 2)
    runs = build_tables(folder).runs
    rows = collect(runs)
    assert [label for label, _ in rows] == ["baseline", "nash_mtl"]  # one per row, its first seed
    assert np.array_equal(rows[1][1]["image"], pred["image"].transpose(0, 1, 2, 3))  # seed 0's images
    assert draw_predictions(folder, runs) == [folder / "predictions.png"]
    png = folder / "predictions.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000


@pytest.mark.slow
def test_report_draws_predictions_png_beside_the_other_plots(tmp_path):
    import io

    from mtbench.report.table import report

    folder = nyuv2_folder(tmp_path, with_stl=True)
    write_predictions(folder / "runs" / "baseline" / "default" / "seed=0", 0)
    tables = report(folder, out=io.StringIO())
    names = {p.name for p in tables.written}
    assert {"predictions.png", "error_vs_speed.png", "error_vs_speed.pdf", "table.md"} <= names


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p.update(image=p["image"].float()), "'image' must be torch.uint8"),
        (lambda p: p.update(depth=p["depth"][:, :3]), "'depth' must have shape [2, 6, 8]"),
        (lambda p: p.pop("normal_target"), "'normal_target' is missing"),
        (lambda p: p.update(index=p["index"][:1]), "'index' has 1 entries for 2 images"),
        (lambda p: p["depth"].__setitem__((0, 0, 0), float("nan")), "'depth' has non-finite values"),
    ],
)
def test_predictions_file_is_checked(tmp_path, change, message):
    import torch

    from mtbench.report.predictions import load_predictions

    pred = write_predictions(tmp_path, 0)
    change(pred)
    torch.save(pred, tmp_path / "predictions.pt")
    with pytest.raises(ValueError, match="predictions.pt: " + message.replace("[", r"\[").replace("(", r"\(")):
        load_predictions(tmp_path / "predictions.pt")


def test_predictions_file_with_code_is_refused(tmp_path):
    """A pickle naming a function to run is not loaded (weights_only): the run is skipped."""
    import pickle

    from mtbench.report.predictions import collect, load_predictions

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    (tmp_path / "predictions.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError, match="not a readable predictions file"):
        load_predictions(tmp_path / "predictions.pt")
    runs = pd.DataFrame(
        [{"combiner": "baseline", "variant": "default", "seed": 0, "status": "completed", "started_at": "",
          "run_dir": str(tmp_path), "label": "baseline"}]
    )  # fmt: skip
    with pytest.warns(UserWarning, match="predictions.png: skipping"):
        assert collect(runs) == []
