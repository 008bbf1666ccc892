"""The report: tables (bold best, paper columns, significance, per-attribute), plots, the
Welch t-test and the t distribution. Synthetic runs written straight to disk: no training."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest
from conftest import cli_case

from mtbench.report.significance import betainc, t_cdf, t_sf_two_sided, welch_t_test
from mtbench.report.table import SIG_HEADER, build_tables, report

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "mtbench" / "report" / "paper" / "celeba.csv"
COLUMNS = [["error_rate", "error rate (%)", False], ["max_f1", "max F1", True]]
ATTRS = ["smiling", "young", "male"]


def write_run(folder: Path, combiner: str, seed: int, error: float, f1: float, step_s: float, *, task: str = "celeba",
              status: str = "completed", columns=COLUMNS, attr_errors=None, epochs: int = 3, cpu_s: float | None = None,
              load: list[float] | None = None, cores: int = 2) -> Path:  # fmt: skip
    run = folder / "runs" / combiner / f"seed={seed}"
    run.mkdir(parents=True, exist_ok=True)
    m = {"task": task, "combiner": combiner, "seed": seed, "status": status, "config": {"seed": seed}}
    if status == "completed":
        keys = [k for k, _, _ in columns]
        test = dict(zip(keys, [error, f1, 50.0][: len(keys)]))
        m.update(test=test, val=dict(test), metric_columns=columns, train_step_s=step_s, best_epoch=epochs)
        if cpu_s is not None:  # what mtbench writes since it records CPU time and the load
            m.update(train_step_cpu_s=cpu_s, speed_clock="cpu")
        if load is not None:
            m["load"] = {"cores": cores, "load_1m": load, "max_1m": max(load), "over_cores": max(load) > cores}
        rows = [
            {"epoch": e, "train_loss": 1.0 / e, **{f"val_{k}": v + (epochs - e) for k, v in test.items()}}
            for e in range(1, epochs + 1)
        ]
        pd.DataFrame(rows).to_csv(run / "history.csv", index=False)
        if attr_errors is not None:
            pd.DataFrame(
                {"attribute": ATTRS, "base_rate": [0.5, 0.7, 0.4], "error": attr_errors, "max_f1": [80.0, 80.0, 80.0]}
            ).to_csv(run / "per_attribute.csv", index=False)
    elif status == "failed":
        m["reason"] = "non-finite loss"
    (run / "metrics.json").write_text(json.dumps(m))
    return run


@pytest.fixture
def celeba(tmp_path) -> Path:
    return make_celeba(tmp_path)


def make_celeba(tmp_path: Path) -> Path:
    """results/paper_celeba with 3 seeds of baseline, graddrop (clearly better), mgda (clearly
    worse, slower) and pcgrad (no real difference); the paper's numbers next to it."""
    folder = tmp_path / "results" / "paper_celeba"
    spec = {  # error per seed, max F1 per seed, step time, per-attribute offset
        "baseline": ([9.00, 9.10, 8.95], [29.0, 29.2, 29.1], 0.010, [0.0, 0.0, 0.0]),
        "mgda": ([10.90, 11.00, 10.80], [26.0, 25.8, 26.1], 0.040, [1.0, 3.0, 2.0]),
        "pcgrad": ([9.20, 8.90, 9.05], [29.1, 29.0, 29.3], 0.050, [0.5, -0.5, 0.1]),
        "graddrop": ([8.50, 8.55, 8.45], [29.6, 29.7, 29.5], 0.020, [-1.0, -0.2, 0.4]),
    }
    for name, (errs, f1s, step, offs) in spec.items():
        for seed, (e, f) in enumerate(zip(errs, f1s)):
            attr = [10.0 + o + 0.01 * seed for o in offs]
            write_run(folder, name, seed, e, f, step * (1 + 0.01 * seed), attr_errors=attr)
    (tmp_path / "results" / "paper").mkdir()
    (tmp_path / "results" / "paper" / "celeba.csv").write_text(PAPER.read_text())
    return folder


# --- the t distribution and Welch's test ----------------------------------------------------


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, 2.5, 12.0, 150.0])
def test_t_distribution_closed_forms(t):
    # df = 1 (Cauchy) and df = 2 have closed forms; df -> inf is the normal
    assert t_sf_two_sided(t, 1) == pytest.approx(1 - 2 * math.atan(t) / math.pi, rel=1e-10, abs=1e-14)
    assert t_sf_two_sided(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-10, abs=1e-14)
    # df = 4: P(T <= t) = 1/2 + (3/8) t / sqrt(1 + t^2/4) (1 - t^2 / (12 (1 + t^2/4)))
    q = 1 + t * t / 4
    assert t_cdf(t, 4) == pytest.approx(0.5 + 3 / 8 * t / math.sqrt(q) * (1 - t * t / (12 * q)), rel=1e-10)
    assert t_sf_two_sided(t, 1e7) == pytest.approx(math.erfc(t / math.sqrt(2)), rel=1e-4, abs=1e-12)


def test_t_cdf_is_symmetric_and_monotone():
    values = [t_cdf(t, 3.4) for t in (-5, -1, -0.1, 0, 0.1, 1, 5)]
    assert values == sorted(values) and values[3] == pytest.approx(0.5)
    assert t_cdf(-1.3, 2.7) == pytest.approx(1 - t_cdf(1.3, 2.7), rel=1e-12)


def test_betainc_known_values():
    assert betainc(2, 3, 0.4) == pytest.approx(0.5248, rel=1e-12)  # a polynomial for integer a, b
    assert betainc(0.5, 0.5, 0.3) == pytest.approx(2 / math.pi * math.asin(math.sqrt(0.3)), rel=1e-12)
    assert betainc(1, 1, 0.37) == pytest.approx(0.37)
    assert (betainc(3, 4, 0.0), betainc(3, 4, 1.0)) == (0.0, 1.0)
    with pytest.raises(ValueError):
        betainc(0, 1, 0.5)


def test_welch_matches_a_hand_computation():
    res = welch_t_test([1, 2, 3], [4, 5, 7])
    # var 1 and 7/3; se^2 = 1/3 + 7/9 = 10/9; t = -(10/3) / sqrt(10/9) = -sqrt(10)
    assert res.t == pytest.approx(-math.sqrt(10))
    assert res.df == pytest.approx((10 / 9) ** 2 / ((1 / 3) ** 2 / 2 + (7 / 9) ** 2 / 2))
    assert res.p == pytest.approx(t_sf_two_sided(math.sqrt(10), res.df)) and 0.04 < res.p < 0.045
    assert res.significant(0.05) and not res.significant(0.01)


def test_welch_edge_cases():
    assert welch_t_test([1, 1, 1], [1, 1]).p == 1.0
    assert welch_t_test([1, 1, 1], [2, 2]).p == 0.0
    assert welch_t_test([1.0, 2.0], [1.0, 2.0]).p == pytest.approx(1.0)
    with pytest.raises(ValueError):
        welch_t_test([1.0], [1.0, 2.0])


def test_welch_false_positive_rate_is_near_alpha():
    rng = random.Random(0)
    trials = 2000
    hits = sum(
        welch_t_test([rng.gauss(0, 1) for _ in range(3)], [rng.gauss(0, 2) for _ in range(3)]).p < 0.05
        for _ in range(trials)
    )
    assert 0.02 < hits / trials < 0.07  # Welch's test is close to its nominal level, slightly conservative


# --- tables ---------------------------------------------------------------------------------


def test_paper_numbers_file():
    paper = pd.read_csv(PAPER).set_index("combiner")
    assert list(paper.columns) == ["method", "error_rate", "max_f1", "speed"]
    expected = {
        "baseline": (8.71, 29.35, 1.00), "clip": (8.70, 29.34, 1.00), "gradpenalty": (8.63, 29.43, 0.35),
        "mgda": (10.82, 26.00, 0.25), "pcgrad": (8.72, 29.25, 0.20), "gradnorm": (8.68, 29.32, 0.41),
        "random_graddrop": (8.60, 29.42, 0.45), "graddrop": (8.52, 29.57, 0.45),
    }  # fmt: skip
    assert list(paper.index) == list(expected)
    for name, values in expected.items():
        assert tuple(paper.loc[name, ["error_rate", "max_f1", "speed"]]) == values


def test_celeba_table(celeba):
    tables = build_tables(celeba)
    md = (celeba / "table.md").read_text()
    lines = [line for line in md.splitlines() if line.startswith("|")]
    assert lines[0] == (
        "| combiner | error rate (%) ↓ | paper error rate (%) | max F1 ↑ | paper max F1 | speed vs baseline | paper speed | seeds | "
        + "Δm% ↓ | paper Δm% | mean rank ↓ | paper mean rank | "
        + SIG_HEADER
        + " |"
    )
    assert len(lines) == 2 + 4
    rows = {line.split(" | ")[0].strip("| "): line for line in lines[2:]}
    assert list(rows) == ["baseline", "mgda", "pcgrad", "graddrop"]  # the paper's order
    # best of each column in bold: graddrop's error and max F1, the paper's GradDrop; no speed of ours
    # (none lies outside the spread of the baseline's own step times: mtbench.report.speed.boldable)
    assert "| **8.50 ± 0.05** | **8.52** | **29.60 ± 0.10** | **29.57** |" in rows["graddrop"]
    # 1.00 by definition (its spread is a footnote); Δm% 0 against itself (no single-task runs, no
    # published single-task row: each row's baseline); mean rank (2 + 3) / 2 (error 2nd, max F1 3rd)
    assert "| 1.00 | **1.00** | 3 | 0.00 | 0.00 | 2.50 | 5.00 | — |" in rows["baseline"]
    # Δm% by hand: (100/2) * ((10.90 - 9.0167) / 9.0167 - (25.967 - 29.1) / 29.1) = 15.83; the
    # paper's MGDA against the paper's baseline: 50 * (2.11 / 8.71 + 3.35 / 29.35) = 17.82
    assert rows["mgda"].endswith("| 0.25 ± 0.00 | 0.25 | 3 | 15.83 | 17.82 | 4.00 | 8.00 | worse, p<0.001 |")
    assert "| 3 | 0.13 | 0.23 | 2.50 | 7.00 | n.s., p=" in rows["pcgrad"]  # ties share the mean rank
    assert "| **-3.72** | **-1.47** | **1.00** | **1.00** | better, p=" in rows["graddrop"]
    assert md.count("**") == 2 * 9
    assert "B_k from each row's baseline run" in md and "against its baseline row, ranks among the paper's 8 rows" in md
    # old runs (no CPU step time): the speed is from wall time, and the footnote says so
    assert (
        "from train_step_s, the wall (on a GPU: device) time per training step, because 12 of 12 runs have no CPU time"
        in md
    )
    assert "baseline step time 10.10 ± 0.10 ms (wall time, 3 seed(s))" in md

    csv = pd.read_csv(celeba / "table.csv").set_index("combiner")
    assert csv.loc["graddrop", "paper_error_rate"] == 8.52 and csv.loc["mgda", "paper_speed"] == 0.25
    base_err, base_f1, mgda_f1 = (9.00 + 9.10 + 8.95) / 3, 29.1, (26.0 + 25.8 + 26.1) / 3
    expected_dm = 50 * ((10.9 - base_err) / base_err - (mgda_f1 - base_f1) / base_f1)
    assert csv.loc["mgda", "delta_m"] == pytest.approx(expected_dm)
    assert (csv["delta_m_vs"] == "baseline").all() and csv.loc["pcgrad", "mean_rank"] == 2.5
    assert csv.loc["graddrop", "test_error_rate_mean"] == pytest.approx(8.5)
    expected = welch_t_test([8.50, 8.55, 8.45], [9.00, 9.10, 8.95])
    assert csv.loc["graddrop", "p_vs_baseline"] == pytest.approx(expected.p)
    assert csv.loc["graddrop", "diff_vs_baseline"] == pytest.approx(expected.diff)
    assert bool(csv.loc["graddrop", "significant"]) and not bool(csv.loc["pcgrad", "significant"])
    assert math.isnan(csv.loc["baseline", "p_vs_baseline"])
    assert tables.paper_file is not None and tables.paper_file.name == "celeba.csv"

    tex = (celeba / "table.tex").read_text()
    assert tex.splitlines()[0].startswith("%") and "booktabs" in tex.splitlines()[0]  # its rules are booktabs'
    assert tex.splitlines()[1].startswith(r"\begin{tabular}{lrrrrrrrrrrrl}")
    assert r"$\Delta$m\% $\downarrow$" in tex
    assert r"\textbf{8.50 $\pm$ 0.05}" in tex and r"\textbf{8.52}" in tex and "better, p=" in tex
    assert "random" not in tex and "n.s., p=" in tex and r"p $<$ 0.05" in tex


def test_per_attribute_table(celeba):
    build_tables(celeba)
    frame = pd.read_csv(celeba / "per_attribute.csv")
    assert list(frame.columns) == ["attribute", "base_rate", "baseline", "mgda", "pcgrad", "graddrop"]
    assert list(frame["attribute"]) == ATTRS
    assert list(frame["base_rate"]) == pytest.approx([50.0, 70.0, 40.0])
    assert list(frame["baseline"]) == pytest.approx([10.01] * 3)
    assert list(frame["graddrop"]) == pytest.approx([-1.0, -0.2, 0.4])
    md = (celeba / "per_attribute.md").read_text().splitlines()
    assert md[0] == "| attribute | base rate (%) | baseline error (%) | mgda Δ | pcgrad Δ | graddrop Δ |"
    assert md[2] == "| smiling | 50.0 | 10.01 | +1.00 | +0.50 | -1.00 |"
    assert md[-3] == "| helped (Δ < 0) |  |  | 0 | 1 | 2 |"
    assert md[-2] == "| hurt (Δ > 0) |  |  | 3 | 2 | 1 |"
    head, first = (celeba / "per_attribute.tex").read_text().splitlines()[:2]
    assert "usepackage{booktabs}" in head and first.startswith(r"\begin{tabular}")


def test_no_paper_columns_for_other_tasks_and_failed_runs_counted(tmp_path):
    folder = tmp_path / "results" / "shapes40_compare"
    for seed in (0, 1):
        write_run(folder, "baseline", seed, 11.0 + seed, 70.0, 0.01, task="shapes40")
        write_run(folder, "graddrop", seed, 12.0 + seed, 69.0, 0.02, task="shapes40")
    write_run(folder, "graddrop", 2, 0, 0, 0, task="shapes40", status="failed")
    write_run(folder, "clip", 0, 11.2, 71.0, 0.01, task="shapes40")
    tables = build_tables(folder)
    assert tables.paper_file is None and tables.per_attribute is None
    lines = [line for line in (folder / "table.md").read_text().splitlines() if line.startswith("|")]
    assert (
        lines[0]
        == f"| combiner | error rate (%) ↓ | max F1 ↑ | speed vs baseline | seeds | Δm% ↓ | mean rank ↓ | {SIG_HEADER} |"
    )
    # baseline and clip tie on speed (not bold: inside the baseline's spread); clip's Δm%: 50 * ((11.2 - 11.5) / 11.5 - (71 - 70) / 70) = -2.02
    assert lines[3] == "| clip | **11.20** | **71.00** | 1.00 | 1 | **-2.02** | **1.00** | n/a |"
    assert "| 2 (+1 failed) | 5.06 | 3.00 | n.s., p=" in lines[4]  # 50 * (1 / 11.5 + 1 / 70); last on both


def test_other_metric_columns_and_explicit_paper_file(tmp_path):
    """A transfer task: its own metric columns (no max F1); a paper file given by hand."""
    cols = [
        ["top1_error", "top-1 error (%)", False],
        ["top5_error", "top-5 error (%)", False],
        ["agreement", "source agreement (%)", True],
    ]
    folder = tmp_path / "cifar"
    for seed in range(3):
        write_run(folder, "baseline", seed, 30.0 + seed, 10.0, 0.01, task="cifar100_transfer", columns=cols)
        write_run(folder, "graddrop", seed, 28.0 + seed, 9.0, 0.01, task="cifar100_transfer", columns=cols)
    paper = tmp_path / "p.csv"
    paper.write_text("combiner,top1_error,speed\nbaseline,31.0,1.0\ngraddrop,29.5,0.9\n")
    build_tables(folder, paper=paper)
    head = (folder / "table.md").read_text().splitlines()[0]
    assert head.startswith(
        "| combiner | top-1 error (%) ↓ | paper top-1 error (%) | top-5 error (%) ↓ | source agreement (%) ↑ | speed vs baseline | paper speed |"
    )
    assert "max F1" not in head


def test_report_prints_notes_and_draws_plots(celeba):
    import io

    out = io.StringIO()
    tables = report(celeba, out=out)
    text = out.getvalue()
    assert tables.markdown.strip() in text
    assert "Welch's two-sided t-test" in text and "alpha = 0.05" in text and "celeba.csv" in text
    for stem in ("error_vs_speed", "val_curves"):
        for ext in ("png", "pdf"):
            path = celeba / f"{stem}.{ext}"
            assert path.stat().st_size > 1000
            assert path.read_bytes()[:4] == (b"\x89PNG" if ext == "png" else b"%PDF")
    assert not list(celeba.glob(".*.tmp*")), "temporary files left behind"


def test_plots_skip_missing_histories(celeba):
    from mtbench.report.plots import make_plots

    for path in celeba.glob("runs/*/*/history.csv"):
        path.unlink()
    written = make_plots(celeba)
    assert [p.name for p in written] == ["error_vs_speed.png", "error_vs_speed.pdf"]


CELEBA = Path("results") / "paper_celeba"  # in the folder of a run that make_celeba filled
cli_case(__name__, "--no-plots", "mtbench-table", lambda f: ["--no-plots", str(f / CELEBA)], setup=make_celeba)
cli_case(
    __name__,
    "--paper nope.csv",
    "mtbench-table",
    lambda f: ["--paper", str(f / "nope.csv"), str(f / CELEBA)],
    setup=make_celeba,
)


def test_mtbench_table_options(cli_runs):
    proc = cli_runs[__name__, "--no-plots"]
    celeba = proc.cwd / CELEBA
    assert proc.returncode == 0, proc.stderr
    assert (celeba / "table.md").is_file() and not (celeba / "error_vs_speed.png").exists()
    assert "paper error rate (%)" in proc.stdout
    proc = cli_runs[__name__, "--paper nope.csv"]
    assert proc.returncode == 1 and "is not a file" in proc.stderr


def _figures(folder: Path):
    from mtbench.report.load import completed_with_speed, load_runs
    from mtbench.report.plots import error_vs_speed_figure, load_histories, val_curves_figure

    runs, _, _, columns = load_runs(folder)
    done = completed_with_speed(runs)
    return error_vs_speed_figure(done, columns, "t"), val_curves_figure(load_histories(done), columns, "t")


def _legend_texts(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts() if t.get_text()]


def test_plot_legends_list_only_what_is_drawn(tmp_path):
    one = tmp_path / "one"
    for name, err in (("baseline", 10.0), ("graddrop", 9.0)):
        write_run(one, name, 0, err, 50.0, 0.01, task="shapes40", epochs=1)
    speed, curves = _figures(one)
    ax = speed.axes[0]
    assert _legend_texts(ax.get_legend()) == ["baseline (n=1)", "graddrop (n=1)"]
    assert len(ax.collections) == 2  # one marker per row: no per-seed marks under the means
    assert _legend_texts(curves.legends[0]) == ["the run", "the baseline, for reference"]
    # a 1-epoch curve: integer epoch ticks only
    ticks = [
        t for t in curves.axes[0].get_xticks() if curves.axes[0].get_xlim()[0] <= t <= curves.axes[0].get_xlim()[1]
    ]
    assert ticks == [1.0]

    three = tmp_path / "three"
    for seed in range(3):
        for name, err in (("baseline", 10.0), ("graddrop", 9.0)):
            write_run(three, name, seed, err + 0.1 * seed, 50.0, 0.01, task="shapes40", epochs=2)
    speed, curves = _figures(three)
    assert _legend_texts(speed.axes[0].get_legend()) == [
        "baseline (n=3)",
        "graddrop (n=3)",
        "mean over seeds",
        "one seed",
    ]
    assert _legend_texts(curves.legends[0]) == [
        "mean over seeds",
        "lowest to highest seed",
        "the baseline, for reference",
    ]
    axis = curves.axes[0]
    assert [t for t in axis.get_xticks() if axis.get_xlim()[0] <= t <= axis.get_xlim()[1]] == [1.0, 2.0]


def test_packaged_paper_numbers_and_the_note_without_them(tmp_path):
    import io

    from mtbench.report.table import PACKAGED_PAPER

    folder = tmp_path / "elsewhere" / "celeba_runs"  # no paper/ next to it: the packaged numbers
    for seed in (0, 1):
        write_run(folder, "baseline", seed, 9.0 + seed, 29.0, 0.01)
    out = io.StringIO()
    tables = report(folder, out=out, plots=False)
    assert tables.paper_file == PACKAGED_PAPER / "celeba.csv" and "paper error rate (%)" in tables.markdown
    assert "Paper columns: the paper's reported numbers" in out.getvalue()

    shapes = tmp_path / "shapes"
    write_run(shapes, "baseline", 0, 11.0, 70.0, 0.01, task="shapes40")
    out = io.StringIO()
    tables = report(shapes, out=out, plots=False)
    assert tables.paper_file is None and "paper" not in tables.markdown
    notes = [line for line in out.getvalue().splitlines() if line.startswith("Paper columns")]
    assert notes == [
        "Paper columns: none, the paper reports no numbers for task shapes40 (no paper/shapes40.csv; --paper FILE gives some)."
    ]


def test_speed_from_cpu_time_under_load_and_baseline_spread_apart(tmp_path):
    """Runs with CPU step times: the speed comes from them (the wall times, inflated by a busy
    machine, do not count); rows whose runs saw a load above the cores are marked."""
    import io

    folder = tmp_path / "busy"
    walls = {"baseline": [0.010, 0.030, 0.011], "graddrop": [0.060, 0.021, 0.022]}  # wall: noise of the load
    cpus = {"baseline": [0.010, 0.0102, 0.0098], "graddrop": [0.020, 0.0202, 0.0198]}
    for name in walls:
        for seed in range(3):
            load = [1.0, 5.5] if (name, seed) == ("graddrop", 0) else [1.0, 1.5]
            write_run(
                folder,
                name,
                seed,
                9.0 + seed,
                29.0,
                walls[name][seed],
                task="shapes40",
                cpu_s=cpus[name][seed],
                load=load,
            )
    out = io.StringIO()
    tables = report(folder, out=out, plots=True)
    frame = tables.frame.set_index("combiner")
    assert frame.loc["baseline", "speed_mean"] == 1.0 and math.isnan(frame.loc["baseline", "speed_std"])
    assert frame.loc["graddrop", "speed_mean"] == pytest.approx(
        0.5, rel=0.02
    )  # CPU time: 2x slower, whatever the wall times
    md = (folder / "table.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("|")}
    assert "| 1.00 | 3 |" in rows["baseline"] and "| 0.50 ± 0.01 † | 3 |" in rows["graddrop"]
    assert (
        "from process CPU time per training step" in md
        and "baseline step time 10.00 ± 0.20 ms (CPU time, 3 seed(s))" in md
    )
    assert "†: the machine's 1-minute load average exceeded its 2 cores during 1 of 6 runs (up to 5.5)" in md
    assert "†" in out.getvalue() and "% †: the machine's" in (folder / "table.tex").read_text()

    # the same runs with an old run among them (no CPU time): every ratio falls back to wall time
    write_run(folder, "clip", 0, 9.0, 29.0, 0.010, task="shapes40")
    md = build_tables(folder).markdown
    assert "because 1 of 7 runs have no CPU time" in md

    gpu = tmp_path / "gpu"
    for name in ("baseline", "graddrop"):
        run = write_run(gpu, name, 0, 9.0, 29.0, 0.01, task="shapes40")
        m = json.loads((run / "metrics.json").read_text())
        (run / "metrics.json").write_text(
            json.dumps({**m, "device": "cuda:0", "train_step_cpu_s": None, "speed_clock": "device"})
        )
    assert "from the GPU's time per training step (CUDA events around each step)" in build_tables(gpu).markdown


def test_error_vs_speed_plot_marks_runs_under_load(tmp_path):
    folder = tmp_path / "busy"
    for name, load in (("baseline", [1.0]), ("graddrop", [4.0])):
        write_run(folder, name, 0, 9.0, 29.0, 0.01, task="shapes40", cpu_s=0.01, load=load)
    speed, _ = _figures(folder)
    ax = speed.axes[0]
    assert "load above the 2 cores (†)" in _legend_texts(ax.get_legend())
    assert "CPU time" in ax.get_xlabel()
    calm = tmp_path / "calm"
    for name in ("baseline", "graddrop"):
        write_run(calm, name, 0, 9.0, 29.0, 0.01, task="shapes40")
    speed, _ = _figures(calm)
    assert not any("load above" in t for t in _legend_texts(speed.axes[0].get_legend()))
    assert "wall time" in speed.axes[0].get_xlabel()
