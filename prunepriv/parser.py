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
from prunepriv.commands.canaries import CANARY_FIELDS
from prunepriv.commands.tune import TUNABLE
from prunepriv.config import NOISE_SOURCES, DataConfig
from prunepriv.errors import UsageError

DESCRIPTION = ("PrunePrivyTune: remove redundant layers, fine-tune with LoRA under DP-SGD, and audit what the "
               "model memorized")


class Parser(argparse.ArgumentParser):
    """argparse with prunepriv's error convention: one line on stderr, exit status 2 (no usage dump)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see: {self.prog} --help)")


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
        step.add_argument("--batch-size", type=positive_int, default=8, help="records per step (default: 8)")
        step.add_argument("--max-length", type=positive_int, default=128, help="tokens per record (default: 128)")
        step.add_argument("--repeats", type=positive_int, default=5, help="timed rounds (default: 5)")
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
    tune.add_argument("--grid", type=grid_item, action="append", default=[], metavar="KEY=V1,V2",
                      help="values of one finetune setting to try (repeat for several; lists joined by '+', e.g. "
                           f"target_modules=q_proj+v_proj); tunable: {', '.join(TUNABLE)}")
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


def _add_audit(sub) -> None:
    audit = sub.add_parser("audit", help="memorization audit of a fine-tuned adapter, each figure beside its control")
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
    group.add_argument("--layers", type=layer_list, help="explicit layer indices, e.g. 20,21,22")
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
    """The ``prunepriv`` parser with every subcommand."""
    parser = Parser(prog="prunepriv", description=DESCRIPTION,
                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"prunepriv {version('prunepriv')}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_pipeline, _add_bench, _add_finetune, _add_tune, _add_audit, _add_prune, _add_canaries):
        add(sub)
    return parser
