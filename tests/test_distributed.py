"""DP-SGD across processes: ``torchrun -m prunepriv.cli finetune`` with 2 CPU
processes (gloo) keeps the accounting (σ, q, steps, ε) and the logical
batches of a one-process run, ends with the same LoRA weights on every rank,
resumes from rank 0's checkpoint, and refuses a non-private distributed run
with a clear error. About 20-40 s on 2 CPU cores."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from prunepriv.cli import main

# Runs on every rank under torchrun. It executes prunepriv.cli as ``-m`` would
# (runpy), with a spy around prunepriv.privacy.train.finetune (also where the
# CLI's finetune command holds it) that, while the process group is up,
# (1) checks that the library refuses a non-private distributed run, (2) stops
# the run after 5 steps and resumes it, (3) saves this rank's trained LoRA
# weights and (4) reloads the finished run.
WORKER = r"""
import dataclasses, json, math, os, runpy, sys
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM
import prunepriv.commands.finetune as command
import prunepriv.privacy.train as ft
from prunepriv.errors import DistributedConfigError
from prunepriv.lm.models import cast_weights

args, spy_dir = json.loads(sys.argv[1]), sys.argv[2]


def fresh_model(like):
    # the same precision as the CLI's model (its --precision, auto by default): part of the run's digest
    loaded = AutoModelForCausalLM.from_pretrained(args[args.index("--model") + 1])
    return cast_weights(loaded, next(like.parameters()).dtype)


def cli(*extra):
    sys.argv = ["prunepriv.cli", "finetune", *args, *extra]
    try:
        runpy.run_module("prunepriv.cli", run_name="__main__", alter_sys=True)   # sys.exit(main())
    except SystemExit as exc:
        return exc.code


assert cli("--epsilon", "inf") == 2                  # the CLI refuses before joining a process group
original = ft.finetune


def lora_of(model):
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if "lora_" in n}


def spy(model, tokenizer, texts, output_dir, lora, privacy, train, **kw):
    rank = dist.get_rank()
    try:
        non_private = dataclasses.replace(privacy, epsilon=math.inf, noise_multiplier=None)
        original(model, tokenizer, texts, output_dir, lora, non_private, train, **kw)
        refused = None
    except DistributedConfigError as exc:
        refused = str(exc)
    # stopped after 5 steps (rank 0 writes the checkpoint), then resumed by every rank from it
    part = original(fresh_model(model), tokenizer, texts, output_dir, lora, privacy, train, stop_after=5, **kw)
    checkpoint_step = torch.load(os.path.join(output_dir, "checkpoint.pt"), weights_only=False)["step"]
    result = original(model, tokenizer, texts, output_dir, lora, privacy, train, **kw)
    # the finished run is reloaded, not retrained, on every rank (rank 0 reads the adapter and sends it)
    again = original(fresh_model(model), tokenizer, texts, output_dir, lora, privacy, train, **kw)
    # under secure noise every rank must still draw the same (now secret) Poisson batches
    sampler_states, make_sampler = [], ft.sampler_generator

    def recorded_sampler(*a):
        gen = make_sampler(*a)
        sampler_states.append(gen.get_state())
        return gen

    ft.sampler_generator = recorded_sampler
    original(fresh_model(model), tokenizer, texts, str(output_dir) + "-secure", lora, privacy,
             dataclasses.replace(train, noise="secure"), stop_after=2, **kw)
    ft.sampler_generator = make_sampler
    trained, reloaded = lora_of(result.model), lora_of(again.model)
    torch.save({"refused": refused, "world_size": result.world_size, "log": result.log,
                "backend": dist.get_backend(), "lora": trained,
                "part_steps": len(part.log), "checkpoint_step": checkpoint_step,
                "resumed_from": result.resumed_from_step, "secure_sampler": sampler_states[0],
                "reloaded_same": (again.seconds == result.seconds and again.world_size == 2
                                  and reloaded.keys() == trained.keys()
                                  and all(torch.equal(reloaded[n], trained[n]) for n in trained))},
               os.path.join(spy_dir, f"rank{rank}.pt"))
    return result


ft.finetune = spy
command.finetune = spy                               # the CLI's finetune command bound the function at import
sys.exit(cli("--epsilon", "3"))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run under torchrun with 2 processes and the same run in this process."""
    from conftest import make_byte_tokenizer, tiny_model

    tmp = tmp_path_factory.mktemp("distributed")
    model_dir = tmp / "tiny-llama"
    tiny_model("llama", layers=2).save_pretrained(model_dir)
    make_byte_tokenizer().save_pretrained(model_dir)
    data = tmp / "notes.txt"
    data.write_text("\n\n".join(f"note {i}: the patient{' is' * (i % 5)} well, MRN-{1000 + i}" for i in range(40)))
    # q = 3/40: small logical batches, so some give rank 1 an empty share (checked below)
    common = ["--model", str(model_dir), "--data", str(data), "--batch-size", "3", "--physical-batch-size", "2",
              "--max-length", "24", "--lr", "0.01", "--checkpoint-every", "5", "--device", "cpu",
              "--epochs", "1", "--target-modules", "q_proj,v_proj", "--noise", "seeded"]
    (tmp / "spy").mkdir()
    (tmp / "worker.py").write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(tmp / "worker.py"),
           json.dumps(common + ["--output", str(tmp / "dist")]), str(tmp / "spy")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert main(["finetune", *common, "--output", str(tmp / "single"), "--epsilon", "3"]) == 0
    ranks = [torch.load(tmp / "spy" / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    return {"tmp": tmp, "model_dir": model_dir, "proc": proc, "ranks": ranks,
            "dist": tmp / "dist", "single": tmp / "single"}


def _json(path):
    return json.loads(path.read_text())


def test_accounting_is_that_of_one_process(runs):
    dist, single = _json(runs["dist"] / "privacy.json"), _json(runs["single"] / "privacy.json")
    assert dist["private"] and dist["steps"] == single["steps"] == 14          # ceil(1 / (3/40))
    for key in ("noise_multiplier", "sample_rate", "steps", "delta", "epsilon_rdp", "epsilon_prv", "n_train"):
        assert dist[key] == single[key], key
    assert dist == single
    assert _json(runs["dist"] / "run.json")["world_size"] == 2
    assert _json(runs["single"] / "run.json")["world_size"] == 1


def test_same_logical_batches_and_an_empty_share(runs):
    """The ranks' shares make up exactly the one-process Poisson batches, including ones
    too small to give rank 1 anything (that rank still takes its step and all-reduce)."""
    dist, single = _json(runs["dist"] / "run.json")["log"], _json(runs["single"] / "run.json")["log"]
    assert [r["batch_size"] for r in dist] == [r["batch_size"] for r in single]
    assert any(r["batch_size"] <= 1 for r in dist)              # rank 1 got no record in that step
    assert [r["loss"] for r in dist] == pytest.approx([r["loss"] for r in single], rel=1e-4, nan_ok=True)
    assert [r["epsilon"] for r in dist] == [r["epsilon"] for r in single]
    assert json.dumps(runs["ranks"][0]["log"]) == json.dumps(runs["ranks"][1]["log"])   # NaN-safe


def test_ranks_end_with_the_same_weights_that_moved(runs):
    rank0, rank1 = (r["lora"] for r in runs["ranks"])
    assert rank0.keys() == rank1.keys() and rank0
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert all(rank0[n].abs().sum() > 0 for n in rank0 if "lora_B" in n)      # lora_B starts at zero
    assert {r["world_size"] for r in runs["ranks"]} == {2} and runs["ranks"][0]["backend"] == "gloo"
    # same batches and the same noise (rank 0, same seed): the one-process weights up to rounding
    single = load_file(runs["single"] / "adapter" / "adapter_model.safetensors")
    saved = load_file(runs["dist"] / "adapter" / "adapter_model.safetensors")
    assert saved.keys() == single.keys()
    for name in saved:
        assert torch.allclose(saved[name], single[name], atol=1e-6, rtol=1e-5), name


def test_stopped_run_resumes_on_every_rank_from_rank0_checkpoint(runs):
    """The worker stops after 5 steps and starts again: every rank resumes at step 5 from the
    checkpoint rank 0 wrote, and the run still ends as the uninterrupted one-process run (above)."""
    for rank in runs["ranks"]:
        assert rank["part_steps"] == rank["checkpoint_step"] == rank["resumed_from"] == 5
    assert _json(runs["dist"] / "run.json")["resumed_from_step"] == 5


def test_finished_run_is_reloaded_on_every_rank(runs):
    assert all(rank["reloaded_same"] for rank in runs["ranks"])


def test_rank0_adapter_loads_and_holds_the_trained_weights(runs):
    from prunepriv.lm.lora import load_adapter

    loaded = load_adapter(AutoModelForCausalLM.from_pretrained(runs["model_dir"]), runs["dist"] / "adapter")
    weights = {n: p.detach() for n, p in loaded.named_parameters() if "lora_" in n}
    rank0 = runs["ranks"][0]["lora"]
    assert weights.keys() == rank0.keys()
    for name in weights:
        assert torch.equal(weights[name], rank0[name]), name
    assert not (runs["dist"] / "checkpoint.pt").exists()
    assert runs["proc"].stdout.count("in 2 processes") == 1                     # only rank 0 reports


def test_non_private_distributed_run_is_refused(runs):
    for rank in runs["ranks"]:
        assert rank["refused"] and "is for DP-SGD only" in rank["refused"]
    assert runs["proc"].stderr.count("prunepriv: error: distributed fine-tuning (world size 2) is for DP-SGD only") == 2


def test_secure_noise_shares_rank0_secret_batches(runs):
    """Under secure noise the sampler's seed is secret, yet every rank draws rank 0's batches."""
    rank0, rank1 = (r["secure_sampler"] for r in runs["ranks"])
    assert torch.equal(rank0, rank1)
    assert not torch.equal(rank0, torch.Generator().manual_seed(0).get_state())
