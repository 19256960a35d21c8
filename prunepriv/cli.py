"""The ``prunepriv`` command line.

Bad input (profile, data, model, layer choice) prints one line on stderr,
``prunepriv: error: ...``, and exits with status 2; nothing is left half-written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prunepriv.compress.latency import dp_overhead, latency_ratio
from prunepriv.compress.pruning import (
    check_count,
    check_layers,
    choose_layers,
    remove_layers,
)
from prunepriv.config import check_strategy, load_profile
from prunepriv.data import (
    SPLITS,
    Corpus,
    corpus_for,
    load_records,
    synthetic_corpus,
    user_corpus,
)
from prunepriv.errors import DataError, ModelError, PrunePrivError
from prunepriv.lm.generation import sample_records
from prunepriv.lm.models import (
    check_tokenizer,
    load_model,
    load_tokenizer,
    model_num_layers,
    resolve_model_path,
)
from prunepriv.pipeline.reproduce import reproduce
from prunepriv.privacy.train import (
    LoRASpec,
    PrivacySpec,
    TrainSpec,
    check_adapter_dir,
    check_distributed,
    check_lora_targets,
    check_privacy,
    finetune,
    load_adapter,
    merge_and_save,
    meta_model,
)
from prunepriv.report.verify import freeze_reference, report, save_report, verify
from prunepriv.results import atomic_write_json, provenance
from prunepriv.stages.experiments import greedy_order_for, measure_similarity
from prunepriv.stages.memorization import (
    References,
    attack_run,
    load_samples,
    report_rows,
    sampling_spec,
)


def _layers_arg(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers must be integers separated by commas, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunepriv", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser("reproduce", help="execute the numbered notebooks of a profile with papermill")
    rep.add_argument("--profile", default="paper", help="profile name (profiles/NAME.yaml) or a YAML path")
    rep.add_argument("--stages", nargs="+", help="only these stages, e.g. 01 02 (run even if unchanged)")
    rep.add_argument("--force", action="store_true", help="rerun stages whose inputs have not changed")
    rep.add_argument("--output-root", default=".", help="folder that receives results/ and figures/")

    ver = sub.add_parser("verify", help="compare a run's claims with the committed reference run")
    ver.add_argument("--profile", default="paper", help="profile name or YAML path (its results/NAME/)")
    ver.add_argument("--output-root", default=".", help="folder holding results/")
    ver.add_argument("--reference", help="reference folder (default results/NAME/reference/)")
    ver.add_argument("--update-reference", action="store_true",
                     help="freeze the current results as the reference instead of verifying")

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    lat = bench_sub.add_parser("latency", help="prefill/decode time of a pruned vs the unpruned model")
    lat.add_argument("--remove", type=int, required=True, help="number of layers to remove")
    lat.add_argument("--model", default="embedded")
    lat.add_argument("--strategy", default="cosine", help="cosine, block, last or random")
    lat.add_argument("--prompt-length", type=int, default=128)
    lat.add_argument("--new-tokens", type=int, default=32)
    lat.add_argument("--repeats", type=int, default=7)
    lat.add_argument("--warmup", type=int, default=2)
    lat.add_argument("--device", default="auto")
    lat.add_argument("--seed", type=int, default=0)
    lat.add_argument("--json", action="store_true", help="print one JSON object")

    dp = bench_sub.add_parser("dp-overhead", help="time and memory of a DP-SGD LoRA step vs a non-private one")
    dp.add_argument("--model", default="embedded")
    dp.add_argument("--batch-size", type=int, default=8)
    dp.add_argument("--max-length", type=int, default=128)
    dp.add_argument("--repeats", type=int, default=5)
    dp.add_argument("--warmup", type=int, default=1)
    dp.add_argument("--device", default="auto")
    dp.add_argument("--seed", type=int, default=0)
    dp.add_argument("--json", action="store_true", help="print one JSON object")

    ft = sub.add_parser("finetune", help="LoRA fine-tuning under DP-SGD (or not, with --epsilon inf)")
    ft.add_argument("--model", default="embedded", help="'embedded', a (pruned) model folder or a hub id")
    ft.add_argument("--data", required=True, help="training text: 'synthetic' or a .jsonl/.csv/.txt file")
    ft.add_argument("--text-field", default="text")
    ft.add_argument("--output", required=True, help="folder for adapter/, privacy.json, train_log.csv")
    ft.add_argument("--epsilon", type=float, default=8.0, help="target ε; inf for a non-private run")
    ft.add_argument("--delta", type=float, default=None, help="default 1/(10 N)")
    ft.add_argument("--noise-multiplier", type=float, default=None, help="fix σ instead of targeting ε")
    ft.add_argument("--max-grad-norm", type=float, default=1.0)
    ft.add_argument("--epochs", type=float, default=1.0)
    ft.add_argument("--lr", type=float, default=2e-3)
    ft.add_argument("--batch-size", type=int, default=32, help="expected logical (Poisson) batch size")
    ft.add_argument("--physical-batch-size", type=int, default=8)
    ft.add_argument("--max-length", type=int, default=128)
    ft.add_argument("--lora-rank", type=int, default=8)
    ft.add_argument("--lora-alpha", type=int, default=16)
    ft.add_argument("--target-modules", default="q_proj,v_proj")
    ft.add_argument("--checkpoint-every", type=int, default=10)
    ft.add_argument("--merge", action="store_true", help="also save a merged model under OUTPUT/merged")
    ft.add_argument("--device", default="auto")
    ft.add_argument("--seed", type=int, default=0)

    audit = sub.add_parser("audit", help="memorization audit of a fine-tuned adapter, each figure beside its control")
    audit.add_argument("--adapter", required=True, help="LoRA adapter folder (adapter_config.json + weights)")
    audit.add_argument("--model", default="embedded", help="the adapter's base: 'embedded', a folder or a hub id")
    audit.add_argument("--layers", type=_layers_arg, default=None,
                       help="layers removed from --model before the adapter was trained, e.g. 20,21,22")
    audit.add_argument("--tokenizer", default=None, help="tokenizer folder, if not the model's")
    audit.add_argument("--profile", default="paper",
                       help="profile whose corpus (synthetic data) and memorization settings are used")
    audit.add_argument("--train", help="records the adapter was trained on (.jsonl/.csv/.txt); needs --heldout")
    audit.add_argument("--heldout", help="records of the same kind it never saw: the control")
    audit.add_argument("--text-field", default="text")
    audit.add_argument("--samples", help="JSONL of generated text to audit (default: sample from the model)")
    audit.add_argument("--output", help="folder for report.json (default: next to the adapter)")
    audit.add_argument("--device", default="auto")

    prune = sub.add_parser("prune", help="remove layers from a model and save it with save_pretrained")
    prune.add_argument("--model", default="embedded", help="'embedded', a local folder or a hub id")
    prune.add_argument("--output", required=True, help="folder for the pruned model")
    group = prune.add_mutually_exclusive_group(required=True)
    group.add_argument("--remove", type=int, help="number of layers to remove, chosen by --strategy")
    group.add_argument("--layers", type=_layers_arg, help="explicit layer indices, e.g. 20,21,22")
    prune.add_argument("--strategy", default="cosine", help="cosine, block, last, random or greedy-loss")
    prune.add_argument("--data", default="synthetic", help="calibration text: 'synthetic' or a .jsonl/.csv/.txt file")
    prune.add_argument("--text-field", default="text")
    prune.add_argument("--samples", type=int, default=32, help="calibration texts")
    prune.add_argument("--max-length", type=int, default=128)
    prune.add_argument("--device", default="auto")
    prune.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "reproduce":
            return _reproduce(args)
        if args.command == "verify":
            return _verify(args)
        if args.command == "bench":
            return _bench_latency(args) if args.bench == "latency" else _bench_dp(args)
        if args.command == "finetune":
            return _finetune(args)
        if args.command == "prune":
            return _prune(args)
        if args.command == "audit":
            return _audit(args)
    except PrunePrivError as exc:
        return _fail(exc, getattr(exc, "user_error", True))
    except FileNotFoundError as exc:
        return _fail(exc, True)
    return 2


def _fail(exc: BaseException, user_error: bool) -> int:
    print(f"prunepriv: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
    return 2 if user_error else 1


def _reproduce(args) -> int:

    results = reproduce(args.profile, args.stages, args.output_root, force=args.force,
                        log=lambda line: print(line, flush=True))
    ran = [r for r in results if not r.skipped]
    for result in ran:
        print(f"{result.stage}: {result.notebook} ({result.seconds:.0f} s)")
    print(f"{len(ran)} stage(s) run, {len(results) - len(ran)} unchanged and skipped; "
          f"{sum(r.seconds for r in ran):.0f} s in notebooks")
    return 0


def _verify(args) -> int:

    results_dir = Path(args.output_root) / "results" / load_profile(args.profile).name
    if args.update_reference:
        print(f"reference frozen in {freeze_reference(results_dir)}")
        return 0
    result = verify(results_dir, args.reference)
    print(report(result))
    print(f"claims table written to {save_report(result, results_dir)}")
    return 0 if result.passed else 1


def _bench_latency(args) -> int:

    if args.strategy in ("greedy-loss",):
        raise PrunePrivError("bench latency supports cosine, block, last and random")
    check_strategy(args.strategy)
    num_layers = model_num_layers(args.model)
    check_count(args.remove, num_layers)
    model, tokenizer = load_model(args.model, device=args.device)
    similarity = None
    if args.strategy in ("cosine", "block") and args.remove:
        similarity = _calibration_similarity(model, tokenizer, "synthetic", "text", 16, 128, args.seed)
    layers = choose_layers(args.strategy, args.remove, num_layers, similarity, args.seed)
    result = latency_ratio(model, layers, prompt_length=args.prompt_length, new_tokens=args.new_tokens,
                           repeats=args.repeats, warmup=args.warmup, seed=args.seed)
    result["strategy"] = args.strategy
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['layers']} layers, removed {result['removed']} ({args.strategy}): "
              f"prefill ratio {result['prefill_ratio']:.3f}, decode ratio {result['decode_ratio']:.3f}, "
              f"ideal {result['ideal_ratio']:.3f}")
    return 0


def _bench_dp(args) -> int:

    model, tokenizer = load_model(args.model, device=args.device)
    texts = synthetic_corpus(seed=args.seed).texts("train", include_canaries=False)
    result = dp_overhead(model, tokenizer, texts, args.batch_size, args.max_length, args.repeats, args.warmup,
                         args.seed)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"DP-SGD {result['dp_sgd_s_per_example']:.3f} s/example, non-private "
              f"{result['non_private_s_per_example']:.3f} s/example, ratio {result['ratio']:.2f}")
    return 0


def _finetune(args) -> int:
    import math
    import os

    from transformers import AutoConfig


    output = Path(args.output)
    if args.data == "synthetic":
        texts = synthetic_corpus(seed=args.seed).texts("train")
    else:
        texts = [r.text for r in load_records(args.data, args.text_field)]
    epsilon = math.inf if args.noise_multiplier is None and math.isinf(args.epsilon) else args.epsilon
    privacy = PrivacySpec(epsilon=epsilon, delta=args.delta, max_grad_norm=args.max_grad_norm,
                          noise_multiplier=args.noise_multiplier)
    train = TrainSpec(args.epochs, args.lr, args.batch_size, args.physical_batch_size, args.max_length,
                      args.checkpoint_every, args.seed)
    if len(texts) < train.batch_size:
        raise PrunePrivError(f"training set has {len(texts)} records, fewer than one batch ({train.batch_size})")
    check_privacy(privacy, len(texts))                      # bad input fails before the weights load
    lora = LoRASpec(args.lora_rank, args.lora_alpha, 0.0, [t for t in args.target_modules.split(",") if t])
    world = int(os.environ.get("WORLD_SIZE", "1"))           # set by torchrun
    check_distributed(privacy, world)                       # DP-SGD only across processes

    def load(device: str):
        model_num_layers(args.model)
        check_lora_targets(meta_model(AutoConfig.from_pretrained(resolve_model_path(args.model))),
                           lora.target_modules)
        return load_model(args.model, device=device)

    if world <= 1:
        return _finetune_run(args, output, texts, lora, privacy, train, lambda: load(args.device), rank=0)
    import torch.distributed as dist

    device, created = _join_process_group(args.device)
    try:
        return _finetune_run(args, output, texts, lora, privacy, train, lambda: _rank0_first(lambda: load(device)),
                             rank=dist.get_rank())
    finally:
        if created:
            dist.destroy_process_group()


def _finetune_run(args, output: Path, texts, lora, privacy, train, load, rank: int) -> int:

    model, tokenizer = load()
    result = finetune(model, tokenizer, texts, output, lora, privacy, train, progress=rank == 0)
    if rank != 0:                                            # rank 0 saves and reports
        return 0
    if args.merge:
        merge_and_save(result.model, tokenizer, output / "merged")
    r = result.privacy
    eps = f"ε = {r.epsilon_rdp:.3f} (RDP), {r.epsilon_prv:.3f} (PRV) at δ = {r.delta:.2g}" if r.private else "non-private"
    procs = f" in {result.world_size} processes" if result.world_size > 1 else ""
    print(f"{r.steps} steps on {r.n_train} records{procs}, σ = {r.noise_multiplier:.4g}, q = {r.sample_rate:.4g}: "
          f"{eps}; adapter in {result.adapter_dir}")
    return 0


def _join_process_group(device_arg: str) -> tuple[str, bool]:
    """Join the ``torchrun`` process group (env://): NCCL on ``cuda:LOCAL_RANK``, else gloo on the CPU.

    Returns this rank's device and whether the group was created here (an
    already initialised group is used as it is and left for its owner to end).
    """
    import os

    import torch
    import torch.distributed as dist


    if device_arg not in ("auto", "cpu", "cuda"):
        raise PrunePrivError(f"under torchrun --device must be auto, cuda or cpu (each process takes cuda:LOCAL_RANK), "
                             f"got {device_arg!r}")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was asked for but no CUDA GPU is available")
    if device_arg != "cpu" and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise PrunePrivError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                                 "start at most one process per GPU")
        torch.cuda.set_device(local_rank)
        device, backend = f"cuda:{local_rank}", "nccl"
    else:
        device, backend = "cpu", "gloo"
    if dist.is_initialized():
        return device, False
    dist.init_process_group(backend=backend)
    return device, True


def _rank0_first(fn):
    """``fn()`` on rank 0, then on the other ranks: a model cache or download is filled once.

    A failure on rank 0 is raised on every rank (the others do not wait forever).
    """
    import torch.distributed as dist

    rank, result, failure = dist.get_rank(), None, None
    if rank == 0:
        try:
            result = fn()
        except Exception as exc:                              # noqa: BLE001 - re-raised below on every rank
            failure = exc
    box = [None if failure is None else (isinstance(failure, (PrunePrivError, FileNotFoundError)), str(failure))]
    dist.broadcast_object_list(box, src=0)
    if failure is not None:
        raise failure
    if box[0] is not None:
        user_error, message = box[0]
        raise (PrunePrivError if user_error else RuntimeError)(message)
    return fn() if rank != 0 else result


def _calibration_texts(data: str, text_field: str, seed: int) -> list[str]:
    """Calibration records of the synthetic corpus or of a user's file."""

    if data == "synthetic":
        corpus = synthetic_corpus(seed=seed)
    else:
        corpus = user_corpus(load_records(data, text_field), seed=seed, n_canaries=0, n_heldout_canaries=0)
    return corpus.texts("calibration", include_canaries=False)


def _calibration_similarity(model, tokenizer, data: str, text_field: str, samples: int, max_length: int, seed: int):

    texts = _calibration_texts(data, text_field, seed)[:samples]
    return measure_similarity(model, tokenizer, texts, max_length, batch_size=8)


def _prune(args) -> int:

    output = Path(args.output)
    if output.exists() and any(output.iterdir()):
        raise PrunePrivError(f"output folder {output} exists and is not empty")
    num_layers = model_num_layers(args.model)
    if args.layers is not None:
        layers = check_layers(args.layers, num_layers)
        model, tokenizer = load_model(args.model, device=args.device)
    else:
        check_strategy(args.strategy)
        check_count(args.remove, num_layers)
        if args.data != "synthetic":
            load_records(args.data, args.text_field)        # fail on bad data before loading the model
        model, tokenizer = load_model(args.model, device=args.device)
        similarity = greedy = None
        if args.strategy in ("cosine", "block"):
            similarity = _calibration_similarity(model, tokenizer, args.data, args.text_field,
                                                 args.samples, args.max_length, args.seed)
        if args.strategy == "greedy-loss":
            texts = _calibration_texts(args.data, args.text_field, args.seed)[: args.samples]
            greedy, _ = greedy_order_for(model, tokenizer, texts, args.remove, args.max_length, 8)
        layers = choose_layers(args.strategy, args.remove, num_layers, similarity, args.seed, greedy)
    remove_layers(model, layers)
    _save_atomically(model, tokenizer, output)
    print(f"removed layers {layers}; {num_layers - len(layers)} of {num_layers} remain; saved to {output}")
    return 0


def _save_atomically(model, tokenizer, output: Path) -> None:
    import os
    import shutil
    import tempfile

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{output.name}-", dir=output.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if output.exists():
            output.rmdir()
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)



def _audit_corpus(args, profile):
    """The synthetic corpus of the profile, or the user's train and held-out files."""

    if bool(args.train) != bool(args.heldout):
        raise PrunePrivError("--train and --heldout go together: the held-out records are the control")
    if not args.train:
        return corpus_for(profile)
    splits = {s: [] for s in SPLITS}
    splits["train"] = load_records(args.train, args.text_field)
    splits["heldout"] = load_records(args.heldout, args.text_field)
    return Corpus(splits, [], source="user")


def _audit_row(adapter: Path, corpus):
    """What the audit needs to know about the run: its privacy record, if it left one."""
    import math
    from types import SimpleNamespace

    privacy_file = adapter.parent / "privacy.json"
    record = json.loads(privacy_file.read_text()) if privacy_file.is_file() else {}
    n = len(corpus.texts("train"))
    return SimpleNamespace(
        model="model", run_dir=str(adapter.parent), target_epsilon=record.get("target_epsilon", math.nan),
        epsilon_rdp=record.get("epsilon_rdp", math.inf), epsilon_prv=record.get("epsilon_prv", math.inf),
        delta=record.get("delta", 1 / (10 * max(n, 1))), noise_multiplier=record.get("noise_multiplier", 0.0),
        sample_rate=record.get("sample_rate", 0.0), steps=record.get("steps", 0))


def _audit(args) -> int:
    import copy

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()                       # stderr carries only the error line
    adapter = Path(args.adapter)
    check_adapter_dir(adapter)
    profile = load_profile(args.profile)
    cfg = profile.memorization
    corpus = _audit_corpus(args, profile)
    if not corpus.texts("train") or not corpus.texts("heldout"):
        raise DataError("the audit needs training and held-out records; one of them is empty")
    samples = load_samples(args.samples) if args.samples else None
    model_num_layers(args.model)
    base, tokenizer = load_model(args.model, device=args.device)
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    check_tokenizer(base, tokenizer)
    if args.layers:
        remove_layers(base, args.layers)
    tuned = load_adapter(copy.deepcopy(base), adapter).eval()
    if samples is None:
        samples = sample_records(tuned, tokenizer, sampling_spec(cfg), profile.seed)
    if not any(s.strip() for s in samples):
        raise DataError("the model generated no text to audit (every sample is empty)")
    row = _audit_row(adapter, corpus)
    refs = References({"model": base.eval()}, tokenizer, cfg.max_length, cfg.batch_size)
    result = attack_run(tuned, row, corpus, tokenizer, refs, samples, cfg, profile.seed)
    result["provenance"] = provenance(profile)
    output = Path(args.output) if args.output else adapter.parent / "audit"
    atomic_write_json(output / "report.json", result)
    print(f"{'measurement':44s} {'trained':>10s} {'control':>10s}  control is")
    for name, value, control, what in report_rows(result):
        print(f"{name:44s} {value:10.4g} {control if control is not None else float('nan'):10.4g}  {what}")
    print(f"report: {output / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
