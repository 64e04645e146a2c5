"""The documentation: the site builds strictly, and what it states is kept in step with the
code (the options table, the exit statuses, the notebooks' saved outputs, the README)."""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import rheo_nb
from rheo_nb.cli import Exit

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NOTEBOOKS = ROOT / "notebooks"
VIEW_MIME = "application/vnd.jupyter.widget-view+json"
STATE_MIME = "application/vnd.jupyter.widget-state+json"


def table(page: Path, header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header row starts with ``header``."""
    lines = page.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def code(cell: str) -> str:
    found = re.match(r"`([^`]*)`", cell)
    assert found is not None, cell
    return found.group(1)


# --- the site ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_site_builds_with_strict(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = tmp_path / "site"
    reference = (site / "reference" / "index.html").read_text()
    # The reference shows fetch_sync and start with fetch's parameters, as help() does.
    for name in ("fetch_sync", "start"):
        section = reference[reference.index(f'id="rheo_nb.{name}"') :]
        assert "limit_per_host" in section[:20_000], name
    for page in (
        "01_quickstart",
        "02_sync_and_background",
        "03_integrity_and_resume",
        "04_datasets",
    ):
        assert (site / "notebooks" / page / "index.html").exists()


def test_every_page_of_the_nav_exists_and_every_page_is_in_the_nav() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    listed = set(re.findall(r"^\s*- (?:[^:\n]+: )?([\w/.-]+\.(?:md|ipynb))$", config, re.MULTILINE))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.glob("*.md")}
    assert pages <= listed
    for page in listed:
        assert (DOCS / page).exists(), page


# --- what the pages state ----------------------------------------------------------------------


def test_the_options_table_matches_fetch_and_options() -> None:
    rows = table(DOCS / "getting-started.md", "option")
    documented = {code(row[0]): row[1] for row in rows}
    params = inspect.signature(rheo_nb.fetch).parameters
    expected = [name for name in params if name not in ("items", "dest")]
    assert list(documented) == expected
    assert rheo_nb.Options.names() <= set(documented)
    for name, default in documented.items():
        assert ast.literal_eval(code(default)) == params[name].default, name


def test_the_exit_statuses_in_the_docs_are_the_real_ones() -> None:
    rows = table(DOCS / "command-line.md", "status")
    assert [int(code(row[0])) for row in rows] == sorted(int(e) for e in Exit)
    rows = table(ROOT / "README.md", "exit status")
    assert [int(row[0]) for row in rows] == sorted(int(e) for e in Exit)


def test_the_docs_speak_of_the_working_files_as_they_are() -> None:
    for page in [*DOCS.glob("*.md"), ROOT / "README.md", NOTEBOOKS / "README.md"]:
        text = page.read_text()
        assert "name.part" not in text, page
        assert ".part.json" not in text, page


# --- the README is a front page ------------------------------------------------------------


def test_the_readme_keeps_the_two_setup_commands_and_ci_runs_the_second() -> None:
    readme = (ROOT / "README.md").read_text()
    assert (
        "python3 -m venv .venv && .venv/bin/pip install -e '.[notebook]' && .venv/bin/rheo-nb demo"
        in readme
    )
    assert "\nbash tests/run\n" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.rstrip().endswith("exec bash tests/run")


def test_the_readme_mentions_no_path_outside_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "../" not in readme
    assert "shared/" not in readme
    for target in re.findall(r"\]\(([^)#]+)", readme):
        if "://" not in target:
            assert (ROOT / target).exists(), target


# --- the notebooks are committed with their outputs ----------------------------------------


def load(path: Path) -> dict[str, Any]:
    notebook: dict[str, Any] = json.loads(path.read_text())
    return notebook


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_a_notebook_is_committed_run_in_order_with_its_outputs(path: Path) -> None:
    nb = load(path)
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    # Run top to bottom in one kernel, as Run All does, and saved as it ran.
    assert [c["execution_count"] for c in cells] == list(range(1, len(cells) + 1))
    outputs = [o for c in cells for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert not [o for o in outputs if "Traceback" in "".join(o.get("text", ""))]
    # The widgets' final state is saved, and each also has a static final summary.
    state = nb["metadata"]["widgets"][STATE_MIME]["state"]
    widgets = [o for o in outputs if VIEW_MIME in o.get("data", {})]
    assert widgets
    for output in widgets:
        assert output["data"][VIEW_MIME]["model_id"] in state
        assert "rheo-nb-progress-final" in "".join(output["data"]["text/html"])
    # Results render as tables, and no cell leaves a path to /tmp behind.
    assert any(
        "rheo-nb-results" in "".join(o.get("data", {}).get("text/html", "")) for o in outputs
    )
    assert "/tmp/" not in path.read_text()
