"""Execute one notebook with papermill in a child process.

The child runs papermill (and papermill its Jupyter kernel); the parent only
waits. Ctrl-C therefore reaches code that prunepriv controls: nbclient, which
installs its own SIGINT handler while it runs a kernel, is never in the
process that the terminal interrupts. On Ctrl-C the parent stops the child
(SIGTERM, then SIGKILL after a grace period); the kernel exits with it
(ipykernel watches its parent, ``JPY_PARENT_PID``). If the parent itself is
killed (``kill -9``, an out-of-memory kill) the child notices that it has been
orphaned within a second and ends the same way, so no notebook runs on unseen
and writes into a staging folder that the next run removes. A failure inside the
notebook comes back as :class:`NotebookFailure` with papermill's error name,
value and cell index, read from a small JSON file the child writes.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from prunepriv.progress import BATCH_ENV

GRACE_SECONDS = 5.0
PARENT_POLL_SECONDS = 1.0
# The kernel's own log (a TCP-transport notice at every start, "parent appears to have exited" on
# Ctrl-C) is not about the notebook; its errors still reach stderr.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]


@dataclass
class NotebookFailure(Exception):
    """A cell raised: papermill's ``ename``, ``evalue`` and ``cell_index`` (-1 if no cell ran)."""

    ename: str
    evalue: str
    cell_index: int = -1


def execute(source: Path, target: Path, parameters: dict, cwd: Path, env: dict[str, str],
            progress: bool) -> None:
    """Execute ``source`` into ``target`` in a child process with the extra environment ``env``."""
    fd, failure_file = tempfile.mkstemp(prefix=".tmp-failure-", suffix=".json", dir=target.parent)
    os.close(fd)
    spec = {"source": str(source), "target": str(target), "parameters": parameters, "cwd": str(cwd),
            "progress": progress, "failure": failure_file, "parent": os.getpid()}
    child = subprocess.Popen([sys.executable, "-m", "prunepriv.pipeline.execute", json.dumps(spec)],
                             env={**os.environ, **env}, start_new_session=True)
    try:
        code = wait(child)
        if code != 0:
            raise _failure(Path(failure_file), code)
    finally:
        Path(failure_file).unlink(missing_ok=True)


def wait(child: subprocess.Popen) -> int:
    """The child's exit status; on Ctrl-C the child is stopped before KeyboardInterrupt goes on."""
    try:
        return child.wait()
    except KeyboardInterrupt:
        stop(child)
        raise


def stop(child: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if the child has not ended within :data:`GRACE_SECONDS`; then SIGTERM to
    what the child started (its kernel), which would otherwise notice its orphaning only by polling and,
    on a busy machine or under a subreaper, run on holding the terminal's pipes."""
    if child.poll() is not None:
        return
    family = descendants(child.pid)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})   # a second Ctrl-C waits for the cleanup
    try:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    finally:
        terminate(family)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def terminate(pids: list[int]) -> None:
    """SIGTERM to each of ``pids`` that still exists."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, their children, …) from ``/proc``; empty where there is none."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _failure(path: Path, code: int) -> NotebookFailure:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        info = {}
    return NotebookFailure(info.get("ename", "ExecutionError"),
                           info.get("evalue", f"the notebook process ended with status {code}"),
                           int(info.get("cell_index", -1)))


def follow_parent(parent: int) -> None:
    """End this process and what it started (SIGTERM, as :func:`stop` would) once ``parent`` is no longer
    its parent.

    An orphan is re-parented to init or a subreaper, so a changed ``getppid()`` means the parent
    ended, however it ended; polled, because ``prctl(PR_SET_PDEATHSIG)`` exists on Linux only.
    """
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    terminate(descendants(os.getpid()))          # the kernel first: papermill, killed, could not stop it
    os.kill(os.getpid(), signal.SIGTERM)


def main(spec_text: str) -> int:
    """The child: run papermill; on failure write ``ename``/``evalue``/``cell_index`` to the failure file."""
    # jsonschema builds an IRI grammar with lark at import (2 s per stage here); nbformat's schema
    # never checks that format, and jsonschema skips the checker when the import fails.
    sys.modules.setdefault("rfc3987_syntax", None)
    import papermill as pm

    # for the kernel only (papermill's own cell bar read the environment when tqdm was imported):
    # no progress bars inside the executed notebook
    os.environ.update({BATCH_ENV: "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"})

    spec = json.loads(spec_text)
    threading.Thread(target=follow_parent, args=(spec["parent"],), daemon=True).start()
    try:
        pm.execute_notebook(spec["source"], spec["target"], parameters=spec["parameters"], cwd=spec["cwd"],
                            kernel_name="python3", progress_bar=spec["progress"], log_output=False,
                            extra_arguments=KERNEL_ARGUMENTS)
    except pm.PapermillExecutionError as exc:
        failure = {"ename": exc.ename, "evalue": str(exc.evalue), "cell_index": exc.cell_index}
    except Exception as exc:                              # noqa: BLE001 - reported to the parent, which raises
        failure = {"ename": type(exc).__name__, "evalue": str(exc)}
    else:
        return 0
    Path(spec["failure"]).write_text(json.dumps(failure))
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
