"""The cached papermill batch: skip unchanged stages, rerun changed ones, keep good outputs on failure."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from prunepriv.config import Profile
from prunepriv.errors import StageError
from prunepriv.pipeline import reproduce as rp
from prunepriv.pipeline.registry import REGISTRY, Artifact, Registry, Stage
from prunepriv.results import load_manifest

WRITER = """\
import prunepriv
profile = prunepriv.load_profile(profile)
run = prunepriv.Run(profile, "01_writer", output_root)
run.save_json("data:numbers", {"seed": profile.seed, "value": VALUE}, "numbers.json")
"""
READER = """\
import json
import prunepriv
profile = prunepriv.load_profile(profile)
run = prunepriv.Run(profile, "02_reader", output_root)
numbers = json.loads((run.results_dir / "numbers.json").read_text())
assert numbers["value"] >= 0, "negative value"
run.save_json("data:double", {"double": 2 * numbers["value"]}, "double.json")
"""


def _notebook(path, code: str) -> None:
    params = nbformat.v4.new_code_cell('profile = "smoke"\noutput_root = "."')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# toy"), params,
                                         nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """Two toy stages (01 writes, 02 reads) on a copy of the smoke profile; no model involved."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks / "01_writer.ipynb", WRITER.replace("VALUE", "1"))
    _notebook(notebooks / "02_reader.ipynb", READER)
    profile = tmp_path / "toy.yaml"
    profile.write_text("name: toy\nseed: 3\n")
    monkeypatch.setattr(rp, "NOTEBOOKS_DIR", notebooks)
    registry = Registry(
        stages=(Stage("01", "01_writer.ipynb", ("seed",)), Stage("02", "02_reader.ipynb", ("memorization",),
                                                                  ("data:numbers",))),
        artifacts=(Artifact("data:numbers", "numbers.json", "01", "json"),
                   Artifact("data:double", "double.json", "02", "json")))
    monkeypatch.setattr(rp, "preflight", lambda profile: None)
    root = tmp_path / "out"
    lines: list[str] = []

    def run(**kwargs):
        lines.clear()
        results = rp.reproduce(str(profile), output_root=root, progress=False, log=lines.append,
                               registry=registry, **kwargs)
        return {r.stage: r.skipped for r in results}

    return run, root, notebooks, profile, lines


def test_second_run_skips_and_edits_rerun_only_what_changed(toy):
    run, root, notebooks, profile, lines = toy
    assert run() == {"01": False, "02": False}
    double = root / "results/toy/double.json"
    assert json.loads(double.read_text()) == {"double": 2}
    assert (root / "results/toy/notebooks/01_writer.html").stat().st_size > 1000

    assert run() == {"01": True, "02": True}
    assert all("skipped" in line for line in lines)

    assert run(force=True) == {"01": False, "02": False}
    assert run(stages=["2"]) == {"02": False}              # a named stage runs even if unchanged

    profile.write_text("name: toy\nseed: 4\n")            # stage 01 reads the seed; its output changes
    assert run() == {"01": False, "02": False}
    assert "profile changed" in lines[0] and "upstream output changed: numbers.json" in lines[1]

    profile.write_text("name: toy\nseed: 4\nmemorization: {n_samples: 9}\n")   # only 02 reads it
    assert run() == {"01": True, "02": False}


def test_same_upstream_output_does_not_rerun_downstream(toy):
    run, root, notebooks, profile, lines = toy
    run()
    _notebook(notebooks / "01_writer.ipynb", WRITER.replace("VALUE", "1") + "\n# a comment\n")
    assert run() == {"01": False, "02": True}              # 01's cells changed, its output did not


def test_missing_or_edited_output_reruns_its_stage(toy):
    run, root, notebooks, profile, lines = toy
    run()
    (root / "results/toy/double.json").write_text("{}")
    assert run() == {"01": True, "02": False}
    assert "modified" in lines[1]
    (root / "results/toy/notebooks/01_writer.ipynb").unlink()
    assert run()["01"] is False


def test_failing_stage_keeps_previous_outputs_and_names_the_cell(toy):
    run, root, notebooks, profile, lines = toy
    run()
    before = (root / "results/toy/double.json").read_text()
    manifest_before = load_manifest(root / "results/toy/manifest.json")
    _notebook(notebooks / "01_writer.ipynb", WRITER.replace("VALUE", "-1"))
    # 01 now writes -1 (staged, committed: it succeeds); 02 asserts and fails before writing
    with pytest.raises(StageError, match=r"02_reader.ipynb failed in cell 2 \[import json\]: AssertionError: negative value"):
        run()
    assert (root / "results/toy/double.json").read_text() == before
    manifest = load_manifest(root / "results/toy/manifest.json")
    assert manifest["artifacts"]["data:double"] == manifest_before["artifacts"]["data:double"]
    assert not list((root / "results/toy").glob(".tmp-stage-*"))
    _notebook(notebooks / "01_writer.ipynb", WRITER.replace("VALUE", "1"))
    assert run() == {"01": False, "02": True}              # back to the input its kept outputs came from


def test_code_dependencies_follow_the_package_imports():
    deps = rp.code_dependencies(["from prunepriv.stages import memorization, plots"])
    assert {"stages/memorization.py", "stages/plots.py", "attacks/probes.py", "attacks/audit.py", "results.py",
            "__init__.py", "stages/__init__.py"} <= set(deps)
    assert "cli.py" not in deps and "pipeline/reproduce.py" not in deps
    lazy = rp.code_dependencies(["import prunepriv\nprunepriv.stage(profile)"])  # the root's names load lazily
    assert {"stages/preamble.py", "results.py", "lm/evaluation.py", "compress/pruning.py"} <= set(lazy)
    relative = rp.code_dependencies(["import prunepriv.privacy.train"])     # followed through relative names too
    assert {"privacy/train.py", "privacy/__init__.py", "errors.py"} <= set(relative)
    assert rp.code_dependencies(["import json"]) == []


def test_real_stages_declare_sections_that_profiles_have():
    sections = set(Profile().to_dict())
    assert all(set(stage.sections) <= sections for stage in REGISTRY.stages)


def test_second_run_of_a_profile_is_refused_while_the_first_holds_the_lock(toy, tmp_path):
    from prunepriv.errors import LockedError
    from prunepriv.pipeline.commit import profile_lock

    run, root, notebooks, profile, lines = toy
    with profile_lock(root / "results/toy", "toy"):
        with pytest.raises(LockedError, match=r"profile toy is already being run by pid \d+ on .* since"):
            run()
    assert run() == {"01": False, "02": False}          # released when the holder ends


def test_an_interrupted_commit_is_finished_and_leftovers_removed_at_the_next_start(toy):
    from prunepriv.pipeline.commit import JOURNAL
    from prunepriv.results import atomic_write_json

    run, root, notebooks, profile, lines = toy
    run()
    results = root / "results/toy"
    # a run killed after writing its journal and making one of two moves
    staged = results / ".tmp-stage-01_writer-x"
    (staged / "a").mkdir(parents=True)
    (staged / "a" / "numbers.json").write_text('{"seed": 3, "value": 7}')
    (staged / "a" / "other.json").write_text("{}")
    os_moves = [[str(staged / "a" / "numbers.json"), str(results / "numbers.json")],
                [str(staged / "a" / "other.json"), str(results / "other.json")]]
    (staged / "a" / "other.json").replace(results / "other.json")
    atomic_write_json(results / JOURNAL, {"moves": os_moves})
    (results / ".tmp-stage-02_reader-y").mkdir()                 # a staging folder left by kill -9
    run(stages=["2"])
    assert lines[0].startswith("finished the commit")
    assert json.loads((results / "numbers.json").read_text())["value"] == 7
    assert not (results / JOURNAL).exists()
    assert not list(results.glob(".tmp-stage-*"))


CTRL_C_SCRIPT = """
import functools, sys
from pathlib import Path
import prunepriv.cli as cli
from prunepriv.pipeline import reproduce as rp
from prunepriv.pipeline.registry import Artifact, Registry, Stage
rp.NOTEBOOKS_DIR = Path(sys.argv[1])
rp.preflight = lambda profile: None
registry = Registry(stages=(Stage("01", "01_writer.ipynb", ("seed",)),),
                    artifacts=(Artifact("data:numbers", "numbers.json", "01", "json"),))
rp.reproduce = functools.partial(rp.reproduce, registry=registry, progress=False)
sys.exit(cli.main(["reproduce", "--profile", sys.argv[2], "--output-root", sys.argv[3]]))
"""


def _kernels_of(pid: int) -> set[int]:
    """The notebook kernels that process ``pid`` started, through any chain of children (not the kernels
    of other tests running beside it)."""
    import subprocess

    out = subprocess.run(["pgrep", "-f", "ipykernel_launcher"], capture_output=True, text=True).stdout
    return {int(k) for k in out.split() if pid in _ancestors(int(k))}


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        try:                                         # /proc/PID/stat: "pid (comm) state ppid ..."
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        chain.append(pid)
    return chain


def test_ctrl_c_stops_a_stage_within_seconds_and_commits_nothing(toy, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    run, root, notebooks, profile, lines = toy
    run()
    before = (root / "results/toy/numbers.json").read_text()
    _notebook(notebooks / "01_writer.ipynb", WRITER.replace("VALUE", "5") + "\nimport time\ntime.sleep(120)\n")
    # as from a terminal: SIGINT at its default disposition (a shell's background job, e.g. `make test &`,
    # starts with SIGINT ignored, and Python then leaves it ignored)
    child = subprocess.Popen([sys.executable, "-c", CTRL_C_SCRIPT, str(notebooks), str(profile), str(root)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(2)
    deadline = time.time() + 60                                  # wait until the notebook writes its output
    while time.time() < deadline and not list((root / "results/toy").glob(".tmp-stage-*/tree/results/toy/*.json")):
        time.sleep(0.5)
    assert list((root / "results/toy").glob(".tmp-stage-*/tree/results/toy/numbers.json")), "stage never started"
    kernels = _kernels_of(child.pid)
    assert kernels, "no kernel running the stage"
    start = time.time()
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=30)
    assert time.time() - start < 15
    assert child.returncode == 130, err
    assert err.strip().splitlines() == [
        "prunepriv: interrupted; finished outputs are kept, the interrupted step left nothing behind"]
    assert (root / "results/toy/numbers.json").read_text() == before
    assert not list((root / "results/toy").glob(".tmp-*"))
    deadline = time.time() + 10
    alive = kernels
    while alive and time.time() < deadline:                    # the kernel follows its parent out
        time.sleep(0.5)
        alive = {pid for pid in kernels if Path(f"/proc/{pid}").exists()}
    assert not alive


def test_kill_9_leaves_no_process_running_and_the_next_run_cleans_up(toy, tmp_path):
    """A ``kill -9`` of the batch (no handler runs): its notebook process and kernel end on their own within
    seconds, the previous outputs stay, and the next run removes the staging folder and commits."""
    import signal
    import subprocess
    import sys
    import time

    run, root, notebooks, profile, lines = toy
    run()
    before = (root / "results/toy/numbers.json").read_text()
    _notebook(notebooks / "01_writer.ipynb", WRITER.replace("VALUE", "5") + "\nimport time\ntime.sleep(120)\n")
    batch = subprocess.Popen([sys.executable, "-c", CTRL_C_SCRIPT, str(notebooks), str(profile), str(root)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list((root / "results/toy").glob(".tmp-stage-*/tree/results/toy/*.json")):
        time.sleep(0.5)
    kernels = _kernels_of(batch.pid)
    assert kernels, "no kernel running the stage"
    out = subprocess.run(["pgrep", "-f", "prunepriv.pipeline.execute"], capture_output=True, text=True).stdout
    runners = {int(p) for p in out.split() if batch.pid in _ancestors(int(p))}
    assert runners, "no notebook process"
    batch.send_signal(signal.SIGKILL)
    batch.wait(timeout=30)
    deadline = time.time() + 15
    alive = kernels | runners
    while alive and time.time() < deadline:
        time.sleep(0.5)
        alive = {pid for pid in alive if Path(f"/proc/{pid}").exists()
                 and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"}
    assert not alive, "a notebook process outlived the killed batch"
    assert (root / "results/toy/numbers.json").read_text() == before
    assert list((root / "results/toy").glob(".tmp-stage-*")), "the kill left no staging folder to clean"
    _notebook(notebooks / "01_writer.ipynb", WRITER.replace("VALUE", "5"))
    assert run(stages=["1"]) == {"01": False}
    assert json.loads((root / "results/toy/numbers.json").read_text())["value"] == 5
    assert not list((root / "results/toy").glob(".tmp-*"))


def _running(pid: int) -> bool:
    """Whether ``pid`` is alive and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_stop_ends_the_child_and_what_it_started():
    """`stop` ends the notebook process and its own children (its kernel), orphaned or not."""
    import subprocess
    import time

    from prunepriv.pipeline.execute import descendants, stop

    child = subprocess.Popen(["bash", "-c", "sleep 60 & wait"], start_new_session=True)
    deadline = time.time() + 10
    while not descendants(child.pid) and time.time() < deadline:
        time.sleep(0.1)
    family = descendants(child.pid)
    assert family, "the child started nothing"
    stop(child)
    deadline = time.time() + 10
    while any(map(_running, family)) and time.time() < deadline:
        time.sleep(0.1)
    assert child.poll() is not None and not any(map(_running, family))
