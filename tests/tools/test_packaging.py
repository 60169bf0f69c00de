"""`pip install .` installs what users import and run (fsm, worker, gatewaysim), nothing else;
installed that way, `ibgw diagram` works on the checkout around it and refuses anywhere else.

The wheel is built once, offline (`--no-build-isolation`, setuptools from the test extras), from a
clean copy of the source tree: a stale `build/` left in a checkout would leak into a wheel built
in place, and the build must not write into the checkout other helpers and tests are using.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALLED = ("fsm", "worker", "gatewaysim")
NOT_FOR_USERS = ("bench", "tests", "support", "worker_process", "conftest")
SKIP = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache"
)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean copy of the checkout: what the wheel is built from."""
    src = tmp_path_factory.mktemp("packaging") / "src"
    shutil.copytree(REPO, src, ignore=SKIP)
    return src


@pytest.fixture(scope="module")
def wheel(source: Path) -> Path:
    out = source.parent / "dist"
    build = ["wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(out), str(source)]
    proc = subprocess.run([sys.executable, "-m", "pip", *build], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # -v shows the backend's warnings, e.g. that `project.license` as a table is deprecated
    assert "deprecat" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr
    (built,) = out.glob("ibgw_fsm-*.whl")
    return built


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


def _sources(source: Path, top: str, pattern: str) -> set[str]:
    return {str(p.relative_to(source)) for p in (source / top).rglob(pattern) if "__pycache__" not in p.parts}


def test_wheel_holds_exactly_the_user_packages(wheel: Path, source: Path) -> None:
    names = _names(wheel)
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == set(INSTALLED)
    packages = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    # every subpackage (fsm/cli/ once it exists, simulator subpackages) is shipped, none is added
    assert packages == {
        p.rsplit("/", 1)[0] for top in INSTALLED for p in _sources(source, top, "__init__.py")
    }
    for top in INSTALLED:
        missing = _sources(source, top, "*.py") - set(names)
        assert not missing, f"not in the wheel (a folder without __init__.py?): {sorted(missing)}"


def test_no_repository_tool_or_test_helper_in_the_wheel(wheel: Path) -> None:
    for name in _names(wheel):
        parts = Path(name).with_suffix("").parts
        assert not set(parts) & set(NOT_FOR_USERS), f"{name} does not belong in the wheel"
        assert "__pycache__" not in parts and not name.endswith(".pyc")


def test_metadata_has_the_spdx_license_and_the_ibgw_command(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        info = {Path(n).name: n for n in z.namelist() if ".dist-info/" in n}
        metadata = z.read(info["METADATA"]).decode()
        entry_points = z.read(info["entry_points.txt"]).decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    assert not any(line.startswith("License: ") for line in metadata.splitlines())  # the old table form
    assert "ibgw = fsm.cli:main" in entry_points


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Path:
    """`pip install` of the wheel (not editable) into its own folder, with its `ibgw` script."""
    target = wheel.parent.parent / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def _run(installed: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run in `cwd` with only the installed copy importable (not this checkout's editable one)."""
    env = {"PYTHONPATH": str(installed), "PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_installed_copy_imports_itself_and_no_bench(installed: Path, tmp_path: Path) -> None:
    got = _run(
        installed,
        tmp_path,
        sys.executable,
        "-c",
        "import fsm, worker, gatewaysim, fsm.diagram as d; "
        "print(fsm.__file__, worker.__file__, gatewaysim.__file__, d.__file__)",
    )
    assert got.returncode == 0, got.stderr
    assert all(p.startswith(f"{installed}/") for p in got.stdout.split()), got.stdout
    assert _run(installed, tmp_path, sys.executable, "-c", "import bench").returncode == 1


def test_installed_ibgw_diagram_check_works_on_the_checkout_around_it(
    installed: Path, source: Path, tmp_path: Path
) -> None:
    """The issue's report: installed with `pip install .`, `ibgw diagram --check` run in a
    checkout looked under site-packages and called fresh diagrams stale."""
    ibgw = str(installed / "bin" / "ibgw")
    repo = tmp_path / "checkout"
    shutil.copytree(source, repo, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    made = _run(installed, repo / "fsm", ibgw, "diagram")  # from a subfolder of the checkout
    assert made.returncode == 0 and str(installed) not in made.stdout, made.stdout + made.stderr
    fresh = _run(installed, repo, ibgw, "diagram", "--check")
    assert fresh.returncode == 0 and "up to date" in fresh.stdout, fresh.stdout + fresh.stderr
    mmd = repo / "diagrams" / "connection.mmd"
    mmd.write_text(mmd.read_text() + "%% hand edit\n")
    stale = _run(installed, repo, ibgw, "diagram", "--check")
    assert stale.returncode == 1 and f"{mmd}" in stale.stdout, stale.stdout + stale.stderr
    wrote = _run(installed, repo, ibgw, "diagram")
    assert wrote.returncode == 0 and f"{mmd}" in wrote.stdout, wrote.stdout + wrote.stderr
    assert _run(installed, repo, ibgw, "diagram", "--check").returncode == 0
    assert not list(installed.rglob("*.mmd")) and not (installed / "diagrams").exists()


def test_installed_ibgw_diagram_refuses_outside_a_checkout_in_one_line(
    installed: Path, source: Path, tmp_path: Path
) -> None:
    ibgw = str(installed / "bin" / "ibgw")
    for argv in (("diagram", "--check"), ("diagram",)):
        got = _run(installed, tmp_path, ibgw, *argv)
        assert got.returncode == 2, got.stdout + got.stderr
        lines = (got.stdout + got.stderr).strip().splitlines()
        assert len(lines) == 1 and "not in an ibgw-fsm checkout" in lines[0], lines
    assert list(tmp_path.iterdir()) == [] and not list(installed.rglob("*.mmd"))
    # a checkout of other code (here: a changed transition table) is refused too, not judged stale
    other = tmp_path / "other"
    shutil.copytree(source, other, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    core = other / "fsm" / "core.py"
    core.write_text(core.read_text() + "# changed\n")
    got = _run(installed, other, ibgw, "diagram", "--check")
    assert got.returncode == 2 and "is other code" in got.stdout + got.stderr, got.stdout + got.stderr
