"""The published numbers shown beside ours: ``paper/<task>.csv`` (one row per method, a
``combiner`` column with our names) next to the results folder, else the package's."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

#: the paper's reported numbers shipped inside the package (``paper/<task>.csv``, package data)
PACKAGED_PAPER = Path(__file__).resolve().parent / "paper"


#: the columns of a paper CSV that hold text; every other one holds numbers
TEXT_COLUMNS = ("combiner", "method", "citation")

PAPER_FIX = (
    "give a CSV with a 'combiner' column (mtbench's names) and one numeric column per metric "
    "(error_rate, max_f1, ..., speed), or leave --paper out"
)


def read_paper(path: Path | str) -> pd.DataFrame:
    """The paper's numbers: a CSV with a ``combiner`` column (our names), optionally ``method``
    (the paper's) and ``citation``, and one column per metric key (``error_rate``, ``max_f1``,
    ...) plus ``speed``. A file that is not such a CSV is a one-line ``MtbenchError`` naming it."""
    from mtbench.errors import MtbenchError

    try:
        paper = pd.read_csv(path)
    except (OSError, ValueError) as e:  # pandas' parser errors and a file that is not text are ValueErrors
        first = " ".join(str(e).split())[:160]
        raise MtbenchError(f"paper CSV {path} is not readable ({type(e).__name__}: {first}); {PAPER_FIX}") from None
    if "combiner" not in paper.columns:
        raise MtbenchError(
            f"paper CSV {path} has no 'combiner' column (got {', '.join(map(str, paper.columns))}); {PAPER_FIX}"
        )
    for column in paper.columns:
        if column in TEXT_COLUMNS:
            continue
        try:
            pd.to_numeric(paper[column], errors="raise")
        except (ValueError, TypeError):
            raise MtbenchError(f"paper CSV {path}: column {column!r} does not hold numbers; {PAPER_FIX}") from None
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
