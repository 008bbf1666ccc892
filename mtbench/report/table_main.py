"""The ``mtbench-table`` console entry point: :func:`mtbench.report.table.main` with every bad
input and every failing disk reported in one line naming the file, exit 2 (never a traceback).

- a paper CSV (``--paper FILE`` or ``paper/<task>.csv``) that is empty, binary, wrongly shaped
  or without numbers: ``mtbench-table: error: paper CSV <file> ...``;
- a results folder on a read-only or full disk: ``mtbench-table: error: cannot write <file> ...``;
- Ctrl-C: one line, exit 130 (every table already written is whole: each is written atomically).
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Any

from mtbench.errors import MtbenchError

PAPER_FIX = (
    "give a CSV with a 'combiner' column (mtbench's names) and one numeric column per metric "
    "(error_rate, max_f1, ..., speed), or leave --paper out"
)


def read_paper_checked(path: Path | str, read: Any) -> Any:
    """``read(path)`` (the table's ``read_paper``), its failures one ``MtbenchError`` naming the
    file; every column but ``method`` must hold numbers."""
    import pandas as pd

    try:
        paper = read(path)
    except (OSError, ValueError) as e:  # pandas' parser errors and a file that is not text are ValueErrors
        first = " ".join(str(e).split())[:160]
        raise MtbenchError(f"paper CSV {path} is not readable ({type(e).__name__}: {first}); {PAPER_FIX}") from None
    for column in paper.columns:
        if column == "method":
            continue
        try:
            pd.to_numeric(paper[column], errors="raise")
        except (ValueError, TypeError):
            raise MtbenchError(f"paper CSV {path}: column {column!r} does not hold numbers; {PAPER_FIX}") from None
    return paper


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        from mtbench.report import table

        read = table.read_paper
        table.read_paper = lambda path: read_paper_checked(path, read)  # the checked reader, for this command
        try:
            return table.main(argv)
        finally:
            table.read_paper = read
    except KeyboardInterrupt:
        print(
            "mtbench-table: interrupted; the tables written so far are whole, re-run to write the rest", file=sys.stderr
        )
        return 130
    except MtbenchError as e:
        print(f"mtbench-table: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        hint = "free some disk space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "make the folder writable"
        where = f" {e.filename}" if e.filename else ""
        print(f"mtbench-table: error: cannot write{where}: {e.strerror or e}; {hint} and re-run", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
