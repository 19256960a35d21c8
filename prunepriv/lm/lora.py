"""LoRA adapters (peft): which layers they can target, adding one, loading a saved
one only onto the model it was made for, and merging it into the base weights."""
from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from prunepriv.errors import ModelError
from prunepriv.privacy.specs import LoRASpec
from prunepriv.results import share_like_umask


def linear_module_names(model: nn.Module) -> list[str]:
    """Leaf names of the linear layers LoRA could target (e.g. q_proj, c_attn)."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            leaf = name.rsplit(".", 1)[-1]
            if leaf not in ("lm_head", "embed_out"):
                names.add(leaf)
    return sorted(names)


def check_lora_targets(model: nn.Module, targets: list[str]) -> None:
    """Raise ModelError naming the model's linear layers if a target is missing."""
    available = linear_module_names(model)
    missing = [t for t in targets if t not in available]
    if missing:
        raise ModelError(f"LoRA target modules {missing} not in the model; it has: {', '.join(available)}")


def add_lora(model: nn.Module, spec: LoRASpec):
    """Wrap ``model`` with peft LoRA; only LoRA parameters stay trainable."""
    from peft import LoraConfig, get_peft_model

    check_lora_targets(model, spec.target_modules)
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=list(spec.target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable (LoRA) parameters of a peft model, by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def check_adapter_dir(adapter_dir: Path) -> Path:
    """The adapter's weights file; a folder without a peft adapter is a ModelError."""
    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not (Path(adapter_dir) / "adapter_config.json").is_file() or not weights.is_file():
        raise ModelError(f"no LoRA adapter in {adapter_dir} (expected adapter_config.json and adapter_model.safetensors)")
    return weights


def load_adapter(model: nn.Module, adapter_dir: str | Path):
    """Attach a saved LoRA adapter to ``model``, refusing one made for another model.

    Every adapter tensor must have a matching LoRA parameter of the same
    shape (a different architecture or layer count is named in the error).
    """
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    weights = check_adapter_dir(adapter_dir)
    config = LoraConfig.from_pretrained(adapter_dir)
    available = linear_module_names(model)
    missing = sorted(set(config.target_modules) - set(available))
    if missing:
        raise ModelError(f"adapter {adapter_dir} targets {missing}, which the base model lacks")
    saved = load_file(weights)
    with warnings.catch_warnings():
        # peft warns when the base was loaded from another path than the adapter names (a relative
        # --model, a copied folder); the base is what the user gave, and its fit is checked here
        warnings.filterwarnings("ignore", message=r"The PEFT config's `base_model_name_or_path` was renamed")
        probe = get_peft_model_state_dict(get_peft_model(_shape_twin(model), config))
        wrong = [k for k, v in saved.items() if k not in probe or probe[k].shape != v.shape]
        if wrong or len(saved) != len(probe):
            raise ModelError(f"adapter {adapter_dir} does not match the base model ({len(saved)} adapter tensors, "
                             f"{len(probe)} expected; {_first_mismatch(saved, probe, wrong)})")
        return PeftModel.from_pretrained(model, adapter_dir)


def _first_mismatch(saved: dict, probe: dict, wrong: list[str]) -> str:
    """Which tensor does not fit, and how: a shape that differs, or a module the other side lacks."""
    if not wrong:
        return f"{sorted(set(probe) - set(saved))[0]} is missing from the adapter"
    key = wrong[0]
    if key in probe:
        return (f"shapes differ: {key} is {tuple(saved[key].shape)} in the adapter, "
                f"{tuple(probe[key].shape)} in the base model")
    return f"{key} has no counterpart in the base model (another layer count or architecture?)"


def _shape_twin(model: nn.Module) -> nn.Module:
    """A weightless copy of ``model`` (meta device) to compute the adapter's expected shapes."""
    return meta_model(copy.deepcopy(model.config))


def meta_model(config) -> nn.Module:
    """The architecture of ``config`` without weights (meta device): cheap structural checks."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def merge_and_save(peft_model, tokenizer, output_dir: str | Path, base: nn.Module | None = None,
                   dtype: torch.dtype | None = None) -> Path:
    """Merge LoRA into the base weights and save a plain Hugging Face model (and its tokenizer),
    readable as the umask allows.

    Precision is a way of computing, not of storing: a base that computed in bf16 holds rounded weights, so
    ``base`` (the same model read in fp32, an exact widening of its source) receives the adapter instead,
    and the merged weights are stored in ``dtype`` (the source's); without them, the model as it is."""
    if base is not None:                 # ``base`` is this merge's own copy: the adapter goes onto it
        with tempfile.TemporaryDirectory(prefix="prunepriv-adapter-") as folder:
            peft_model.save_pretrained(folder)      # its LoRA weights are fp32 whatever the base computes in
            merged = load_adapter(base, Path(folder)).merge_and_unload()
    else:
        merged = peft_model.merge_and_unload()
    if dtype is not None:
        for param in merged.parameters():
            if param.is_floating_point():
                param.data = param.data.to(dtype)
    output_dir = Path(output_dir)
    merged.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return share_like_umask(output_dir)
