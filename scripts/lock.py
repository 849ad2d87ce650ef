"""Compile the lock files from pyproject.toml's ranges, check them, or stage an upgrade.

    python scripts/lock.py              # re-resolve only what pyproject.toml changed
    python scripts/lock.py --upgrade    # the newest versions the ranges allow
    python scripts/lock.py --check      # fail if the lock files no longer match pyproject.toml
    python scripts/lock.py --upgrade --out-dir DIR   # write the upgraded files into DIR

`requirements-dev.txt` locks everything `make test` installs (runtime, `dev` and `otel`
extras); `requirements.txt` locks what `make run` and the Docker image install, constrained
to the same versions. Both carry the build backend too, so the project itself installs with
`--no-build-isolation` and nothing unlocked is fetched. Every line carries its hashes, and the
resolution is universal (every platform, Python 3.11 and newer).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ("requirements-dev.txt", "requirements.txt")


def uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if found is None:
        sys.exit(
            "uv is not installed: `make lock` installs it into .venv from requirements-dev.txt"
        )
    return found


def compile_locks(out_dir: Path, *, upgrade: bool, seed_dir: Path) -> None:
    """Write both lock files into out_dir, keeping seed_dir's versions unless upgrading."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    build_requires = pyproject["build-system"]["requires"]
    with tempfile.TemporaryDirectory() as tmp:
        build_in = Path(tmp) / "build-system.in"
        build_in.write_text("\n".join(build_requires) + "\n")
        common = [
            uv(), "pip", "compile", "--quiet", "--universal", "--python-version", "3.11",
            "--generate-hashes", "--no-header", "--no-annotate",
        ]  # fmt: skip
        if upgrade:
            common.append("--upgrade")
        for name in LOCKS:
            if (seed_dir / name).exists() and seed_dir != out_dir:
                shutil.copy(seed_dir / name, out_dir / name)
        dev = out_dir / "requirements-dev.txt"
        run([*common, "pyproject.toml", str(build_in), "--extra", "dev", "-o", str(dev)])
        # The runtime lock takes the dev lock's versions, so `make run` serves what was tested.
        run([*common, "pyproject.toml", str(build_in), "-c", str(dev), "-o",
             str(out_dir / "requirements.txt")])  # fmt: skip
    for name in LOCKS:
        path = out_dir / name
        path.write_text(HEADER + path.read_text())


HEADER = (
    "# Locked by scripts/lock.py from pyproject.toml's ranges (`make lock`, `make upgrade`);\n"
    "# do not edit by hand. Installed with `pip install --require-hashes`.\n"
)


def run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"lock: {' '.join(cmd[:3])} failed with exit code {result.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrade", action="store_true", help="take the newest allowed versions")
    parser.add_argument("--check", action="store_true", help="fail if the locks are out of date")
    parser.add_argument("--out-dir", type=Path, default=ROOT, help="where to write the locks")
    args = parser.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            compile_locks(Path(tmp), upgrade=False, seed_dir=ROOT)
            stale = [n for n in LOCKS if not filecmp.cmp(Path(tmp) / n, ROOT / n, shallow=False)]
        if stale:
            sys.exit(f"lock: {', '.join(stale)} no longer match pyproject.toml: run `make lock`")
        print("lock: requirements.txt and requirements-dev.txt match pyproject.toml")
        return
    args.out_dir.mkdir(parents=True, exist_ok=True)
    compile_locks(args.out_dir, upgrade=args.upgrade, seed_dir=ROOT)


if __name__ == "__main__":
    main()
