"""The ``prunepriv`` command line: parse, make one library call, print.

Bad input (profile, data, model, layer choice) prints one line on stderr,
``prunepriv: error: ...``, and exits with status 2; nothing is left half-written.
Settings are the fields of the profile dataclasses (``prunepriv.config``): each
subcommand takes ``--profile`` and ``--set key=value`` plus one flag per field of
the sections it uses (``prunepriv.arguments``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from importlib.metadata import version
from pathlib import Path

import yaml

from prunepriv.arguments import add_profile_flags, add_section_flags, profile_from_args
from prunepriv.commands import audit as audit_command
from prunepriv.commands import bench as bench_command
from prunepriv.commands import finetune as finetune_command
from prunepriv.commands import tune as tune_command
from prunepriv.commands.canaries import CANARY_FIELDS, add_canaries
from prunepriv.commands.prune import prune
from prunepriv.config import NOISE_SOURCES, DataConfig, load_profile, profiles_dir
from prunepriv.errors import PrunePrivError, UsageError
from prunepriv.lm.models import resolve_device
from prunepriv.pipeline.reproduce import reproduce
from prunepriv.report.verify import freeze_reference, report, save_report, verify


class Parser(argparse.ArgumentParser):
    """argparse with prunepriv's error convention: one line on stderr, exit status 2 (no usage dump)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see: {self.prog} --help)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _layers(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers must be integers separated by commas, got {text!r}") from None


DATA_FIELDS = tuple(DataConfig.__dataclass_fields__)


def _add_pipeline(sub) -> None:
    rep = sub.add_parser("reproduce", help="execute the numbered notebooks of a profile with papermill")
    rep.add_argument("--profile", default=None,
                     help="profile name (prunepriv/profiles/NAME.yaml) or a YAML path; required (smoke: minutes, "
                          "paper: the full reproduction)")
    rep.add_argument("--stages", nargs="+", help="only these stages, e.g. 01 02 (run even if unchanged)")
    rep.add_argument("--force", action="store_true", help="rerun stages whose inputs have not changed")
    rep.add_argument("--output-root", default=".", help="folder that receives results/ and figures/")
    ver = sub.add_parser("verify", help="compare a run's claims with the committed reference run")
    ver.add_argument("--profile", default="paper", help="profile name or YAML path (its results/NAME/)")
    ver.add_argument("--output-root", default=".", help="folder holding results/")
    ver.add_argument("--reference", help="reference folder (default results/NAME/reference/)")
    ver.add_argument("--update-reference", action="store_true",
                     help="freeze the current results as the reference instead of verifying")


def _add_bench(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    lat = bench.add_parser("latency", help="prefill/decode time of a pruned vs the unpruned model")
    lat.add_argument("--remove", type=int, required=True, help="number of layers to remove")
    lat.add_argument("--strategy", default="cosine", help="cosine, block, last or random")
    lat.add_argument("--json", action="store_true", help="print one JSON object")
    add_profile_flags(lat)
    add_section_flags(lat, None)
    add_section_flags(lat, "latency", exclude=("remove",))
    for name, text in (("dp-overhead", "time and memory of a DP-SGD LoRA step vs a non-private one"),
                       ("throughput", "records/s of evaluation, a plain and a DP-SGD LoRA step, fp32 and bf16")):
        step = bench.add_parser(name, help=text)
        step.add_argument("--batch-size", type=_positive, default=8, help="records per step (default: 8)")
        step.add_argument("--max-length", type=_positive, default=128, help="tokens per record (default: 128)")
        step.add_argument("--repeats", type=_positive, default=5, help="timed rounds (default: 5)")
        step.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
        step.add_argument("--json", action="store_true", help="print one JSON object")
        add_profile_flags(step)
        add_section_flags(step, None, exclude=("precision",) if name == "throughput" else ())


def _add_finetune(sub) -> None:
    ft = sub.add_parser("finetune", help="LoRA fine-tuning under DP-SGD (or not, with --epsilon inf)")
    ft.add_argument("--data", required=True, help="training text: 'synthetic' or a .jsonl/.csv/.txt file")
    ft.add_argument("--text-field", default="text", help="field holding the text in JSONL/CSV files")
    ft.add_argument("--output", required=True, help="folder for adapter/, privacy.json, train_log.csv")
    ft.add_argument("--epsilon", type=float, default=8.0, help="target ε of this run; inf for a non-private run")
    ft.add_argument("--noise-multiplier", type=float, default=None, help="fix σ instead of targeting ε")
    ft.add_argument("--merge", action="store_true", help="also save a merged model under OUTPUT/merged")
    ft.add_argument("--noise", choices=NOISE_SOURCES, default="secure",
                    help="where DP noise and batches come from: secure (from the operating system; the default, "
                         "whatever the profile says) or seeded (from --seed: reproducible, a research setting with "
                         "no guarantee against anyone who knows the seed)")
    add_profile_flags(ft, default="paper")
    add_section_flags(ft, None, profile="paper")
    sweep_only = ("epsilons", "models", "replicates", "utility_match", "eval_samples", "save_merged")
    add_section_flags(ft, "finetune", exclude=sweep_only, profile="paper", aliases={"learning_rate": ("--lr",)})


def _add_tune(sub) -> None:
    tune = sub.add_parser("tune", help="choose DP-SGD hyper-parameters on a public proxy corpus (synthetic notes "
                                       "drawn with another seed), never the private data")
    tune.add_argument("--epsilon", type=float, default=8.0, help="target ε of the DP runs compared")
    tune.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                      help="values of one finetune setting to try (repeat for several; lists joined by '+', e.g. "
                           f"target_modules=q_proj+v_proj); tunable: {', '.join(tune_command.TUNABLE)}")
    tune.add_argument("--output", required=True, help="folder for the runs and tuning.csv")
    add_profile_flags(tune, default="paper")
    add_section_flags(tune, None, profile="paper")


def _grid(items: list[str]) -> dict[str, list]:
    """``["learning_rate=0.002,0.005"]`` → ``{"learning_rate": [0.002, 0.005]}`` (values read as YAML)."""
    grid = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise UsageError(f"--grid wants KEY=V1,V2, got {item!r}")
        values = [v.strip() for v in text.split(",")]
        grid[key.strip()] = [[yaml.safe_load(x) for x in v.split("+")] if "+" in v or key.strip() == "target_modules"
                             else yaml.safe_load(v) for v in values]
    return grid


def _add_audit(sub) -> None:
    audit = sub.add_parser("audit", help="memorization audit of a fine-tuned adapter, each figure beside its control")
    audit.add_argument("--adapter", required=True, help="LoRA adapter folder (adapter_config.json + weights)")
    audit.add_argument("--layers", type=_layers, default=None,
                       help="layers removed from --model before the adapter was trained, e.g. 20,21,22")
    audit.add_argument("--tokenizer", default=None, help="tokenizer folder, if not the model's")
    audit.add_argument("--train", help="records the adapter was trained on (.jsonl/.csv/.txt); needs --heldout")
    audit.add_argument("--heldout", help="records of the same kind it never saw: the control")
    audit.add_argument("--text-field", default="text", help="field holding the text in JSONL/CSV files")
    audit.add_argument("--canaries", help="the *.canaries.json that `prunepriv canaries` wrote beside the --train "
                                          "file: canary exposure and the one-run audit on user data")
    audit.add_argument("--samples", help="JSONL of generated text to audit (default: sample from the model)")
    audit.add_argument("--output", help="folder for report.json (default: ADAPTER/../audit)")
    add_profile_flags(audit, default="paper")
    add_section_flags(audit, None, profile="paper")
    add_section_flags(audit, "memorization", profile="paper")


def _add_canaries(sub) -> None:
    can = sub.add_parser("canaries", help="insert Secret-Sharer canaries into a corpus before fine-tuning, for the audit")
    can.add_argument("--data", required=True, help="the user's .jsonl/.csv/.txt file")
    can.add_argument("--text-field", default="text", help="field holding the text in JSONL/CSV files")
    can.add_argument("--output", required=True, help="JSONL to write (the canaries' secrets go to OUTPUT.canaries.json)")
    can.add_argument("--canary-seed", type=int, default=None,
                     help="seed of the secrets (default: drawn from the operating system, and recorded)")
    add_profile_flags(can)
    add_section_flags(can, "data", exclude=tuple(f for f in DATA_FIELDS if f not in CANARY_FIELDS))


def _add_prune(sub) -> None:
    prune_ = sub.add_parser("prune", help="remove layers from a model and save it with save_pretrained")
    prune_.add_argument("--output", required=True, help="folder for the pruned model")
    group = prune_.add_mutually_exclusive_group(required=True)
    group.add_argument("--remove", type=int, help="number of layers to remove, chosen by --strategy")
    group.add_argument("--layers", type=_layers, help="explicit layer indices, e.g. 20,21,22")
    prune_.add_argument("--strategy", default="cosine", help="cosine, block, last, random or greedy-loss")
    prune_.add_argument("--data", default=None,
                        help="private calibration text for cosine, block and greedy-loss: a .jsonl/.csv/.txt file "
                             "(its calibration split) or 'synthetic'; recorded in the model's config and card as a "
                             "private use of data (default: the profile's data.calibration, public general English "
                             "unless the profile says private)")
    prune_.add_argument("--text-field", default="text", help="field holding the text in JSONL/CSV files")
    add_profile_flags(prune_)
    add_section_flags(prune_, None)
    add_section_flags(prune_, "similarity")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="prunepriv", description=__doc__.splitlines()[0],
                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"prunepriv {version('prunepriv')}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_pipeline, _add_bench, _add_finetune, _add_tune, _add_audit, _add_prune, _add_canaries):
        add(sub)
    return parser


def _with_data(args) -> None:
    """The data flags as profile settings (``data.source``, ``data.text_field``)."""
    source = getattr(args, "data", None)
    if source is not None:
        args.settings = [f"data.source={json.dumps(source)}", *args.settings]
    args.settings = [f"data.text_field={json.dumps(args.text_field)}", *args.settings]


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; bad input and I/O failures are one line on stderr and exit status 2,
    Ctrl-C is one line and exit status 130."""
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
    profile = profile_from_args(args)
    resolve_device(profile.device)
    return profile


def _profile_choices(root: Path) -> str:
    """The shipped profiles with the time their last run here (or the committed reference run) took."""
    parts = []
    for name in sorted(p.stem for p in profiles_dir().glob("*.yaml")):
        notebooks = sorted((root / "results" / name / "notebooks").glob("*.ipynb"))
        seconds = sum(json.loads(nb.read_text()).get("metadata", {}).get("papermill", {}).get("duration") or 0
                      for nb in notebooks)
        parts.append(f"{name} ({f'last run {seconds / 60:.0f} min' if seconds else 'not run here yet'})")
    return ", ".join(parts)


def _reproduce(args) -> int:
    if args.profile is None:
        raise UsageError(f"reproduce needs --profile: {_profile_choices(Path(args.output_root))}")
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


def _bench(args) -> int:
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
    _with_data(args)
    args.settings = [f"finetune.epsilons=[{'.inf' if math.isinf(args.epsilon) else args.epsilon!r}]",
                     "finetune.utility_match=null", *args.settings, f"noise={args.noise}"]   # one run, no sweep
    result = finetune_command.run(_profile(args), args.output, args.noise_multiplier, args.merge)
    if result is None:                                       # not rank 0 of a torchrun group
        return 0
    r = result.privacy
    eps = f"ε = {r.epsilon_rdp:.3f} (RDP), {r.epsilon_prv:.3f} (PRV) at δ = {r.delta:.2g}" if r.private else "non-private"
    procs = f" in {result.world_size} processes" if result.world_size > 1 else ""
    print(f"{r.steps} steps on {r.n_train} records{procs}, σ = {r.noise_multiplier:.4g}, q = {r.sample_rate:.4g}: "
          f"{eps}; adapter in {result.adapter_dir}")
    return 0


def _tune(args) -> int:
    table = tune_command.tune(_profile(args), _grid(args.grid), args.epsilon, args.output)
    columns = ["candidate", "perplexity_before", "perplexity_dp", "perplexity_nonprivate", "recovered", "stable"]
    print(table[columns].to_string(index=False))
    chosen = table[table["chosen"]]
    print(f"chosen: {chosen['candidate'].iloc[0]} (recovers {chosen['recovered'].iloc[0]:.0%} of the non-private "
          "log-perplexity gain on the proxy)" if len(chosen) else "no candidate chosen: every one spikes")
    print(f"table: {Path(args.output) / 'tuning.csv'}")
    return 0


def _prune(args) -> int:
    if args.data is not None:                                # calibrating on given text is a private use
        args.settings = ["data.calibration=private", *args.settings]
    _with_data(args)
    result = prune(_profile(args), args.output, args.remove, args.layers, args.strategy)
    print(f"removed layers {result.layers}; {result.num_layers - len(result.layers)} of {result.num_layers} "
          f"remain; saved to {result.output}")
    return 0


def _audit(args) -> int:
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
    profile = profile_from_args(args)
    result = add_canaries(args.data, args.output, profile.data, args.text_field, args.canary_seed)
    print(f"{result.n_records} records ({result.n_canary_records} of them canaries) in {result.data}; "
          f"secrets in {result.canaries} (keep it out of training; pass it to audit --canaries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
