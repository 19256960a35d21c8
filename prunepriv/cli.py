"""The ``prunepriv`` command line.

Bad input (profile, data, model, layer choice) prints one line on stderr,
``prunepriv: error: ...``, and exits with status 2; nothing is left half-written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import PrunePrivError


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
    rep.add_argument("--stages", nargs="+", help="only these stages, e.g. 01 02")
    rep.add_argument("--output-root", default=".", help="folder that receives results/ and figures/")

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
        if args.command == "bench":
            return _bench_latency(args)
        if args.command == "prune":
            return _prune(args)
    except PrunePrivError as exc:
        return _fail(exc, getattr(exc, "user_error", True))
    except FileNotFoundError as exc:
        return _fail(exc, True)
    return 2


def _fail(exc: BaseException, user_error: bool) -> int:
    print(f"prunepriv: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
    return 2 if user_error else 1


def _reproduce(args) -> int:
    from .reproduce import reproduce

    for result in reproduce(args.profile, args.stages, args.output_root):
        print(f"{result.stage}: {result.notebook} ({result.seconds:.0f} s)")
    return 0


def _bench_latency(args) -> int:
    from .bench import latency_ratio
    from .config import check_strategy
    from .models import load_model, model_num_layers
    from .pruning import check_count, choose_layers

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


def _calibration_texts(data: str, text_field: str, seed: int) -> list[str]:
    """Calibration records of the synthetic corpus or of a user's file."""
    from .data import load_records, synthetic_corpus, user_corpus

    if data == "synthetic":
        corpus = synthetic_corpus(seed=seed)
    else:
        corpus = user_corpus(load_records(data, text_field), seed=seed, n_canaries=0, n_heldout_canaries=0)
    return corpus.texts("calibration", include_canaries=False)


def _calibration_similarity(model, tokenizer, data: str, text_field: str, samples: int, max_length: int, seed: int):
    from .experiments import measure_similarity

    texts = _calibration_texts(data, text_field, seed)[:samples]
    return measure_similarity(model, tokenizer, texts, max_length, batch_size=8)


def _prune(args) -> int:
    from .config import check_strategy
    from .data import load_records
    from .experiments import greedy_order_for
    from .models import load_model, model_num_layers
    from .pruning import check_count, check_layers, choose_layers, remove_layers

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


if __name__ == "__main__":
    sys.exit(main())
