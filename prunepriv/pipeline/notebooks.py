"""Keep committed notebooks clean: outputs stripped, a papermill ``parameters`` cell.

``python -m prunepriv.pipeline.notebooks strip notebooks/*.ipynb`` strips in place;
``check`` lists what is wrong and exits 1.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat


def problems(path: str | Path) -> list[str]:
    """What keeps a notebook from being committed as is."""
    nb = nbformat.read(str(path), as_version=4)
    found = []
    if any(c.get("outputs") or c.get("execution_count") for c in nb.cells if c.cell_type == "code"):
        found.append("has outputs")
    if not any("parameters" in c.metadata.get("tags", []) for c in nb.cells):
        found.append("no 'parameters' cell")
    return found


def strip(path: str | Path) -> None:
    """Remove outputs and execution counts in place."""
    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
    nb.metadata.pop("papermill", None)
    nbformat.write(nb, str(path))


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("strip", "check"):
        print("usage: python -m prunepriv.pipeline.notebooks strip|check NOTEBOOK...", file=sys.stderr)
        return 2
    bad = 0
    for path in argv[1:]:
        if argv[0] == "strip":
            strip(path)
        elif found := problems(path):
            print(f"{path}: {', '.join(found)}")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
