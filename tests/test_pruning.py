"""Structural removal on tiny models of every supported family."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_config, tiny_model
from transformers import AutoModelForCausalLM

from prunepriv import decoder_layers, remove_layers
from prunepriv.compress.pruning import KEPT_LAYERS_KEY
from prunepriv.errors import ModelError, PruningError
from prunepriv.lm.models import check_family

REMOVE = [1, 3, 4]


def _ids(seed: int = 0, shape=(2, 12)) -> torch.Tensor:
    return torch.randint(2, 250, shape, generator=torch.Generator().manual_seed(seed))


def _logits_with_identity_layers(model, skipped: list[int], ids: torch.Tensor) -> torch.Tensor:
    """Reference: the unpruned model with the skipped layers turned into identities by hooks."""
    def identity(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    handles = [decoder_layers(model)[i].register_forward_hook(identity, with_kwargs=True) for i in skipped]
    try:
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()


def test_adapter_finds_every_layer(family):
    model = tiny_model(family, layers=6)
    assert len(decoder_layers(model)) == 6


def test_removal_equals_skipping(family):
    model = tiny_model(family)
    ids = _ids()
    expected = _logits_with_identity_layers(model, REMOVE, ids)
    pruned = remove_layers(copy.deepcopy(model), REMOVE)
    with torch.no_grad():
        got = pruned(input_ids=ids, use_cache=False).logits
    assert len(decoder_layers(pruned)) == 3
    assert torch.allclose(got, expected, atol=1e-5)
    # and removing layers really changes the function
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits
    assert not torch.allclose(got, full, atol=1e-3)


def test_layer_idx_and_config_updated(family):
    pruned = remove_layers(tiny_model(family), REMOVE)
    for new_index, layer in enumerate(decoder_layers(pruned)):
        indices = {m.layer_idx for m in layer.modules() if isinstance(getattr(m, "layer_idx", None), int)}
        assert indices == {new_index}
    assert pruned.config.num_hidden_layers == 3
    assert getattr(pruned.config, KEPT_LAYERS_KEY) == [0, 2, 5]
    layer_types = getattr(pruned.config, "layer_types", None)
    if layer_types is not None:
        assert len(layer_types) == 3


def test_save_and_reload_give_same_logits(family, tmp_path):
    pruned = remove_layers(tiny_model(family), REMOVE)
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = _ids(1)
    with torch.no_grad():
        assert torch.allclose(pruned(input_ids=ids).logits, reloaded(input_ids=ids).logits, atol=1e-6)
    assert len(decoder_layers(reloaded)) == 3
    assert getattr(reloaded.config, KEPT_LAYERS_KEY) == [0, 2, 5]


def test_cached_generation_after_pruning(family):
    pruned = remove_layers(tiny_model(family), REMOVE)
    ids = _ids(2, (1, 8))
    pruned.generation_config.eos_token_id = None        # always generate all 8 tokens
    with torch.no_grad():
        cached = pruned.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = pruned.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
        manual = ids
        for _ in range(8):
            nxt = pruned(input_ids=manual, use_cache=False).logits[:, -1:].argmax(-1)
            manual = torch.cat([manual, nxt], dim=1)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, manual)


def test_pruning_twice_tracks_original_indices():
    model = remove_layers(tiny_model("llama", layers=6), [0, 1])      # keeps 2 3 4 5
    remove_layers(model, [1])                                          # drops original 3
    assert getattr(model.config, KEPT_LAYERS_KEY) == [2, 4, 5]


@pytest.mark.parametrize("layers, message", [
    ([0, 1, 2, 3, 4, 5], "cannot remove 6 layers"),
    ([6], "out of range"),
    ([-1], "out of range"),
    ([2, 2], "repeat"),
])
def test_bad_removals_are_refused(layers, message):
    model = tiny_model("llama", layers=6)
    with pytest.raises(PruningError, match=message):
        remove_layers(model, layers)
    assert len(decoder_layers(model)) == 6          # untouched


def test_unsupported_architecture_names_the_families():
    import transformers as T

    model = T.AutoModelForCausalLM.from_config(T.PhiConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                           num_hidden_layers=2, num_attention_heads=4))
    with pytest.raises(ModelError, match="unsupported architecture 'phi'.*llama.*gpt2"):
        decoder_layers(model)
    with pytest.raises(ModelError):
        check_family("bert")


def test_tiny_config_is_what_the_family_says(family):
    assert tiny_config(family).model_type == family


def test_config_lists_that_are_not_per_layer_are_left_alone():
    import transformers as T

    config = tiny_config("llama", layers=3)
    config.eos_token_id = [2, 5, 9]                          # as long as the layer count, but not per layer
    config.layer_types = ["full_attention"] * 3
    model = T.AutoModelForCausalLM.from_config(config)
    remove_layers(model, [1])
    assert model.config.eos_token_id == [2, 5, 9]
    assert model.config.layer_types == ["full_attention"] * 2


@pytest.mark.parametrize("twice", [False, True])
def test_gpt2_inverse_layer_scale_survives_save_and_reload(tmp_path, twice):
    import transformers as T

    config = tiny_config("gpt2", layers=6)
    config.scale_attn_by_inverse_layer_idx = True
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(0, 250, (2, 12))
    with torch.no_grad(), __import__("prunepriv").compress.pruning.skipping(model, [0, 2, 3]):
        expected = model(ids).logits
    pruned = remove_layers(copy.deepcopy(model), [0, 2] if twice else [0, 2, 3])
    if twice:                                                # prune again after a save/reload round trip
        pruned.save_pretrained(tmp_path / "first")
        pruned = remove_layers(AutoModelForCausalLM.from_pretrained(tmp_path / "first").eval(), [1])
    pruned.save_pretrained(tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.allclose(pruned(ids).logits, expected, atol=1e-5)
        assert torch.allclose(reloaded(ids).logits, expected, atol=1e-5)
