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
from prunepriv.report import guides

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


def test_guides_numbers_come_from_the_committed_files(request):
    """Every generated span of README.md and REPRODUCE.md (stage times of the committed reference,
    its claim count, the number of tests) equals what the committed files give: `make guides`."""
    root = Path(__file__).resolve().parents[1]
    config = request.config
    full_suite = (config.args_source == pytest.Config.ArgsSource.TESTPATHS and not config.option.keyword
                  and not config.option.markexpr)
    tests = len(request.session.items) if full_suite else None
    stale = [line for line in guides.stale(root, tests or 0) if tests is not None or "test-count" not in line]
    assert not stale, "stale numbers in the guides (run `make guides`):\n" + "\n".join(stale)
    text = (root / "README.md").read_text() + (root / "REPRODUCE.md").read_text()
    assert {"paper-times", "paper-claims", "test-count"} <= {m.group("name") for m in guides.SPAN.finditer(text)}


def test_a_stale_guide_number_is_caught():
    root = Path(__file__).resolve().parents[1]
    text = "claims: <!-- gen:paper-claims -->3<!-- /gen:paper-claims -->"
    assert guides.render(text, root, 0) == f"claims: <!-- gen:paper-claims -->{guides.claims_total(root)}<!-- /gen:paper-claims -->"
    assert guides.minutes(2692) == "44 min 52 s"
    with pytest.raises(KeyError, match="unknown generated span"):
        guides.render("<!-- gen:nope -->x<!-- /gen:nope -->", root, 0)
