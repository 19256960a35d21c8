"""Memorization attacks, each with its control (notebook 05).

* Membership inference (MIMIR's attacks): loss (Yeom et al. 2018), zlib
  ratio and reference-model ratio (Carlini et al. 2021), min-k% prob
  (Shi et al. 2024); ROC AUC and TPR at low FPR on training versus
  held-out records.
* Canary exposure (Carlini et al. 2019, "The Secret Sharer"): the rank of a
  canary's secret among random secrets of the same format; held-out canaries
  are the control (about 1/ln 2 ≈ 1.44 bits by chance).
* Extraction (Carlini et al. 2021): synthetic samples matched to their
  closest training and held-out records by BERTScore; ranking by
  perplexity, zlib and reference ratio.
* Prefix attack (Carlini et al. 2023): continue the first tokens of training
  and held-out records, compare with the true suffix.
* PII leakage: training PII values written verbatim, next to held-out PII
  values (what a model writes by chance).
"""
from __future__ import annotations

import copy
import math
import random
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from prunepriv.lm.text import pad_right, record_ids

# --------------------------------------------------------------------------
# token log-probabilities

def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def token_logprobs(model, sequences: list[list[int]], pad_id: int, batch_size: int = 8) -> list[np.ndarray]:
    """Log-probability of every token after the first, per sequence."""
    device = _device(model)
    out: list[np.ndarray] = []
    for i in range(0, len(sequences), batch_size):
        chunk = sequences[i:i + batch_size]
        batch = {k: v.to(device) for k, v in pad_right(chunk, pad_id).items()}
        logits = model(**batch, use_cache=False).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0].cpu().numpy()
        out += [lp[row, : len(seq) - 1] for row, seq in enumerate(chunk)]
    return out


def record_logprobs(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 8,
                    end: bool = True) -> list[np.ndarray]:
    """Token log-probabilities of whole records, formatted as in training (``end=False``: no EOS, for samples)."""
    return token_logprobs(model, record_ids(tokenizer, texts, max_length, end=end), _pad(tokenizer), batch_size)


def scored_texts(tokenizer, texts: list[str], max_length: int, end: bool = True) -> list[str]:
    """The text that each record's scored tokens spell (its ``max_length``-token window, as in
    :func:`record_logprobs`): what zlib's denominator must compress so that it matches the NLL above it."""
    return tokenizer.batch_decode([ids[1:] for ids in record_ids(tokenizer, texts, max_length, end=end)],
                                  skip_special_tokens=True)


def _pad(tokenizer) -> int:
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)


# --------------------------------------------------------------------------
# membership inference

MIA_ATTACKS = ("loss", "zlib", "min_k", "reference")


def zlib_bits(text: str) -> int:
    """zlib-compressed length of ``text`` in bits (Carlini et al. 2021's zlib entropy)."""
    return 8 * len(zlib.compress(text.encode("utf-8")))


def min_k_mean(logprobs: np.ndarray, k: float) -> float:
    """Mean of the lowest ``k`` fraction of token log-probabilities (Min-K% Prob, Shi et al. 2024)."""
    if len(logprobs) == 0:
        return float("nan")
    n = max(1, int(math.ceil(k * len(logprobs))))
    return float(np.sort(logprobs)[:n].mean())


def mia_scores(texts: list[str], target: list[np.ndarray], reference: list[np.ndarray],
               min_k: float = 0.2) -> dict[str, np.ndarray]:
    """Per-record membership scores (higher means "member") for each attack; ``texts`` are the scored
    windows (:func:`scored_texts`), so that zlib divides the NLL of those tokens by their own zlib size."""
    loss = np.array([-lp.mean() for lp in target])
    ref_loss = np.array([-lp.mean() for lp in reference])
    total = np.array([-lp.sum() for lp in target])
    return {
        "loss": -loss,
        "zlib": -total / np.array([zlib_bits(t) for t in texts]),
        "min_k": np.array([min_k_mean(lp, min_k) for lp in target]),
        "reference": ref_loss - loss,
    }


def roc_auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P(member score > non-member score), ties counting 1/2 (Mann-Whitney)."""
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    if len(members) == 0 or len(nonmembers) == 0:
        return float("nan")
    greater = (members[:, None] > nonmembers[None, :]).mean()
    ties = (members[:, None] == nonmembers[None, :]).mean()
    return float(greater + 0.5 * ties)


def tpr_column(fpr: float) -> str:
    """The column of the TPR at false-positive rate ``fpr`` in a membership row, e.g. ``tpr_at_0.01_fpr``."""
    return f"tpr_at_{fpr:g}_fpr"


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float) -> float:
    """TPR at the threshold whose FPR on ``nonmembers`` is at most ``fpr``.

    With ``n`` non-members an FPR below ``1/n`` cannot be resolved: the
    threshold is then the highest non-member score (observed FPR 0).
    """
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    if len(members) == 0 or len(nonmembers) == 0:
        return float("nan")
    allowed = int(math.floor(fpr * len(nonmembers)))
    threshold = np.sort(nonmembers)[::-1][min(allowed, len(nonmembers) - 1)]
    return float((members > threshold).mean())


def auc_interval(auc: float, members: int, nonmembers: int, z: float = 1.96) -> tuple[float, float]:
    """Approximate 95% interval of an AUC (Hanley & McNeil 1982, the exponential approximation)."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (members - 1) * (q1 - auc * auc) + (nonmembers - 1) * (q2 - auc * auc)) \
        / (members * nonmembers)
    half = z * math.sqrt(max(var, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


def mean_interval(values, draws: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(values)`` (e.g. one run's mean excess exposure over its
    canaries); NaN with fewer than two values."""
    values = np.asarray(values, float)
    if len(values) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (draws, len(values)))].mean(1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def membership_inference(member_texts: list[str], nonmember_texts: list[str], target_lp, reference_lp,
                         min_k: float = 0.2, fprs: tuple[float, ...] = (0.01, 0.001)) -> list[dict]:
    """One row per attack: AUC and TPR at each FPR, members versus non-members (texts: the scored
    windows, :func:`scored_texts`)."""
    n = len(member_texts)
    scores = mia_scores(member_texts + nonmember_texts, target_lp, reference_lp, min_k)
    rows = []
    for attack in MIA_ATTACKS:
        s = scores[attack]
        row = {"attack": attack, "auc": roc_auc(s[:n], s[n:]), "members": n,
               "nonmembers": len(nonmember_texts), "fpr_resolution": 1 / max(1, len(nonmember_texts))}
        row["auc_low"], row["auc_high"] = bootstrap_interval(s[:n], s[n:], roc_auc)
        for fpr in fprs:
            column = tpr_column(fpr)
            row[column] = tpr_at_fpr(s[:n], s[n:], fpr)
            row[f"{column}_low"], row[f"{column}_high"] = bootstrap_interval(
                s[:n], s[n:], lambda m, o, f=fpr: tpr_at_fpr(m, o, f))
        rows.append(row)
    return rows


def bootstrap_interval(members, nonmembers, statistic, draws: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(members, nonmembers)``, members and non-members
    resampled each on their own (the scores of a membership attack; NaN when a side is empty)."""
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    if not len(members) or not len(nonmembers):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    values = [statistic(members[rng.integers(0, len(members), len(members))],
                        nonmembers[rng.integers(0, len(nonmembers), len(nonmembers))]) for _ in range(draws)]
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


# --------------------------------------------------------------------------
# canary exposure

@torch.inference_mode()
def continuation_nll(model, tokenizer, texts: list[str], batch_size: int = 160, end: bool = True) -> np.ndarray:
    """NLL of each record's tokens after the prefix all ``texts`` share (``end=False``: no EOS scored).

    The shared prefix (the canary format up to the secret) runs once; the
    continuations are then scored along their token trie, one level at a time:
    a token prefix that several candidates share (a secret's first digits) is
    run once, and its children continue from its cached keys and values.
    """
    seqs = record_ids(tokenizer, texts, max_length=10_000, end=end)
    common = _common_prefix(seqs)
    device = _device(model)
    first = model(input_ids=torch.tensor([seqs[0][:common]], device=device), use_cache=True)
    rests = [tuple(s[common:]) for s in seqs]
    total = np.zeros(len(seqs))
    nodes, cache, logprobs = [()], first.past_key_values, torch.log_softmax(first.logits[:, -1].float(), -1)
    for depth in range(max(len(r) for r in rests)):
        index = {node: i for i, node in enumerate(nodes)}
        for i, rest in enumerate(rests):                  # each continuation's token at this depth
            if len(rest) > depth:
                total[i] -= float(logprobs[index[rest[:depth]], rest[depth]])
        nodes = sorted({r[:depth + 1] for r in rests if len(r) > depth + 1})   # the last token is never an input
        if not nodes:
            break
        parents = torch.tensor([index[node[:-1]] for node in nodes], device=device)
        tokens = torch.tensor([[node[-1]] for node in nodes], device=device)
        parts = [_trie_step(model, cache, parents[i:i + batch_size], tokens[i:i + batch_size], common + depth)
                 for i in range(0, len(nodes), batch_size)]
        cache, logprobs = _concat_caches([c for c, _ in parts]), torch.cat([lp for _, lp in parts])
    return total


def _trie_step(model, cache, parents: torch.Tensor, tokens: torch.Tensor, seen: int):
    """Run one token for each trie node of a level from its parent's row of ``cache`` (``seen`` tokens long);
    returns the nodes' cache and their next-token log-probabilities."""
    past = copy.copy(cache)
    past.layers = [copy.copy(layer) for layer in cache.layers]
    past.reorder_cache(parents)                        # index_select: new tensors, ``cache`` untouched
    mask = torch.ones(len(tokens), seen + 1, dtype=torch.long, device=tokens.device)
    out = model(input_ids=tokens, attention_mask=mask, past_key_values=past, use_cache=True)
    return out.past_key_values, torch.log_softmax(out.logits[:, -1].float(), -1)


def _concat_caches(caches: list):
    """One cache holding the batch rows of ``caches`` in order."""
    if len(caches) == 1:
        return caches[0]
    out = caches[0]
    for i, layer in enumerate(out.layers):
        layer.keys = torch.cat([c.layers[i].keys for c in caches])
        layer.values = torch.cat([c.layers[i].values for c in caches])
    return out


def _common_prefix(seqs: list[list[int]]) -> int:
    """Length of the longest token prefix all sequences share (at least 1, less than the shortest)."""
    shortest = min(len(s) for s in seqs)
    n = 0
    while n < shortest - 1 and all(s[n] == seqs[0][n] for s in seqs):
        n += 1
    return max(1, n)


def secret_logprobs(model, tokenizer, canaries: list, batch_size: int = 64) -> list[np.ndarray]:
    """Log-probabilities of each canary's secret tokens, in the context of its prefix as trained
    (``[start] + prefix + secret``): the tokens that the secret adds to the prefix alone (a token that
    straddles the boundary counts as the secret's)."""
    full = record_ids(tokenizer, [c.prefix + c.secret for c in canaries], max_length=10_000, end=False)
    prefixes = record_ids(tokenizer, [c.prefix for c in canaries], max_length=10_000, end=False)
    logprobs = token_logprobs(model, full, _pad(tokenizer), batch_size)
    out = []
    for lp, ids, prefix in zip(logprobs, full, prefixes):
        shared = next((i for i, (a, b) in enumerate(zip(ids, prefix)) if a != b), min(len(ids), len(prefix)))
        out.append(lp[max(shared, 1) - 1:])            # lp[j] scores token j + 1
    return out


def random_secret(rng: random.Random, like: str) -> str:
    """A random secret of the same format: digits replaced by random digits, letters by letters."""
    out = []
    for ch in like:
        if ch.isdigit():
            out.append(rng.choice("0123456789"))
        elif ch.isalpha():
            out.append(rng.choice("abcdefghijklmnopqrstuvwxyz").upper() if ch.isupper()
                       else rng.choice("abcdefghijklmnopqrstuvwxyz"))
        else:
            out.append(ch)
    return "".join(out)


@dataclass
class Exposure:
    """One canary's exposure (Carlini et al. 2019, Sec. 4)."""

    canary_id: str
    repetitions: int
    rank: int                 # 1 = the secret is more likely than every candidate
    candidates: int
    exposure: float           # log2((candidates + 1) / rank); at most log2(candidates + 1)
    exposure_fit: float       # -log2 P(candidate NLL <= secret NLL) under a normal fit (Sec. 4.3)


def exposure_candidates(canary, n_candidates: int, seed: int) -> list[str]:
    """``n_candidates`` distinct random secrets of the canary's format, never its own.

    Drawn from a generator of the seed, the canary's id and its secret, so the
    same canary always meets the same candidates (its tuned and untuned
    exposure are paired) while a replicate's canary, whose secret is drawn
    anew, meets candidates of its own (independent replicates).
    """
    rng = random.Random(f"{seed}-{canary.id}-{canary.secret}")
    secrets = set()
    while len(secrets) < n_candidates:
        s = random_secret(rng, canary.secret)
        if s != canary.secret:
            secrets.add(s)
    return sorted(secrets)


def canary_exposure(model, tokenizer, canary, n_candidates: int, seed: int, batch_size: int = 160) -> Exposure:
    """Rank the canary's secret among ``n_candidates`` random secrets of its format, by the NLL of the
    secret's tokens after the canary's prefix (what differs between candidates; the closing period and
    the end of the record are the same for all)."""
    candidates = [canary.secret] + exposure_candidates(canary, n_candidates, seed)
    nll = continuation_nll(model, tokenizer, [canary.prefix + s for s in candidates], batch_size, end=False)
    rank = 1 + int((nll[1:] < nll[0]).sum()) + int((nll[1:] == nll[0]).sum()) // 2
    mu, sigma = float(nll[1:].mean()), float(nll[1:].std(ddof=1)) or 1e-12
    tail = 0.5 * math.erfc((mu - float(nll[0])) / (sigma * math.sqrt(2)))   # P(N(mu, sigma) <= secret NLL)
    return Exposure(canary.id, canary.repetitions, rank, n_candidates,
                    math.log2((n_candidates + 1) / rank), -math.log2(max(tail, 1e-300)))


def chance_exposure(n_candidates: int) -> float:
    """Expected rank-based exposure of a secret the model never saw: E log2((R+1)/U), U ~ 1..R+1."""
    r = n_candidates + 1
    return float(np.mean([math.log2(r / u) for u in range(1, r + 1)]))


BAND_STEP = 1e-3     # bits: the grid of the exact null band's convolution (its error is at most half of it)


def chance_exposure_band(n_canaries: int, n_candidates: int, level: float = 0.95) -> tuple[float, float]:
    """Central ``level`` band of the *mean* exposure of ``n_canaries`` secrets the model never saw.

    A never-trained secret and its candidates are drawn alike, so its rank among them is uniform on
    1..R+1 whatever the model (exchangeability), and its exposure log2((R+1)/U) has a known law; the
    mean of n independent ones is that law convolved n times (here on a grid of :data:`BAND_STEP` bits,
    by FFT). A group mean outside the band is evidence of memorization without any bootstrap, which
    with a few canaries per group is far from its nominal level.
    """
    if n_canaries < 1:
        return math.nan, math.nan
    r = n_candidates + 1
    bins = np.rint(np.log2(r / np.arange(1, r + 1)) / BAND_STEP).astype(int)
    one = np.bincount(bins, minlength=bins.max() + 1) / r
    size = n_canaries * (len(one) - 1) + 1
    fft = 1 << (size - 1).bit_length()
    total = np.fft.irfft(np.fft.rfft(one, fft) ** n_canaries, fft)[:size].clip(min=0)
    cdf = np.cumsum(total) / total.sum()
    low = int(np.searchsorted(cdf, (1 - level) / 2))
    high = int(np.searchsorted(cdf, (1 + level) / 2))
    return low * BAND_STEP / n_canaries, high * BAND_STEP / n_canaries


def permutation_p(a, b, strata_a=None, strata_b=None, draws: int = 10_000, seed: int = 0) -> float:
    """Two-sided permutation p-value of mean(a) − mean(b) (e.g. the paired excess exposure of trained
    canaries against that of never-trained ones): the group labels are shuffled within each stratum (a
    replicate's canaries with that replicate's), the statistic recomputed, and the p-value is the share of
    draws at least as extreme, the observed one counted (Phipson & Smyth 2010). NaN when a group is empty."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if not len(a) or not len(b):
        return math.nan
    values = np.concatenate([a, b])
    labels = np.r_[np.ones(len(a), bool), np.zeros(len(b), bool)]
    strata = np.concatenate([np.zeros(len(a)) if strata_a is None else np.asarray(strata_a),
                             np.zeros(len(b)) if strata_b is None else np.asarray(strata_b)])
    observed = abs(values[labels].mean() - values[~labels].mean())
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    extreme = 0
    for _ in range(draws):
        shuffled = labels.copy()
        for index in groups:
            shuffled[index] = rng.permutation(labels[index])
        extreme += abs(values[shuffled].mean() - values[~shuffled].mean()) >= observed - 1e-12
    return (extreme + 1) / (draws + 1)


# --------------------------------------------------------------------------
# extraction from synthetic samples

def nearest_match(similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best score and index of the closest reference for each sample (rows)."""
    if similarity.shape[1] == 0:
        return np.full(similarity.shape[0], np.nan), np.full(similarity.shape[0], -1)
    return similarity.max(1), similarity.argmax(1)


def extraction_summary(f1_train: np.ndarray, f1_heldout: np.ndarray, near_copy: float) -> dict:
    """Excess similarity of samples to training over size-matched held-out records."""
    best_train, _ = nearest_match(f1_train)
    best_heldout, _ = nearest_match(f1_heldout)
    return {
        "samples": len(best_train),
        "f1_nearest_train": float(np.mean(best_train)),
        "f1_nearest_heldout": float(np.mean(best_heldout)),
        "extraction_excess": float(np.mean(best_train - best_heldout)),
        "closer_to_train": float(np.mean(best_train > best_heldout)),    # chance: 0.5
        "near_copies_train": int((best_train >= near_copy).sum()),
        "near_copies_heldout": int((best_heldout >= near_copy).sum()),
    }


def ranking_metrics(texts: list[str], target_lp: list[np.ndarray], reference_lp: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Carlini et al. 2021's sample rankings; lower is more suspicious for every metric (``texts``: the
    scored windows, :func:`scored_texts`)."""
    log_ppl = np.array([-lp.mean() if len(lp) else np.nan for lp in target_lp])
    ref_log_ppl = np.array([-lp.mean() if len(lp) else np.nan for lp in reference_lp])
    return {
        "perplexity": log_ppl,
        "zlib": log_ppl * np.array([len(lp) for lp in target_lp]) / np.array([max(1, zlib_bits(t)) for t in texts]),
        "reference": log_ppl / ref_log_ppl,
    }


def top_k_copies(metric: np.ndarray, f1_train: np.ndarray, f1_heldout: np.ndarray, k: int, near_copy: float) -> dict:
    """How many of the ``k`` most suspicious samples are near-copies of a training / held-out record."""
    order = np.argsort(np.nan_to_num(metric, nan=np.inf), kind="stable")[:k]
    best_train, _ = nearest_match(f1_train[order])
    best_heldout, _ = nearest_match(f1_heldout[order])
    return {"top_k": len(order), "near_copies_train": int((best_train >= near_copy).sum()),
            "near_copies_heldout": int((best_heldout >= near_copy).sum())}


# --------------------------------------------------------------------------
# PII leakage

def leaked_fraction(texts: list[str], values: list[str]) -> float:
    """Fraction of ``values`` that appear verbatim in at least one text."""
    if not values:
        return float("nan")
    blob = "\n".join(texts)
    return sum(v in blob for v in values) / len(values)


def exclusive_pii(corpus, split: str, exclude_kinds: tuple[str, ...] = ("clinician",),
                  window: Callable[[str], int] | None = None) -> list[str]:
    """PII values of ``split`` that occur in no other split (shared values prove nothing); with ``window``
    (a record's text → how many of its first characters the model is trained and scored on,
    :func:`window_chars`), only values that lie inside it in some record: past the window a value was
    never trained on, so its leakage would be counted against the wrong side."""
    others = {v for s in corpus.splits if s != split for _, v in corpus.pii_values(s)}
    inside = {item.value for record in corpus.splits[split] for item in record.pii
              if window is None or item.end <= window(record.text)}
    return sorted({v for kind, v in corpus.pii_values(split)
                   if kind not in exclude_kinds and v not in others and v in inside})


def window_chars(tokenizer, texts: list[str], max_length: int) -> Callable[[str], int]:
    """A record's text → the length of its ``max_length``-token window in characters (:func:`scored_texts`)."""
    lengths = {text: len(window) for text, window in zip(texts, scored_texts(tokenizer, texts, max_length))}
    return lengths.__getitem__


# --------------------------------------------------------------------------
# prefix attack

@dataclass
class PrefixProbe:
    """A record cut into a prompt and its true suffix (token ids, plus suffix PII values)."""

    prompt: list[int]
    suffix: list[int]
    suffix_pii: list[str]


def prefix_probes(tokenizer, records, prefix_tokens: int, suffix_tokens: int, limit: int,
                  exclude_kinds: tuple[str, ...] = ("clinician",)) -> list[PrefixProbe]:
    """Up to ``limit`` records long enough to cut into ``prefix_tokens`` + ``suffix_tokens``."""
    probes = []
    for record in records:
        ids = record_ids(tokenizer, [record.text], max_length=10_000, end=False)[0]
        if len(ids) < 1 + prefix_tokens + suffix_tokens:
            continue
        prompt, suffix = ids[: 1 + prefix_tokens], ids[1 + prefix_tokens: 1 + prefix_tokens + suffix_tokens]
        prompt_text = tokenizer.decode(prompt[1:])
        suffix_text = tokenizer.decode(suffix)
        pii = [p.value for p in record.pii
               if p.kind not in exclude_kinds and p.value in suffix_text and p.value not in prompt_text]
        probes.append(PrefixProbe(prompt, suffix, pii))
        if len(probes) == limit:
            break
    return probes


def token_match_rate(generated: list[list[int]], truth: list[list[int]]) -> float:
    """Fraction of suffix positions where the greedy token equals the true token."""
    pairs = [(g, t) for gen, true in zip(generated, truth) for g, t in zip(gen, true)]
    return float(np.mean([g == t for g, t in pairs])) if pairs else float("nan")


def exact_suffix_rate(generated: list[list[int]], truth: list[list[int]]) -> float:
    """Fraction of records whose whole suffix is reproduced token for token."""
    if not truth:
        return float("nan")
    return float(np.mean([list(g[: len(t)]) == list(t) for g, t in zip(generated, truth)]))


def targeted_pii_rate(continuations: list[str], probes: list[PrefixProbe]) -> tuple[float, int]:
    """Fraction of suffix PII values written verbatim by the continuation of their own record."""
    hits = [v in text for text, probe in zip(continuations, probes) for v in probe.suffix_pii]
    return (float(np.mean(hits)) if hits else float("nan")), len(hits)
