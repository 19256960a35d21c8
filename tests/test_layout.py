"""The house rules of the package, checked on its source: every notebook reads only what
its stage declares, small functions, imports that point one way, errors in one place."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from prunepriv import errors
from prunepriv.pipeline.registry import REGISTRY
from prunepriv.pipeline.reproduce import NOTEBOOKS_DIR, PACKAGE_DIR, notebook_code

ROOT = PACKAGE_DIR.parent
MODULES = sorted(p for p in PACKAGE_DIR.rglob("*.py"))
ARTIFACT_FILES = {a.path for a in REGISTRY.artifacts}


def _dotted(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _calls(source: str, method: str) -> list[str]:
    """First string arguments of ``run.<method>(...)`` calls."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == method
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "run"):
            first = node.args[0] if node.args else None
            found.append(first.value if isinstance(first, ast.Constant) else None)
    return found


@pytest.mark.parametrize("stage", REGISTRY.stages, ids=lambda s: s.key)
def test_notebook_reads_only_what_its_stage_declares(stage):
    code = "\n".join(notebook_code(NOTEBOOKS_DIR / stage.notebook))
    own = {a.id for a in REGISTRY.writes(stage.key)}
    loaded = _calls(code, "load") + _calls(code, "path")
    assert None not in loaded, "artifacts are loaded by a literal id"
    assert set(loaded) <= own | set(stage.reads), f"undeclared reads: {set(loaded) - own - set(stage.reads)}"
    if "run.inputs()" not in code:                   # stage 07 loads all of its declared inputs at once
        assert set(stage.reads) <= set(loaded), f"declared but never read: {set(stage.reads) - set(loaded)}"
    # no side doors: no result folders or artifact file names spelled out in a notebook
    assert "results_dir" not in code and "figures_dir" not in code and "load_stage" not in code
    literals = {n.value for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not literals & ARTIFACT_FILES, f"file names spelled out: {literals & ARTIFACT_FILES}"
    saved = _calls(code, "save_table") + _calls(code, "save_json") + _calls(code, "save_figure")
    assert set(saved) <= own, f"saves artifacts of another stage: {set(saved) - own}"


def test_every_artifact_a_notebook_writes_is_saved_by_it():
    for stage in REGISTRY.stages:
        code = "\n".join(notebook_code(NOTEBOOKS_DIR / stage.notebook))
        saved = set(_calls(code, "save_table") + _calls(code, "save_json") + _calls(code, "save_figure")
                    + _calls(code, "path"))
        expected = {a.id for a in REGISTRY.writes(stage.key) if a.kind != "tex"}
        assert expected <= saved, f"stage {stage.key} never writes {expected - saved}"


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_over_60_lines():
    long = [f"{p.relative_to(ROOT)}:{f.name} ({f.end_lineno - f.lineno + 1})" for p in MODULES
            for f in _functions(ast.parse(p.read_text())) if f.end_lineno - f.lineno + 1 > 60]
    assert long == []


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(imported prunepriv module or name, at module top level)`` for each import in ``path``."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    for node in tree.body:                    # ``if TYPE_CHECKING:`` imports are top-level imports too
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            top |= set(map(id, node.body))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prunepriv"):
            assert node.level == 0, f"{path}: relative import"
            out += [(f"{node.module}.{a.name}", id(node) in top) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names if a.name.startswith("prunepriv")]
    return out


def _module_graph() -> dict[str, set[str]]:
    names = {_dotted(p) for p in MODULES}
    graph = {}
    for path in MODULES:
        deps = set()
        for name, _ in _imports(path):
            while name and name not in names:
                name = name.rpartition(".")[0]
            if name and name != _dotted(path):
                deps.add(name)
        graph[_dotted(path)] = deps
    return graph


def test_package_imports_have_no_cycle():
    graph = _module_graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == 1:
            pytest.fail("import cycle: " + " -> ".join(trail[trail.index(node):] + [node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for dep in sorted(graph[node]):
            if dep != "prunepriv":                    # the package root only re-exports
                visit(dep, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        visit(node, [])


DEFERRED = {"cli.py"}   # the entry point loads a subcommand's module in its handler: a refused command or
                        # --version answers before torch loads (issue 30: under a second)


def test_imports_are_at_module_top_level_and_never_private():
    inner, private = [], []
    for path in MODULES:
        for name, at_top in _imports(path):
            if not at_top and path.relative_to(PACKAGE_DIR).as_posix() not in DEFERRED:
                inner.append(f"{path.relative_to(ROOT)}: {name}")
            if name.rpartition(".")[2].startswith("_"):
                private.append(f"{path.relative_to(ROOT)}: {name}")
    assert private == []
    assert inner == []


def test_user_errors_live_in_errors_py():
    defined = [f"{p.relative_to(ROOT)}:{n.name}" for p in MODULES if p.name != "errors.py"
               for n in ast.walk(ast.parse(p.read_text()))
               if isinstance(n, ast.ClassDef) and any(getattr(b, "id", "").endswith("Error") for b in n.bases)]
    assert defined == []
    assert {"PrivacyConfigError", "DistributedConfigError", "AuditError", "StageError"} <= errors.user_error_names()


def test_documented_layout_matches_the_package():
    layout = (ROOT / "docs/layout.md").read_text()
    block = layout.split("<!-- layout -->")[1]
    listed = set(re.findall(r"^\s*(?:├──|└──)\s*([\w]+)/", block, flags=re.M))
    actual = {p.name for p in PACKAGE_DIR.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert listed == actual
    modules = set(re.findall(r"\b(\w+)\.py\b", block.split("notebooks/")[0]))
    assert modules == {p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__"}
    notebooks = set(re.findall(r"(\d\d_\w+)\.ipynb", block))
    assert notebooks == {s.stem for s in REGISTRY.stages}
    assert not list(ROOT.glob("*.whl")), "no wheels committed at the repository root"


def test_import_prunepriv_is_light_and_every_public_name_loads():
    """``import prunepriv`` (each notebook process of the batch) loads no torch; the names load on use."""
    import subprocess
    import sys

    import prunepriv

    code = ("import sys, prunepriv\n"
            "assert not {'torch', 'transformers', 'prunepriv.results'} & set(sys.modules), sorted(sys.modules)\n"
            "from prunepriv import Run\n"
            "assert 'prunepriv.results' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"Run", "stage", "perplexity", "remove_layers", "load_profile"} <= set(prunepriv.__all__)
    for name in prunepriv.__all__:
        assert getattr(prunepriv, name).__name__ == name
    assert set(prunepriv.__all__) <= set(dir(prunepriv))
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        prunepriv.nothing_here  # noqa: B018
