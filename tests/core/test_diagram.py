"""The generated diagram: deterministic, faithful to TABLE, --check catches stale files, and the
files are found in the checkout (the installed copy's behaviour is in tests/tools/test_packaging.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from fsm import diagram
from fsm.core import TABLE, State

FRESH_README = "# x\n\nintro\n\n<!-- fsm:begin -->\nold\n<!-- fsm:end -->\n\ntail\n"


def test_render_is_deterministic_across_processes() -> None:
    code = (
        "from fsm.diagram import render, checkout; import sys; "
        "sys.stdout.write(''.join(render(checkout()).values()))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("0", "1")
    }
    assert len(outs) == 1 and outs == {"".join(diagram.render(diagram.checkout()).values())}


def test_title_is_front_matter_mermaid_keeps() -> None:
    source = diagram.mermaid()
    assert source.startswith(f"---\ntitle: {diagram.TITLE}\n---\nstateDiagram-v2\n")
    assert ":" not in diagram.TITLE  # a colon would break the YAML front matter
    assert "s_active" not in source.split("classDef s_active", 1)[1]  # no live-state styling
    assert not any(line != line.rstrip() for line in source.splitlines())


def test_edges_and_guards_match_the_table() -> None:
    source = diagram.mermaid()
    drawn = set()
    for src, dst, labels in re.findall(r"^\s*(\w+) --> (\w+): (.*)$", source, re.M):
        for label in labels.split(" | "):
            drawn.add((src, label.split(" ")[0], dst))
        assert "disconnect" not in labels
    expected = set()
    for e in TABLE:
        for src in e.source if isinstance(e.source, tuple) else (e.source,):
            expected.add((src.value, e.event, (e.dest or src).value))
            if e.guards:
                assert (
                    f"{e.event}" in source
                    and " & ".join(g for g in e.guards if not g.startswith("!")) in source
                )
    assert drawn == expected
    assert "[*] --> IDLE" in source
    assert {f'state "{s.value}" as {s.value}' for s in State} <= {
        line.strip() for line in source.splitlines()
    }


def test_page_embeds_source_and_legend() -> None:
    files = diagram.render(Path("/nonexistent"))
    page = files[Path("/nonexistent") / diagram.PAGE]
    assert f"```mermaid\n{diagram.mermaid()}```" in page
    for name in ("DEGRADED_RED", "client_id_in_use", "backoff_elapsed", "min_session_elapsed"):
        assert name in page
    assert "- `within_handshake_deadline`: now < HANDSHAKING entry + handshake_timeout." in page


def test_check_write_cycle_in_a_temporary_root(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text(FRESH_README)
    expected = {tmp_path / diagram.MMD, tmp_path / diagram.PAGE, tmp_path / "README.md"}
    assert set(diagram.check(tmp_path)) == expected
    assert set(diagram.write(tmp_path)) == expected
    assert diagram.check(tmp_path) == []
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("# x\n\nintro\n\n<!-- fsm:begin -->\n```mermaid\n---\ntitle:")
    assert readme.endswith("```\n<!-- fsm:end -->\n\ntail\n")
    (tmp_path / diagram.MMD).write_text("stale\n")
    assert diagram.check(tmp_path) == [tmp_path / diagram.MMD]
    assert diagram.write(tmp_path) == [tmp_path / diagram.MMD]
    assert diagram.write(tmp_path) == []


def test_readme_without_markers_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# no markers\n")
    diagram.write(tmp_path)
    assert (tmp_path / "README.md").read_text() == "# no markers\n"
    assert diagram.check(tmp_path) == []


def _project(path: Path, name: str = "ibgw-fsm", diagrams: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "pyproject.toml").write_text(f'[project]\nname = "{name}"\n')
    if diagrams:
        (path / "diagrams").mkdir()
    return path


def test_a_checkout_is_this_projects_pyproject_with_diagrams(tmp_path: Path) -> None:
    assert diagram.is_checkout(_project(tmp_path / "ok"))
    assert not diagram.is_checkout(_project(tmp_path / "other", name="bench"))
    assert not diagram.is_checkout(_project(tmp_path / "no-diagrams", diagrams=False))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "pyproject.toml").write_text("[project\n")
    (tmp_path / "broken" / "diagrams").mkdir()
    assert not diagram.is_checkout(tmp_path / "broken")
    assert not diagram.is_checkout(tmp_path / "missing")


def test_find_checkout_walks_up_from_each_start_in_order(tmp_path: Path) -> None:
    outer = _project(tmp_path / "outer")
    deep = outer / "fsm" / "cli"
    deep.mkdir(parents=True)
    inner = _project(outer / "vendored")
    assert diagram.find_checkout(deep) == outer
    assert diagram.find_checkout(inner / "x" / "..") == inner
    assert diagram.find_checkout(tmp_path, deep) == outer  # tmp_path has none above it
    assert diagram.find_checkout(inner, deep) == inner
    assert diagram.find_checkout(tmp_path) is None


def test_running_from_the_repository_finds_this_checkout(tmp_path: Path) -> None:
    """Editable install or run in the repository: the package's own checkout, wherever the
    current directory is."""
    repo = Path(diagram.__file__).resolve().parents[1]
    assert diagram.checkout() == repo
    assert diagram.checkout(cwd=tmp_path) == repo
    assert diagram.checkout(cwd=_project(tmp_path / "elsewhere")) == repo


def test_committed_diagrams_are_fresh() -> None:
    """The repository's own diagrams/ (and README block) match the table: run `ibgw diagram`
    after changing fsm/core.py."""
    assert diagram.check() == []
