"""The documentation: its example combiner runs through the real CLI, and everything it points
at exists (links between pages, snippet includes, repository files named in code spans)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, run_cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
PAGES = sorted(
    p for p in DOCS.rglob("*.md") if not p.is_relative_to(DOCS / "results")
)  # docs/results/: outputs, not pages
#: the folders of repository files that a page may name in a code span
REPO_PREFIXES = ("mtbench/", "configs/", "scripts/", "tests/", "examples/", "docs/", ".ci/")


def test_example_combiner_runs_through_the_cli(tmp_path):
    """examples/my_combiner.py, included verbatim in docs/extending/combiner.md, trains a run."""
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(EXAMPLES), os.environ.get("PYTHONPATH", "")) if p)}
    args = ["combiner=mean", f"hydra.searchpath=[file://{EXAMPLES / 'configs'}]", *TINY]
    proc = run_cli("mtbench", args, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = list((tmp_path / "results" / "shapes40" / "runs" / "mean").glob("*/seed=0/metrics.json"))
    assert len(found) == 1, found
    metrics = json.loads(found[0].read_text())
    assert metrics["status"] == "completed" and metrics["combiner"] == "mean"
    assert metrics["config"]["combiner"]["_target_"] == "my_combiner.Mean"
    numbers = [*metrics["test"].values(), *metrics["val"].values(), metrics["train_step_s"]]
    assert numbers and all(isinstance(v, float) and math.isfinite(v) for v in numbers), metrics
    assert "| mean |" in (tmp_path / "results" / "shapes40" / "table.md").read_text()


def test_example_combiner_from_the_command_line_alone(tmp_path):
    """No config file: ``+combiner._target_`` names the class, its options pass to it (and a
    misspelt one is refused by the class itself, in one line)."""
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(EXAMPLES), os.environ.get("PYTHONPATH", "")) if p)}
    args = ["+combiner._target_=my_combiner.Mean", "combiner.name=mean", "+combiner.scale=2", *TINY]
    proc = run_cli("mtbench", args, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (found,) = (tmp_path / "results" / "shapes40" / "runs" / "mean").glob("*/seed=0/metrics.json")
    metrics = json.loads(found.read_text())
    assert metrics["status"] == "completed" and metrics["config"]["combiner"]["scale"] == 2
    assert metrics["overrides"]["combiner.scale"] == "2" and "combiner._target_" in metrics["overrides"]
    bad = run_cli("mtbench", [*args[:2], "+combiner.scal=2", *TINY], cwd=tmp_path, env=env)
    errors = [x for x in bad.stderr.splitlines() if x.startswith("mtbench: error:")]
    assert bad.returncode == 2 and len(errors) == 1 and "combiner.scal is not an option" in errors[0]


def _prose(text: str) -> str:
    """The page without its fenced code blocks (commands there may name files yet to be written)."""
    return re.sub(r"^ *```.*?^ *```", "", text, flags=re.DOTALL | re.MULTILINE)


def _links(text: str) -> list[str]:
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", _prose(text))


def _resolve(page: Path, target: str) -> Path | None:
    """The file a relative link of ``page`` points at; None for external links and anchors."""
    target = target.split("#", 1)[0]
    if not target or re.match(r"^[a-z]+:", target):
        return None
    return (page.parent / target).resolve()


@pytest.mark.parametrize(
    "page", [*PAGES, ROOT / "README.md", DOCS / "results" / "README.md"], ids=lambda p: str(p.relative_to(ROOT))
)
def test_every_link_and_named_file_exists(page):
    text = page.read_text(encoding="utf-8")
    missing = []
    for target in _links(text):
        path = _resolve(page, target)
        if path is not None and not path.exists():
            missing.append(f"link {target}")
    for snippet in re.findall(r'--8<-- "([^"]+)"', text):
        if not (ROOT / snippet.split(":", 1)[0]).is_file():
            missing.append(f"snippet {snippet}")
    for span in re.findall(r"`([^`\s]+)`", _prose(text)):
        span = span.split("::", 1)[0].rstrip(".,;:")
        if span.startswith(REPO_PREFIXES) and not re.search(r"[<>*{}\[\]=]|\.\.\.", span):
            if not (ROOT / span).exists():
                missing.append(f"file {span}")
    for target in re.findall(r"^::: ([\w.]+)", text, flags=re.MULTILINE):
        module = target
        while module and not _module_file(module):
            module = module.rpartition(".")[0]
        if not module:
            missing.append(f"API {target}")
    assert not missing, f"{page.relative_to(ROOT)} points at what does not exist: {missing}"


def _module_file(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def test_every_page_is_in_the_nav():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r":\s*([\w/.-]+\.md)\s*$", config, flags=re.MULTILINE))
    pages = {p.relative_to(DOCS).as_posix() for p in PAGES}
    assert pages == listed, f"not in the nav: {sorted(pages - listed)}; in the nav, no page: {sorted(listed - pages)}"


#: the pages that include an example file whole, and that file
EXAMPLE_PAGES = {
    "extending/combiner.md": "examples/my_combiner.py",
    "your-network/backward.md": "examples/resnet_mgda.py",
    "your-network/layer.md": "examples/resnet_graddrop.py",
}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_snippet_markers_are_intact(page):
    """Every snippet line is pymdownx.snippets' exact syntax (a formatter that reflows a code block
    turns ``--8<-- "x"`` into ``--8 < --"x"``, which the site then shows as text)."""
    text = page.read_text(encoding="utf-8")
    lines = [x.strip() for x in text.splitlines()]
    lines = [x for x in lines if re.match(r"(<!-- )?--\s*8", x) or re.search(r"8\s+<|<\s+--", x)]
    bad = [x for x in lines if not re.fullmatch(r'(<!-- )?--8<-- ("[^"]+"|\[(start|end):[\w-]+\])( -->)?', x)]
    assert not bad, f"{page.relative_to(ROOT)}: malformed snippet markers {bad}"


@pytest.mark.parametrize("page,example", sorted(EXAMPLE_PAGES.items()))
def test_example_pages_include_their_example(page, example):
    """The include sits in a code block the formatter leaves alone (``<!-- fmt: off -->``)."""
    text = (DOCS / page).read_text(encoding="utf-8")
    block = f'<!-- fmt: off -->\n```python\n--8<-- "{example}"\n```\n<!-- fmt: on -->'
    assert block in text, f"{page} must include {example} as {block!r}"


def _page_text(html: str) -> str:
    """The visible text of a built page (code blocks' highlighting spans removed)."""
    import html as html_lib

    return html_lib.unescape(re.sub(r"<[^>]+>", "", html))


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists(),
    reason="mkdocs is not installed (pip install -e '.[docs]')",
)
def test_mkdocs_build_strict(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    cmd = [str(mkdocs) if mkdocs.exists() else "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert (tmp_path / "site" / "results" / "shapes40_compare" / "error_vs_speed.png").is_file()
    assert "GradDrop" in (tmp_path / "site" / "combiners" / "graddrop" / "index.html").read_text(encoding="utf-8")
    for page, example in EXAMPLE_PAGES.items():
        built = _page_text((tmp_path / "site" / page.removesuffix(".md") / "index.html").read_text(encoding="utf-8"))
        code = [x.strip() for x in (ROOT / example).read_text(encoding="utf-8").splitlines() if x.strip()]
        missing = [x for x in code if x not in built]
        assert not missing, f"{page} does not show {example}: {missing[:3]}"
        assert "--8<--" not in built and "--8 <" not in built, page
    math = (tmp_path / "site" / "combiners" / "upgrad" / "index.html").read_text(encoding="utf-8")
    assert 'class="arithmatex"' in math, "the combiner pages' equations are not rendered as math"


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_runs_never_write_over_committed_files():
    """`results/` is the user's (ignored by git, nothing committed there); the reference outputs
    the docs quote live in docs/results/, where no run writes."""
    tracked = subprocess.run(
        ["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked == [], f"committed files under results/, which runs rewrite: {tracked[:5]}"
    ignored = subprocess.run(["git", "check-ignore", "-q", "results/shapes40/table.md"], cwd=ROOT)
    assert ignored.returncode == 0, "results/ must be ignored by git"
    kept = subprocess.run(["git", "check-ignore", "-q", "docs/results/shapes40/table.md"], cwd=ROOT)
    assert kept.returncode == 1 and (DOCS / "results" / "shapes40" / "table.md").is_file()
