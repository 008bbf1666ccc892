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

from mtbench.errors import MtbenchError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        from mtbench.report import table

        return table.main(argv)
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
