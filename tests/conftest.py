"""Shared fixtures: tiny randomly initialised models of every supported
family, built from configs (no download), and a byte-level tokenizer."""
from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each, and for every process they start
    # (kernels, the CLI), set before torch starts its OpenMP pool. More threads than cores make the
    # pools spin against each other and slow both workers many times over.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers as T  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

VOCAB = 260


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``longest`` first (the smoke profile end to end): with parallel workers
    (``make test``) the others run beside it instead of after it. Otherwise collection order."""
    items.sort(key=lambda item: item.get_closest_marker("longest") is None)


def tiny_config(family: str, layers: int = 6):
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4)
    if family in ("llama", "mistral", "qwen2"):
        cls = {"llama": T.LlamaConfig, "mistral": T.MistralConfig, "qwen2": T.Qwen2Config}[family]
        return cls(intermediate_size=64, num_key_value_heads=2, max_position_embeddings=256, **common)
    if family == "gemma":
        return T.GemmaConfig(intermediate_size=64, num_key_value_heads=2, head_dim=8, max_position_embeddings=256, **common)
    if family == "gemma3_text":
        return T.Gemma3TextConfig(intermediate_size=64, num_key_value_heads=2, head_dim=8, sliding_window=16,
                                  max_position_embeddings=256, **common)
    if family == "gpt2":
        return T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=256,
                            bos_token_id=0, eos_token_id=0)
    if family == "gpt_neox":
        return T.GPTNeoXConfig(intermediate_size=64, max_position_embeddings=256, **common)
    if family == "opt":
        return T.OPTConfig(ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=256, bos_token_id=0,
                           eos_token_id=0, pad_token_id=1, **common)
    raise ValueError(family)


FAMILIES = ["llama", "mistral", "qwen2", "gemma", "gemma3_text", "gpt2", "gpt_neox", "opt"]


def tiny_model(family: str = "llama", layers: int = 6, seed: int = 0):
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(tiny_config(family, layers))
    model.eval()
    return model


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def byte_tokenizer():
    return make_byte_tokenizer()


def make_byte_tokenizer():
    """A byte-level BPE tokenizer with no merges (256 byte tokens + specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "<eos>": 1, **{ch: i + 2 for i, ch in enumerate(sorted(alphabet))}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = T.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    fast.padding_side = "right"
    return fast


@pytest.fixture
def tiny_model_dir(tmp_path, byte_tokenizer):
    """A saved tiny llama with its tokenizer, usable as ``--model DIR``."""
    path = tmp_path / "tiny-llama"
    tiny_model("llama", layers=6).save_pretrained(path)
    byte_tokenizer.save_pretrained(path)
    return path
