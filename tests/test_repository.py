"""Repository hygiene: clean notebooks, agreeing environments, CI calls the README's test command."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from prunepriv.pipeline.notebooks import problems
from prunepriv.pipeline.registry import REGISTRY
from prunepriv.pipeline.reproduce import NOTEBOOKS_DIR

STAGES = REGISTRY.notebooks

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(STAGES.values()))
def test_notebooks_are_committed_clean(name):
    assert problems(NOTEBOOKS_DIR / name) == []


def test_every_notebook_is_a_stage():
    assert sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb")) == sorted(STAGES.values())


def _name(requirement: str) -> str:
    return re.split(r"[=<>\[ ]", requirement.strip())[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pinned = {p for p in pip if not p.startswith("-e")}
    assert pinned == wanted


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make reproduce" in readme
    assert "make test" in (ROOT / ".ci/run").read_text()
