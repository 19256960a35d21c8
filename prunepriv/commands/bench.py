"""``prunepriv bench``: latency of a pruned model, and the cost of DP-SGD over a plain LoRA step."""
from __future__ import annotations

from prunepriv.commands.prune import choose
from prunepriv.compress.latency import latency_ratio
from prunepriv.compress.pruning import check_count
from prunepriv.config import Profile, check_strategy
from prunepriv.data import synthetic_corpus
from prunepriv.errors import PrunePrivError
from prunepriv.lm.models import load_model, model_num_layers
from prunepriv.privacy.overhead import dp_overhead


def latency(profile: Profile, remove: int, strategy: str = "cosine") -> dict:
    """Prefill and decode time of the model with ``remove`` layers removed by ``strategy``, relative
    to the unpruned model, with the profile's ``latency`` settings."""
    if strategy == "greedy-loss":
        raise PrunePrivError("bench latency supports cosine, block, last and random")
    check_strategy(strategy)
    num_layers = model_num_layers(profile.model)
    check_count(remove, num_layers)
    model, tokenizer = load_model(profile.model, device=profile.device)
    layers = choose(model, tokenizer, profile, strategy, remove, num_layers)
    c = profile.latency
    result = latency_ratio(model, layers, prompt_length=c.prompt_length, new_tokens=c.new_tokens,
                           repeats=c.repeats, warmup=c.warmup, seed=profile.seed)
    return {**result, "strategy": strategy}


def dp_step_overhead(profile: Profile, batch_size: int, max_length: int, repeats: int, warmup: int) -> dict:
    """Time and memory of a DP-SGD LoRA step against a non-private one, on synthetic notes."""
    model, tokenizer = load_model(profile.model, device=profile.device)
    texts = synthetic_corpus(profile.seed).texts("train", include_canaries=False)
    return dp_overhead(model, tokenizer, texts, batch_size, max_length, repeats, warmup, profile.seed)
