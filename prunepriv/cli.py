"""The ``prunepriv`` command line: parse, make one library call, print.

Bad input (profile, data, model, layer choice) prints one line on stderr,
``prunepriv: error: ...``, and exits with status 2; nothing is left half-written.
The parser is ``prunepriv.parser``; settings are the fields of the profile
dataclasses (``prunepriv.config``): each subcommand takes ``--profile`` and
``--set key=value`` plus one flag per field of the sections it uses
(``prunepriv.arguments``).
"""
from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

from prunepriv.arguments import profile_from_args
from prunepriv.config import load_profile
from prunepriv.errors import PrunePrivError, UsageError
from prunepriv.parser import build_parser

# The commands (and torch behind them) are imported by the handler that runs them: `prunepriv --version`
# and `--help` answer without loading torch.


def _with_data(args) -> None:
    """The data flags as profile settings (``data.source``, ``data.text_field``), passed as the strings the
    user typed: never re-encoded through another format (JSON then YAML split a character outside the
    Basic Multilingual Plane into two surrogate halves, so an emoji path was "not found")."""
    source = getattr(args, "data", None)
    if source is not None:
        setattr(args, "data.source", source)
    setattr(args, "data.text_field", args.text_field)


PACKAGE_DIR = Path(__file__).resolve().parent
PYTHON_WARNING_FORMAT = warnings.formatwarning


def warning_line(message, category, filename, lineno, line=None) -> str:
    """prunepriv's own warnings as one line, ``prunepriv: warning: …``; any other as Python prints it."""
    if Path(filename).resolve().is_relative_to(PACKAGE_DIR):
        return f"prunepriv: warning: {message}\n"
    return PYTHON_WARNING_FORMAT(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; bad input and I/O failures are one line on stderr and exit status 2,
    Ctrl-C is one line and exit status 130; prunepriv's warnings are one line each."""
    warnings.formatwarning = warning_line
    commands = {"reproduce": _reproduce, "verify": _verify, "finetune": _finetune, "prune": _prune,
                "audit": _audit, "bench": _bench, "canaries": _canaries, "tune": _tune}
    try:
        args = build_parser().parse_args(argv)
        return commands[args.command](args)
    except PrunePrivError as exc:
        return _fail(str(exc), getattr(exc, "user_error", True))
    except OSError as exc:                                   # disk full, permissions, a folder that is a file
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}", True)
    except KeyboardInterrupt:
        print("prunepriv: interrupted; finished outputs are kept, the interrupted step left nothing behind",
              file=sys.stderr)
        return 130


def _fail(message: str, user_error: bool) -> int:
    lines = message.strip().splitlines()
    print(f"prunepriv: error: {lines[0] if lines else 'failed'}", file=sys.stderr)
    return 2 if user_error else 1


def _profile(args):
    """The command's profile (``--profile``, flags, ``--set``), with its device checked before any work."""
    from prunepriv.lm.models import resolve_device

    profile = profile_from_args(args)
    resolve_device(profile.device)
    return profile


def _reproduce(args) -> int:
    from prunepriv.pipeline import reproduce as pipeline

    results = pipeline.reproduce(args.profile, args.stages, args.output_root, force=args.force,
                                 log=lambda line: print(line, flush=True))
    ran = [r for r in results if not r.skipped]
    for result in ran:
        print(f"{result.stage}: {result.notebook} ({result.seconds:.0f} s)")
    print(f"{len(ran)} stage(s) run, {len(results) - len(ran)} unchanged and skipped; "
          f"{sum(r.seconds for r in ran):.0f} s in notebooks")
    return 0


def _verify(args) -> int:
    from prunepriv.report.verify import freeze_reference, report, save_report, verify

    results_dir = Path(args.output_root) / "results" / load_profile(args.profile).name
    if args.update_reference:
        print(f"reference frozen in {freeze_reference(results_dir)}")
        return 0
    result = verify(results_dir, args.reference)
    print(report(result))
    print(f"claims table written to {save_report(result, results_dir)}")
    return 0 if result.passed else 1


def _bench(args) -> int:
    from prunepriv.commands import bench as bench_command

    profile = _profile(args)
    state = bench_command.machine_state()                   # before any work: the load the run starts under
    if args.bench == "latency":
        result = bench_command.latency(profile, args.remove, args.strategy)
        (plo, phi), (dlo, dhi) = result["prefill_ratio_range"], result["decode_ratio_range"]
        line = (f"{result['layers']} layers, removed {result['removed']} ({args.strategy}): prefill ratio "
                f"{result['prefill_ratio']:.3f} (range {plo:.3f}-{phi:.3f}), decode ratio "
                f"{result['decode_ratio']:.3f} (range {dlo:.3f}-{dhi:.3f}), ideal {result['ideal_ratio']:.3f}; "
                f"median of {result['repeats']} interleaved repeats")
    elif args.bench == "dp-overhead":
        result = bench_command.dp_step_overhead(profile, args.batch_size, args.max_length, args.repeats, args.warmup)
        line = (f"DP-SGD {result['dp_sgd_s_per_example']:.3f} s/example, non-private "
                f"{result['non_private_s_per_example']:.3f} s/example, ratio {result['ratio']:.2f}")
    else:
        result = bench_command.step_throughput(profile, args.batch_size, args.max_length, args.repeats, args.warmup)
        line = bench_command.throughput_lines(result)
    result["machine"] = state
    versions = ", ".join(f"{k} {v}" for k, v in state["versions"].items())
    line += (f"\n{state['threads']} threads on {state['cpus']} CPUs, load average before "
             f"{'/'.join(map(str, state['load_average']))}; {versions}")
    print(json.dumps(result) if args.json else line)
    warning = bench_command.busy_warning(state)
    if warning:
        print(f"prunepriv: warning: {warning}", file=sys.stderr)
    return 0


def _finetune(args) -> int:
    from prunepriv.commands import finetune as finetune_command

    if not args.epsilon > 0:                                 # named as typed, before it becomes a profile key
        raise UsageError(f"argument --epsilon: must be > 0 (inf for a non-private run), got {args.epsilon:g}")
    _with_data(args)
    if math.isinf(args.epsilon):
        _nonprivate_as_given(args)
    args.settings = [f"finetune.epsilons=[{'.inf' if math.isinf(args.epsilon) else args.epsilon!r}]",
                     "finetune.utility_match=null", "finetune.model_epsilons=null", "finetune.replicates=1",
                     "finetune.replicate_epsilons=null", *args.settings, f"noise={args.noise}"]   # one run, no sweep
    result = finetune_command.run(_profile(args), args.output, args.noise_multiplier, args.merge)
    if result is None:                                       # not rank 0 of a torchrun group
        return 0
    r = result.privacy
    eps = f"ε = {r.epsilon_rdp:.3f} (RDP), {r.epsilon_prv:.3f} (PRV) at δ = {r.delta:.2g}" if r.private else "non-private"
    procs = f" in {result.world_size} processes" if result.world_size > 1 else ""
    print(f"{r.steps} steps on {r.n_train} records{procs}, σ = {r.noise_multiplier:.4g}, q = {r.sample_rate:.4g}: "
          f"{eps}; adapter in {result.adapter_dir}")
    return 0


NONPRIVATE_KEYS = ("learning_rate", "batch_size", "epochs", "lora_rank", "lora_alpha", "target_modules")


def _nonprivate_as_given(args) -> None:
    """A non-private ``finetune`` trains with the profile's non-private recipe (``finetune.nonprivate``,
    as in the sweep) except where the user gave a setting, by flag or ``--set finetune.KEY``: that wins."""
    from prunepriv.arguments import parse_settings

    given = {k.split(".", 1)[1]: v for k, v in vars(args).items() if k.startswith("finetune.")}
    given.update({k.split(".", 1)[1]: v for k, v in parse_settings(args.settings).items()
                  if k.startswith("finetune.")})
    for key in NONPRIVATE_KEYS:
        if key in given:
            setattr(args, f"finetune.nonprivate.{key}", given[key])


def _tune(args) -> int:
    from prunepriv.commands import tune as tune_command

    table = tune_command.tune(_profile(args), dict(args.grid), args.epsilon, args.output, dict(args.nonprivate_grid),
                              args.seeds, args.base, args.candidate, args.nonprivate_candidate)
    columns = ["kind", "candidate", "perplexity_before", "perplexity", "recovered", "recovered_min",
               "recovered_max", "loss_spike"]
    print(table[columns].to_string(index=False))
    best, chosen = table[table["best_nonprivate"]], table[table["chosen"]]
    if len(best):
        print(f"best non-private: {best['candidate'].iloc[0]} (held-out perplexity "
              f"{best['perplexity_before'].iloc[0]:.4g} → {best['perplexity'].iloc[0]:.4g} on the proxy)")
    print(f"chosen: {chosen['candidate'].iloc[0]} (recovers {chosen['recovered'].iloc[0]:.0%} of the best non-private "
          f"log-perplexity gain, {chosen['recovered_min'].iloc[0]:.0%} to {chosen['recovered_max'].iloc[0]:.0%} over "
          f"{int(chosen['seeds'].iloc[0])} seeds)" if len(chosen) else "no DP candidate chosen: every one spikes, or "
          "no non-private candidate is stable")
    print(f"table: {Path(args.output) / 'tuning.csv'}")
    return 0


def _prune(args) -> int:
    from prunepriv.commands.prune import prune

    if args.data is not None:                                # calibrating on given text is a private use
        args.settings = ["data.calibration=private", *args.settings]
    _with_data(args)
    result = prune(_profile(args), args.output, args.remove, args.layers, args.strategy, args.save_dtype)
    print(f"removed layers {result.layers}; {result.num_layers - len(result.layers)} of {result.num_layers} "
          f"remain; saved to {result.output}")
    return 0


def _audit(args) -> int:
    from prunepriv.commands import audit as audit_command

    profile = _profile(args)
    report_path, rows, skipped = audit_command.audit(
        profile, Path(args.adapter), layers=args.layers, tokenizer=args.tokenizer, train=args.train,
        heldout=args.heldout, text_field=args.text_field, samples=args.samples, output=args.output,
        canaries=args.canaries)
    print(f"{'measurement':44s} {'trained':>10s} {'control':>10s}  control is")
    for name, value, control, what in rows:
        print(f"{name:44s} {value:10.4g} {control if control is not None else float('nan'):10.4g}  {what}")
    for name, why in skipped:
        print(f"{name:44s} {'skipped':>10s} {'':>10s}  {why}")
    print(f"report: {report_path}")
    return 0


def _canaries(args) -> int:
    from prunepriv.commands.canaries import add_canaries

    profile = profile_from_args(args)
    result = add_canaries(args.data, args.output, profile.data, args.text_field, args.canary_seed)
    print(f"{result.n_records} records ({result.n_canary_records} of them canaries) in {result.data}; "
          f"secrets in {result.canaries} (keep it out of training; pass it to audit --canaries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
