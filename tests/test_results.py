"""Atomic writes and the manifest with provenance."""
from __future__ import annotations

import json
import subprocess

import pandas as pd

from prunepriv.config import load_profile
from prunepriv.results import Run, atomic_write_text, provenance, sha256_file


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    path = atomic_write_text(tmp_path / "sub" / "a.txt", "hello")
    assert path.read_text() == "hello"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]
    assert (path.stat().st_mode & 0o044) == 0o044          # readable by others, like any file


def test_run_registers_tables_and_figures(tmp_path):
    import matplotlib.pyplot as plt

    run = Run(load_profile("smoke"), "00_test", tmp_path)
    run.save_table("tab:x", pd.DataFrame({"a": [1, 2]}), "x.csv")
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    run.save_figure("fig:x", fig, "x")
    manifest = json.loads((tmp_path / "results" / "smoke" / "manifest.json").read_text())
    entry = manifest["artifacts"]["tab:x"]
    assert entry["files"][0]["path"] == "results/smoke/x.csv"
    assert entry["files"][0]["sha256"] == sha256_file(tmp_path / "results/smoke/x.csv")
    figure = manifest["artifacts"]["fig:x"]
    assert [f["path"] for f in figure["files"]] == ["figures/smoke/x.png", "figures/smoke/x.pdf"]
    prov = entry["provenance"]
    assert prov["profile"] == "smoke" and prov["seed"] == 0
    assert prov["packages"]["torch"].startswith("2.13")
    assert "git_revision" in prov and prov["profile_sha256"] == load_profile("smoke").digest()


def test_provenance_without_profile():
    info = provenance()
    assert "packages" in info and "profile" not in info


def test_git_revision_ignores_run_outputs_but_not_code(tmp_path):
    """Regenerating the committed results leaves the revision clean; an edited module makes it dirty."""
    import subprocess

    from prunepriv.results import git_revision

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "t.csv").write_text("a\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    (tmp_path / "results" / "t.csv").write_text("b\n")
    assert not git_revision(tmp_path).endswith("+dirty")
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_revision(tmp_path).endswith("+dirty")


def test_notebooks_run_by_hand_write_to_the_ignored_scratch_root(monkeypatch):
    from pathlib import Path

    from prunepriv.results import default_output_root

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root / "notebooks")
    assert default_output_root() == root / "scratch"              # wherever the notebook is opened from
    ignored = subprocess.run(["git", "check-ignore", "-q", "scratch/results/paper/finetune.csv"], cwd=root)
    assert ignored.returncode == 0                                # never a change to the committed reference
