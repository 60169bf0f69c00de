"""`pip install .` installs what users import and run (fsm, worker, gatewaysim), nothing else.

The wheel is built once, offline (`--no-build-isolation`, setuptools from the test extras), from a
clean copy of the source tree: a stale `build/` left in a checkout would leak into a wheel built
in place, and the build must not write into the checkout other helpers and tests are using.
"""

from __future__ import annotations

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
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("packaging")
    src, out = base / "src", base / "dist"
    shutil.copytree(REPO, src, ignore=SKIP)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (built,) = out.glob("ibgw_fsm-*.whl")
    return built


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


def _source_packages() -> set[str]:
    """Every package (a folder with __init__.py) under the installed top-level packages."""
    return {
        str(init.parent.relative_to(REPO))
        for top in INSTALLED
        for init in (REPO / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }


def test_wheel_holds_exactly_the_user_packages(wheel: Path) -> None:
    names = _names(wheel)
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == set(INSTALLED)
    packages = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    # every subpackage (fsm/cli/ once it exists, simulator subpackages) is shipped, none is added
    assert packages == _source_packages()
    for top in INSTALLED:
        for path in (REPO / top).rglob("*.py"):
            if "__pycache__" not in path.parts:
                assert str(path.relative_to(REPO)) in names, f"{path} is missing from the wheel"


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
