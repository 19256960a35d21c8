"""After ``pip install .`` (not editable) the package finds its profiles and its commands run."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_ships_profiles_and_runs_outside_the_checkout(tmp_path, tiny_model_dir):
    wheels, target, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "prunepriv"):          # built from a copy: the checkout stays clean
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                             if (REPO / name).is_dir() else {}))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
                   check=True, cwd=tmp_path, capture_output=True)
    (wheel,) = wheels.glob("prunepriv-*.whl")
    subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True)
    assert sorted(p.name for p in (target / "prunepriv" / "profiles").glob("*.yaml")) == ["full.yaml", "paper.yaml",
                                                                                      "smoke.yaml"]
    env = {**os.environ, "PYTHONPATH": str(target)}

    def run(*argv):
        return subprocess.run([sys.executable, "-c", "import sys, prunepriv, prunepriv.cli as c; "
                               "assert prunepriv.__file__.startswith(sys.argv[1]), prunepriv.__file__; "
                               "sys.exit(c.main(sys.argv[2:]))", str(target), *argv],
                              cwd=tmp_path, env=env, capture_output=True, text=True)

    helped = run("audit", "--help")
    assert helped.returncode == 0 and "--adapter" in helped.stdout
    pruned = run("prune", "--profile", "smoke", "--model", str(tiny_model_dir), "--layers", "1",
                 "--output", str(tmp_path / "pruned"))
    assert pruned.returncode == 0, pruned.stderr
    assert (tmp_path / "pruned" / "model.safetensors").is_file()
