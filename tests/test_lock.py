"""The lock files: what `make run`, `make test` and the image install is exactly what was tested."""

from __future__ import annotations

import os
import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
# The locks this run installed from: the repository's, or `make upgrade`'s candidates.
LOCK_DIR = Path(os.environ.get("CHATRELAY_TEST_LOCK_DIR") or ROOT)
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def pins(name: str) -> dict[str, tuple[str, str | None]]:
    """package -> (version, marker), checking that every pin carries hashes."""
    found: dict[str, tuple[str, str | None]] = {}
    lines = (LOCK_DIR / name).read_text().splitlines()
    for number, line in enumerate(lines):
        match = PIN.match(line)
        if match is None:
            continue
        package, version, marker = match.groups()
        assert lines[number + 1].strip().startswith("--hash=sha256:"), f"{name}: {package} unhashed"
        found[canonicalize_name(package)] = (version, marker)
    return found


def test_every_runtime_pin_is_the_tested_version() -> None:
    runtime, dev = pins("requirements.txt"), pins("requirements-dev.txt")
    assert runtime, "requirements.txt pins nothing"
    for package, (version, _marker) in runtime.items():
        assert package in dev, f"{package} is installed by make run but never tested"
        assert dev[package][0] == version, (
            f"{package}: {version} at run time, {dev[package][0]} tested"
        )


def test_every_declared_dependency_is_locked() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    runtime = pins("requirements.txt")
    for line in declared:
        assert canonicalize_name(Requirement(line).name) in runtime, line


def test_this_environment_runs_exactly_the_dev_lock() -> None:
    for package, (version, marker) in pins("requirements-dev.txt").items():
        if marker and not Marker(marker).evaluate():
            continue
        assert metadata.version(package) == version, package
