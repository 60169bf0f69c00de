"""The generated diagram: deterministic, faithful to TABLE, and --check catches stale files."""

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
    code = "from fsm.diagram import render; import sys; sys.stdout.write(''.join(render().values()))"
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
    assert len(outs) == 1 and outs == {"".join(diagram.render().values())}


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
    assert diagram.main(["--check", "--root", str(tmp_path)]) == 1
    assert set(diagram.write(tmp_path)) == expected
    assert diagram.check(tmp_path) == []
    assert diagram.main(["--check", "--root", str(tmp_path)]) == 0
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


def test_cli_check_in_a_subprocess(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "fsm.diagram", "--root", str(tmp_path)]
    stale = subprocess.run([*run, "--check"], capture_output=True, text=True)
    assert stale.returncode == 1 and "stale:" in stale.stdout and "connection.mmd" in stale.stdout
    assert subprocess.run(run, capture_output=True, text=True).returncode == 0
    assert subprocess.run([*run, "--check"], capture_output=True, text=True).returncode == 0


def test_committed_diagrams_are_fresh() -> None:
    """The repository's own diagrams/ (and README block) match the table: run
    `python -m fsm.diagram` after changing fsm/core.py."""
    assert diagram.check() == []
