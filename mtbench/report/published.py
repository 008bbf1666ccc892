"""The published numbers shown beside ours: ``paper/<task>.csv`` (one row per method, a
``combiner`` column with our names) next to the results folder, else the package's."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

#: the paper's reported numbers shipped inside the package (``paper/<task>.csv``, package data)
PACKAGED_PAPER = Path(__file__).resolve().parent / "paper"


def read_paper(path: Path | str) -> pd.DataFrame:
    """The paper's numbers: a CSV with a ``combiner`` column (our names), optionally ``method``
    (the paper's), and one column per metric key (``error_rate``, ``max_f1``, ...) plus ``speed``."""
    paper = pd.read_csv(path)
    if "combiner" not in paper.columns:
        raise ValueError(f"{path}: the paper's numbers need a 'combiner' column (got {', '.join(paper.columns)})")
    paper["combiner"] = paper["combiner"].astype(str).str.strip()
    return paper.set_index("combiner")


def find_paper(folder: Path | str, task: str) -> Path | None:
    """``paper/<task>.csv`` next to the results folder (``results/paper/<task>.csv`` for the
    default ``results_dir``: your own numbers), else the package's (``mtbench/report/paper/``)."""
    if not task:
        return None
    for candidate in (Path(folder).resolve().parent / "paper" / f"{task}.csv", PACKAGED_PAPER / f"{task}.csv"):
        if candidate.is_file():
            return candidate
    return None
