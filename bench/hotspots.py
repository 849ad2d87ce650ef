"""Top hot spots of a py-spy profile in collapsed-stack form (``py-spy record --format raw``).

    python bench/hotspots.py /tmp/prof/L0-sustained500.txt [--top 25]

Prints, as a percentage of all samples: the functions where the samples were taken (self),
the functions on the stack (inclusive), and the share per top-level package (by where the
sample was taken: chatrelay, anthropic, httpx2/httpcore, uvicorn/starlette/fastapi, asyncio,
sqlalchemy/aiosqlite, ...). Samples of idle threads (py-spy's --idle is off by default) are
not in the file; samples of `threading.Thread`s (aiosqlite's workers) are left out unless
--all-threads: py-spy counts them as busy while they sleep in SQLite's busy handler or wait on
fsync (the server's per-thread CPU in the benchmark's JSON shows they use little CPU).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def split_frame(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), ""
    return m["func"], m["file"]


def package_of(path: str) -> str:
    if "site-packages/" in path:
        rest = path.split("site-packages/", 1)[1]
        return rest.split("/", 1)[0].removesuffix(".py")
    if path and not path.startswith(("/", "<")):  # py-spy's short form: "uvicorn/main.py"
        return path.split("/", 1)[0].removesuffix(".py")
    if "/src/chatrelay/" in path:
        return "chatrelay"
    if "/lib/python" in path:
        parts = path.split("/lib/python", 1)[1].split("/")
        return "stdlib:" + (parts[1].removesuffix(".py") if len(parts) > 1 else "?")
    return path or "?"


def short(func: str, path: str) -> str:
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif "/src/" in path:
        path = path.split("/src/", 1)[1]
    elif "/lib/python" in path:
        path = path.split("/lib/python", 1)[1].split("/", 1)[-1]
    return f"{func} ({path})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("profile", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument(
        "--all-threads",
        action="store_true",
        help="count threading.Thread samples too (aiosqlite's workers: py-spy counts them while"
        " they wait in SQLite's busy handler or fsync, which is not CPU)",
    )
    p.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME=FUNC[,FUNC]",
        help="inclusive share of samples with any of these functions on the stack",
    )
    args = p.parse_args()

    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    pkg_c: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    total = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if not args.all_threads and "_bootstrap (threading.py" in frames[0]:
            continue
        total += n
        names = {split_frame(f)[0] for f in frames}
        for spec in args.group:
            label, _, funcs = spec.partition("=")
            if names & set(funcs.split(",")):
                groups[label] += n
        func, path = split_frame(frames[-1])
        self_c[short(func, path)] += n
        pkg_c[package_of(path)] += n
        for name in {short(*split_frame(f)) for f in frames}:
            incl_c[name] += n
    if not total:
        raise SystemExit("no samples")
    print(f"{total} samples\n\nself (where the sample was taken):")
    for name, n in self_c.most_common(args.top):
        print(f"  {n / total * 100:5.1f} %  {name}")
    print("\nby package (self):")
    for name, n in pkg_c.most_common(15):
        print(f"  {n / total * 100:5.1f} %  {name}")
    if args.group:
        print("\ngroups (inclusive):")
        for spec in args.group:
            label = spec.partition("=")[0]
            print(f"  {groups[label] / total * 100:5.1f} %  {label}")
    print("\ninclusive (on the stack):")
    for name, n in incl_c.most_common(args.top + 15):
        print(f"  {n / total * 100:5.1f} %  {name}")


if __name__ == "__main__":
    main()
