"""Numbers in README.md and REPRODUCE.md that come from committed files, rendered so they cannot drift.

A guide marks a generated span as ``<!-- gen:NAME -->…<!-- /gen:NAME -->``; :func:`render`
fills every span from the committed reference run (``results/paper``: the executed
notebooks' papermill durations, ``claims.csv``) and from the test suite's size.
``make guides`` rewrites the guides; ``tests/test_repository.py`` fails when a
committed guide differs from what :func:`render` gives (a stale number).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

from prunepriv.pipeline.registry import REGISTRY
from prunepriv.results import atomic_write_text

GUIDES = ("README.md", "REPRODUCE.md", *(f"docs/{name}" for name in ("profiles.md", "precision-and-benchmarks.md")))
TIMINGS = "results/timings.csv"     # one row per reference-class run: machine, precision, stage seconds, wall time
TEST_TIMINGS = "results/test_timings.csv"   # one row per machine class: the wall time of `make test` from a clean checkout
SPAN = re.compile(r"(<!-- gen:(?P<name>[a-z0-9-]+) -->)(?P<body>.*?)(<!-- /gen:(?P=name) -->)", re.S)


def stage_seconds(root: Path, profile: str = "paper") -> dict[str, float]:
    """``{stage key: seconds}``: papermill's execution time of each committed executed notebook."""
    out = {}
    for stage in REGISTRY.stages:
        path = root / "results" / profile / "notebooks" / stage.notebook
        out[stage.key] = float(json.loads(path.read_text())["metadata"]["papermill"]["duration"])
    return out


def minutes(seconds: float) -> str:
    """``2692`` → ``44 min 52 s``."""
    whole = int(round(seconds))
    return f"{whole // 60} min {whole % 60} s"


def times_row(root: Path, profile: str = "paper") -> str:
    """The stage cells and total of a profile's committed run: ``| 19 s | … | 5 s | 44 min 52 s``."""
    seconds = stage_seconds(root, profile)
    return " | ".join(f"{round(s)} s" for s in seconds.values()) + f" | {minutes(sum(seconds.values()))}"


def claims_total(root: Path, profile: str = "paper") -> int:
    """Claims in the committed run's ``claims.csv`` (one per line after the header)."""
    lines = (root / "results" / profile / "claims.csv").read_text().splitlines()
    return len([line for line in lines[1:] if line.strip()])


def count_tests(root: Path) -> int:
    """Test items the suite collects (``pytest --collect-only``)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:warnings"],
                          cwd=root, capture_output=True, text=True, check=False)
    match = re.search(r"(\d+) tests? collected", proc.stdout)
    if not match:
        raise RuntimeError(f"could not count the tests: {proc.stdout[-500:]}{proc.stderr[-500:]}")
    return int(match.group(1))


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file of recorded times (empty when none is recorded)."""
    import csv

    return list(csv.DictReader(path.read_text().splitlines())) if path.is_file() else []


def write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    """Write ``rows`` (the last one's keys as the header) atomically as CSV."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[-1]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def timings(root: Path) -> list[dict[str, str]]:
    """The rows of :data:`TIMINGS` (empty when none is recorded)."""
    return read_rows(root / TIMINGS)


def timings_table(root: Path, profile: str = "paper") -> str:
    """A Markdown table, one row per recorded run of ``profile``: machine class, precision, each stage's
    notebook time, the batch's wall time (and whether from a fresh clone), the commit."""
    keys = [s.key for s in REGISTRY.stages]
    lines = ["| machine | precision | " + " | ".join(keys) + " | wall time of `make reproduce` | commit |",
             "| --- | --- | " + " | ".join("---" for _ in keys) + " | --- | --- |"]
    for row in timings(root):
        if row["profile"] != profile:
            continue
        wall = minutes(float(row["wall_seconds"])) + (" (fresh clone)" if row["fresh_clone"] == "yes" else "")
        lines.append(f"| {row['machine']} | {row['precision']} | "
                     + " | ".join(f"{round(float(row[f's{k}']))} s" for k in keys) + f" | {wall} | {row['commit'][:7]} |")
    return "\n".join(lines)


def record(root: Path, machine: str, wall_seconds: float, fresh_clone: bool, profile: str = "paper") -> dict:
    """Append the committed run of ``profile`` to :data:`TIMINGS`: its stage times (papermill's, from the
    executed notebooks), precision and commit (from its manifest), the batch's wall time."""
    manifest = json.loads((root / "results" / profile / "manifest.json").read_text())
    prov = next(iter(manifest["artifacts"].values()))["provenance"]
    row = {"profile": profile, "machine": machine, "precision": prov.get("precision", "?"),
           "cpu_flags": " ".join(prov.get("cpu_flags") or []), "threads": str(prov.get("torch_threads", "?")),
           "commit": str(prov.get("git_revision", "?")), "date": str(prov.get("created", "?"))[:10],
           "fresh_clone": "yes" if fresh_clone else "no", "wall_seconds": f"{wall_seconds:.0f}",
           **{f"s{k}": f"{v:.1f}" for k, v in stage_seconds(root, profile).items()}}
    write_rows(root / TIMINGS, [r for r in timings(root)
                                if not (r["machine"] == machine and r["profile"] == profile)] + [row])
    return row


def test_time(root: Path) -> str:
    """One sentence per recorded ``make test`` (:data:`TEST_TIMINGS`): its wall time, where and at which commit."""
    rows = read_rows(root / TEST_TIMINGS)
    if not rows:
        return "not yet recorded"
    return "; ".join(f"{minutes(float(r['make_test_seconds']))} from a clean checkout ({r['tests']} tests"
                     + (f", pytest {minutes(float(r['pytest_seconds']))}" if r["pytest_seconds"] else "")
                     + f") on {_article(r['machine'])}, commit {r['commit'][:7]}, {r['date']}" for r in rows)


def _article(machine: str) -> str:
    """``a 2-core CPU``; a name that starts with "CI" or "the" is used as it is."""
    return machine if machine.split(" ")[0] in ("CI", "CI's", "the") else f"a {machine}"


def record_tests(root: Path, machine: str, make_test_seconds: float, pytest_seconds: float | None, tests: int,
                 commit: str, date: str) -> dict:
    """Add (or replace, for its machine class) one measured ``make test`` to :data:`TEST_TIMINGS`
    (``pytest_seconds`` None where the run did not print it, as CI's report does not)."""
    row = {"machine": machine, "date": date, "commit": commit, "tests": str(tests),
           "pytest_seconds": "" if pytest_seconds is None else f"{pytest_seconds:.0f}",
           "make_test_seconds": f"{make_test_seconds:.0f}"}
    path = root / TEST_TIMINGS
    write_rows(path, [r for r in read_rows(path) if r["machine"] != machine] + [row])
    return row


def values(root: Path, tests: int) -> dict[str, Callable[[], str]]:
    """What each span name holds."""
    return {
        "paper-times": lambda: times_row(root),
        "paper-total": lambda: minutes(sum(stage_seconds(root).values())),
        "paper-timings": lambda: timings_table(root),
        "paper-claims": lambda: str(claims_total(root)),
        "test-count": lambda: str(tests),
        "test-time": lambda: test_time(root),
    }


def render(text: str, root: Path, tests: int) -> str:
    """``text`` with every generated span filled in (an unknown span name is an error)."""
    known = values(root, tests)

    def fill(match: re.Match) -> str:
        name = match.group("name")
        if name not in known:
            raise KeyError(f"unknown generated span {name!r}; known: {', '.join(known)}")
        return f"{match.group(1)}{known[name]()}{match.group(4)}"

    return SPAN.sub(fill, text)


def stale(root: Path, tests: int) -> list[str]:
    """``FILE: span`` for every generated span whose committed text differs from what :func:`render` gives."""
    out = []
    for name in GUIDES:
        text = (root / name).read_text()
        fresh = dict((m.group("name"), m.group("body")) for m in SPAN.finditer(render(text, root, tests)))
        out += [f"{name}: {m.group('name')} says {m.group('body')!r}, the files say {fresh[m.group('name')]!r}"
                for m in SPAN.finditer(text) if fresh[m.group("name")] != m.group("body")]
    return out


def main() -> int:
    """``make guides``: rewrite every generated span of the guides in place. ``python -m
    prunepriv.report.guides record MACHINE WALL_SECONDS [--fresh-clone]`` first adds the committed paper run's
    times to :data:`TIMINGS`; ``… record-tests MACHINE MAKE_TEST_SECONDS PYTEST_SECONDS|- TESTS COMMIT DATE`` a
    measured ``make test`` (``.ci/run`` prints its wall time) to :data:`TEST_TIMINGS`."""
    root = Path(__file__).resolve().parents[2]
    if sys.argv[1:2] == ["record"]:
        machine, wall = sys.argv[2], float(sys.argv[3])
        print(record(root, machine, wall, "--fresh-clone" in sys.argv[4:]))
    if sys.argv[1:2] == ["record-tests"]:
        machine, make_test, pytest_seconds, n, commit, date = sys.argv[2:8]
        print(record_tests(root, machine, float(make_test), None if pytest_seconds == "-" else float(pytest_seconds),
                           int(n), commit, date))
    tests = count_tests(root)
    for name in GUIDES:
        path = root / name
        atomic_write_text(path, render(path.read_text(), root, tests))
    print(f"guides rendered ({tests} tests, {claims_total(root)} claims, paper {minutes(sum(stage_seconds(root).values()))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
