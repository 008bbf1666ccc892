"""MkDocs hook: serve the committed figures of ``results/`` with the site.

mkdocs only reads pages and files under ``docs/``; the tables and figures of a results folder
live in ``results/<name>/`` next to it, where ``mtbench`` regenerates them. This hook adds every
``results/**/*.png`` file to the site as ``results/...``, so a page links to it with a relative
path (``../results/shapes40_compare/error_vs_speed.png`` from ``docs/guide/paper.md``) and the
figure in the docs is always the one in the repository.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
PATTERNS = ("*.png",)


def on_files(files, config):
    for pattern in PATTERNS:
        for path in sorted((ROOT / "results").rglob(pattern)):
            rel = path.relative_to(ROOT).as_posix()
            if "/runs/" in f"/{rel}" or files.get_file_from_path(rel) is not None:
                continue
            files.append(File.generated(config, rel, abs_src_path=str(path)))
    return files
