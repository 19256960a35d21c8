"""The parser of the ``prunepriv`` command line: one sub-parser per subcommand.

Each subcommand's own flags are declared here; the settings it takes come from the
profile dataclasses (``prunepriv.arguments``), so a default or a check is never
stated twice. Argument errors raise :class:`prunepriv.errors.UsageError`: one line,
exit status 2 (``prunepriv.cli.main``).
"""
from __future__ import annotations

import argparse
from importlib.metadata import version

import yaml

from prunepriv.arguments import add_profile_flags, add_section_flags
from prunepriv.config import (
    CANARY_FIELDS,
    NOISE_SOURCES,
    SAVE_DTYPES,
    TUNABLE,
    DataConfig,
    batch_root,
    profile_choices,
)
from prunepriv.errors import UsageError

DESCRIPTION = ("PrunePrivyTune: remove redundant layers, fine-tune with LoRA under DP-SGD, and audit what the "
               "model memorized")


class Parser(argparse.ArgumentParser):
    """argparse with prunepriv's error convention: one line on stderr, exit status 2 (no usage dump)."""

    def error(self, message: str):
        if self.prog.endswith(" reproduce") and "--profile" in message:
            message = f"reproduce needs --profile: {profile_choices(batch_root())}"
        raise UsageError(f"{message} (see: {self.prog} --help)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default shown once (not where its help already says it), descriptions kept as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS, False, []) or action.required:
            return text
        return super()._get_help_string(action)


def command(sub, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    """A subcommand with its one-line summary (in ``prunepriv --help``) and its description (its own --help)."""
    return sub.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}. {description}",
                          formatter_class=HelpFormatter)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def layer_list(text: str) -> list[int]:
    """An argparse type: layer indices, ``20,21,22`` or ``20 21 22``."""
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers must be integers separated by commas, got {text!r}") from None


DATA_FIELDS = tuple(DataConfig.__dataclass_fields__)


def _add_pipeline(sub) -> None:
    rep = command(sub, "reproduce", "execute the numbered notebooks of a profile with papermill",
                  "Each stage runs in its own process into a staging folder and is committed only when it "
                  "finishes; a stage whose notebook, code, settings and inputs are unchanged is skipped.")
    rep.add_argument("--profile", required=True,
                     help="profile name or YAML path: smoke (minutes), paper (the paper, about 2 hours on a "
                          "2-core CPU) or full (the literature's scale, for a GPU)")
    rep.add_argument("--stages", nargs="+", help="only these stages, e.g. 01 02 (run even if unchanged)")
    rep.add_argument("--force", action="store_true", help="rerun stages whose inputs have not changed")
    rep.add_argument("--output-root", default=str(batch_root()),
                     help="folder that receives results/ and figures/ (the repository root in a checkout)")
    ver = command(sub, "verify", "compare a run's claims with the committed reference run",
                  "Each claim of either run must lie within the spread the reference measured (across seeds, "
                  "a bootstrap, or exactly); a claim missing from either run fails.")
    ver.add_argument("--profile", default="paper", help="profile name or YAML path (its results/NAME/)")
    ver.add_argument("--output-root", default=str(batch_root()),
                     help="folder holding results/ (the repository root in a checkout)")
    ver.add_argument("--reference", help="reference folder (default: results/NAME/reference/)")
    ver.add_argument("--update-reference", action="store_true",
                     help="freeze the current results as the reference instead of verifying")


def _add_bench(sub) -> None:
    bench = command(sub, "bench", "benchmarks that print ratios measured in one run",
                    "The machine's load is recorded with every result.").add_subparsers(dest="bench", required=True)
    lat = command(bench, "latency", "prefill/decode time of a pruned vs the unpruned model",
                  "Interleaved repeats after warm-up; the median and the range of the ratios are printed.")
    lat.add_argument("--remove", type=int, required=True, help="number of layers to remove")
    lat.add_argument("--strategy", default="cosine", help="cosine, block, last or random")
    lat.add_argument("--json", action="store_true", help="print one JSON object")
    add_profile_flags(lat)
    add_section_flags(lat, None)
    add_section_flags(lat, "latency", exclude=("remove",))
    for name, text in (("dp-overhead", "time and memory of a DP-SGD LoRA step vs a non-private one"),
                       ("throughput", "records/s of evaluation, a plain and a DP-SGD LoRA step, fp32 and bf16")):
        step = command(bench, name, text, "Timed rounds after untimed warm-up rounds.")
        step.add_argument("--batch-size", type=positive_int, default=8, help="records per step (default: 8)")
        step.add_argument("--max-length", type=positive_int, default=128, help="tokens per record (default: 128)")
        step.add_argument("--repeats", type=positive_int, default=5, help="timed rounds (default: 5)")
        step.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
        step.add_argument("--json", action="store_true", help="print one JSON object")
        add_profile_flags(step)
        add_section_flags(step, None, exclude=("precision",) if name == "throughput" else ())


def _add_finetune(sub) -> None:
    ft = command(sub, "finetune", "LoRA fine-tuning under DP-SGD (or not, with --epsilon inf)",
                 "On your own text (.jsonl/.csv/.txt) or the synthetic corpus; the adapter is saved with its "
                 "privacy record and model card. Under torchrun, DP-SGD runs across the processes.")
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
    sweep_only = ("epsilons", "models", "model_epsilons", "replicates", "replicate_models", "replicate_epsilons",
                  "utility_match",
                  "eval_samples", "match_samples", "save_merged", "nonprivate")
    add_section_flags(ft, "finetune", exclude=sweep_only, profile="paper", aliases={"learning_rate": ("--lr",)})


def _add_tune(sub) -> None:
    tune = command(sub, "tune", "choose DP-SGD hyper-parameters on a public proxy corpus, never the private data",
                   "The proxy is the synthetic corpus drawn with another seed; each DP candidate is scored by the "
                   "share of the best non-private candidate's held-out log-perplexity gain it recovers.")
    tune.add_argument("--epsilon", type=float, default=8.0, help="target ε of the DP runs compared")
    tune.add_argument("--grid", type=grid_item, action="append", default=[], metavar="KEY=V1,V2",
                      help="values of one finetune setting to try (repeat for several; lists joined by '+', e.g. "
                           f"target_modules=q_proj+v_proj); tunable: {', '.join(TUNABLE)}")
    tune.add_argument("--candidate", type=candidate_item, action="append", default=[], metavar="K1=V1;K2=V2",
                      help="one DP candidate given whole, e.g. 'lora_rank=1;batch_size=256;learning_rate=0.05' "
                           "(repeatable; tried besides the --grid's)")
    tune.add_argument("--nonprivate-candidate", type=candidate_item, action="append", default=[],
                      metavar="K1=V1;K2=V2", help="one non-private candidate given whole (repeatable)")
    tune.add_argument("--nonprivate-grid", type=grid_item, action="append", default=[], metavar="KEY=V1,V2",
                      help="values of one setting of the non-private runs to try (the best of them is the gain a DP "
                           "candidate is scored against; learning_rate, batch_size and epochs go to "
                           "finetune.nonprivate); default: the profile's own non-private settings")
    tune.add_argument("--seeds", type=positive_int, default=2, help="independent runs of every candidate")
    tune.add_argument("--base", choices=("pruned", "unpruned"), default="pruned",
                      help="the model tuned: the profile's pruned model, its layers chosen on the proxy's "
                           "calibration text, or the unpruned one")
    tune.add_argument("--output", required=True, help="folder for the runs and tuning.csv")
    add_profile_flags(tune, default="paper")
    add_section_flags(tune, None, profile="paper")


def grid_item(text: str) -> tuple[str, list]:
    """An argparse type: ``learning_rate=0.002,0.005`` → ``("learning_rate", [0.002, 0.005])``; values are
    read as YAML, a list is joined by '+' (``target_modules=q_proj+v_proj``)."""
    key, sep, values = (part.strip() for part in text.partition("="))
    if not sep or not key or not values:
        raise argparse.ArgumentTypeError(f"wants KEY=V1,V2, got {text!r}")
    return key, [[yaml.safe_load(x) for x in v.split("+")] if "+" in v or key == "target_modules" else yaml.safe_load(v)
                 for v in (v.strip() for v in values.split(","))]


def candidate_item(text: str) -> dict:
    """An argparse type: ``lora_rank=1;learning_rate=0.05;target_modules=q_proj+v_proj`` → a dict (values read
    as YAML, a list joined by '+')."""
    out = {}
    for part in (p.strip() for p in text.split(";") if p.strip()):
        key, values = grid_item(part)
        if len(values) != 1:
            raise argparse.ArgumentTypeError(f"one value per setting in a candidate, got {part!r}")
        out[key] = values[0]
    if not out:
        raise argparse.ArgumentTypeError(f"wants K1=V1;K2=V2, got {text!r}")
    return out


def _add_audit(sub) -> None:
    audit = command(sub, "audit", "memorization audit of a fine-tuned adapter, each figure beside its control",
                    "Extraction, membership inference, PII leakage, canary exposure and the one-run audit, on "
                    "the profile's corpus or on your own training and held-out records.")
    audit.add_argument("--adapter", required=True, help="LoRA adapter folder (adapter_config.json + weights)")
    audit.add_argument("--layers", type=layer_list, default=None,
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
    can = command(sub, "canaries", "insert Secret-Sharer canaries into a corpus before fine-tuning, for the audit",
                  "The secrets are written beside the output (OUTPUT.canaries.json); keep that file out of "
                  "training and pass it to `prunepriv audit --canaries`.")
    can.add_argument("--data", required=True, help="the user's .jsonl/.csv/.txt file")
    can.add_argument("--text-field", default="text", help="field holding the text in JSONL/CSV files")
    can.add_argument("--output", required=True, help="JSONL to write (the canaries' secrets go to OUTPUT.canaries.json)")
    can.add_argument("--canary-seed", type=int, default=None,
                     help="seed of the secrets (default: drawn from the operating system, and recorded)")
    add_profile_flags(can)
    add_section_flags(can, "data", exclude=tuple(f for f in DATA_FIELDS if f not in CANARY_FIELDS))


def _add_prune(sub) -> None:
    prune_ = command(sub, "prune", "remove layers from a model and save it with save_pretrained",
                     "Layers are chosen by a strategy on calibration text (computed in fp32) or given; the saved "
                     "model keeps the source's dtype and records the kept layers and any private use of data.")
    prune_.add_argument("--output", required=True, help="folder for the pruned model")
    group = prune_.add_mutually_exclusive_group(required=True)
    group.add_argument("--remove", type=int, help="number of layers to remove, chosen by --strategy")
    group.add_argument("--layers", type=layer_list, help="explicit layer indices, e.g. 20,21,22")
    prune_.add_argument("--strategy", default="cosine", help="cosine, block, last, random or greedy-loss")
    prune_.add_argument("--data", default=None,
                        help="private calibration text for cosine, block and greedy-loss: a .jsonl/.csv/.txt file "
                             "(its calibration split) or 'synthetic'; recorded in the model's config and card as a "
                             "private use of data (default: the profile's data.calibration, public general English "
                             "unless the profile says private)")
    prune_.add_argument("--text-field", default="text", help="field holding the text in JSONL/CSV files")
    prune_.add_argument("--save-dtype", default="source", choices=SAVE_DTYPES,
                        help="what the pruned model's weights are stored in: the source model's own dtype ("
                             "--precision never changes what is saved), or the one named (recorded in config.json "
                             "and the model card)")
    add_profile_flags(prune_)
    add_section_flags(prune_, None)
    add_section_flags(prune_, "similarity")


def build_parser() -> argparse.ArgumentParser:
    """The ``prunepriv`` parser with every subcommand."""
    parser = Parser(prog="prunepriv", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"prunepriv {version('prunepriv')}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_pipeline, _add_bench, _add_finetune, _add_tune, _add_audit, _add_prune, _add_canaries):
        add(sub)
    return parser
