"""Perplexity: the sliding-window protocol of the PI/YaRN evaluation code (reference/methods.md §5.2).

Per window the input is [BOS] + up to `length − 1` text tokens; only the tokens not scored by the previous window
are targets; a document's perplexity is exp(mean of the per-window mean NLLs) — not token-weighted, as in the
reference code (pitfall 12). `truncate=True` scores one window per document (the YaRN proof-pile setting).

The loss never materialises `[L, vocab]` logits: the decoder stack gives final hidden states `[L, hidden]` and the
LM head runs on `chunk` of them at a time (at 8k tokens the full logits alone are 1.6 GB in f32 for a 49k vocab).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from ropeconvert.errors import InputError

HEAD_CHUNK_ELEMENTS = 1 << 25  # logits per head chunk (128 MB in f32), whatever the vocabulary size


def hidden_states(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Final (normed) hidden states `[batch, L, hidden]` of the decoder stack, without the LM head."""
    out = model.base_model(input_ids=input_ids, use_cache=False)
    return out.last_hidden_state


@torch.inference_mode()
def nll_from_hidden(model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int | None = None,
                    want_top1: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token NLL (float32) of `targets` [n] given `hidden` [n, hidden], the head run `chunk` rows at a time.

    Also returns the head's top-1 token per row when asked (parity uses it)."""
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0]
    chunk = max(1, min(chunk or HEAD_CHUNK_ELEMENTS // vocab, targets.shape[0]))
    nll = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
    top1 = torch.empty(targets.shape[0], dtype=torch.long, device=hidden.device) if want_top1 else None
    logits_of = _head_into_buffer(head, chunk, hidden.device)
    for start in range(0, targets.shape[0], chunk):
        stop = start + chunk
        logits = logits_of(hidden[start:stop])
        if want_top1:
            top1[start:stop] = logits.argmax(-1)
        target_logit = logits.gather(1, targets[start:stop, None])[:, 0]  # before the in-place logsumexp
        nll[start:stop] = _logsumexp_(logits) - target_logit
    return nll, top1


def _head_into_buffer(head: nn.Module, chunk: int, device) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden rows → their f32 logits, written into one buffer reused for every chunk. A fresh 128 MB tensor per
    chunk is a fresh mmap whose pages the kernel faults in and zeroes each time: ~0.5 s of an 8k-token CPU run
    (the bare forward pays that once for its whole [L, vocab]). Heads that are not a plain Linear are called."""
    if type(head) is not nn.Linear:
        return lambda rows: head(rows).float()
    weight, bias = head.weight, head.bias
    buf = torch.empty(chunk, weight.shape[0], dtype=weight.dtype, device=device)
    buf32 = buf if weight.dtype == torch.float32 else torch.empty(chunk, weight.shape[0], dtype=torch.float32,
                                                                   device=device)

    def logits_of(rows: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(rows, weight.t(), out=buf[:rows.shape[0]])
        if bias is not None:
            out += bias
        return out if buf32 is buf else buf32[:rows.shape[0]].copy_(out)  # the loss is taken in f32 even in bf16

    return logits_of


def _logsumexp_(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise logsumexp that overwrites `logits` (a fresh head output) instead of allocating a log-softmax the
    size of the chunk as `F.cross_entropy` does: one buffer per chunk, and the exp runs in place. The caller
    must read anything else it needs from `logits` before."""
    row_max = logits.amax(-1, keepdim=True)
    return logits.sub_(row_max).exp_().sum(-1).log_().add_(row_max[:, 0])


@torch.inference_mode()
def token_nll(model: nn.Module, input_ids: list[int] | torch.Tensor, n_targets: int | None = None,
              chunk: int | None = None, want_top1: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """NLL of the last `n_targets` tokens of one sequence (default all but the first), each predicted from the
    tokens before it. The primitive every task and the LongRoPE(2) fitness build on (mask the result for
    needle-only loss)."""
    device = next(model.parameters()).device
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=device).reshape(1, -1)
    n = ids.shape[1]
    n_targets = n - 1 if n_targets is None else min(n_targets, n - 1)
    if n_targets < 1:
        raise InputError("a sequence needs at least two tokens to score")
    hidden = hidden_states(model, ids)[0]
    nll, top1 = nll_from_hidden(model, hidden[n - 1 - n_targets:n - 1], ids[0, n - n_targets:], chunk, want_top1)
    return nll.double().cpu().numpy(), None if top1 is None else top1.cpu().numpy()


def _scorer(model) -> Callable[[list[int], int, int | None], np.ndarray]:
    """Per-token NLL of a window: from a transformers model, or from any object with `token_nll(ids, n_targets)`
    (the llama.cpp runtime), so the same protocol code scores both runtimes."""
    if isinstance(model, nn.Module):
        return lambda ids, n, chunk: token_nll(model, ids, n_targets=n, chunk=chunk)[0]
    return lambda ids, n, chunk: model.token_nll(ids, n)


def windows(seq_len: int, length: int, stride: int, add_bos: bool, truncate: bool,
            max_windows: int | None = None) -> list[tuple[int, int, int]]:
    """(begin, end, n_targets) of each window, exactly the loop of the reference code."""
    max_tok = length - 1 if add_bos else length
    if truncate:
        seq_len, stride = min(seq_len, max_tok), max_tok
    out, prev_end = [], 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_tok, seq_len)
        out.append((begin, end, end - prev_end))
        prev_end = end
        if end == seq_len or (max_windows and len(out) >= max_windows):
            break
    return out


def document_ppl(model, ids: list[int], length: int, *, bos_id: int | None, stride: int = 256,
                 truncate: bool = True, max_windows: int | None = None, chunk: int | None = None,
                 progress=None) -> float:
    """One document's perplexity at window `length` (exp of the mean of window-mean NLLs)."""
    add_bos = bos_id is not None
    score = _scorer(model)
    window_means = []
    for begin, end, trg in windows(len(ids), length, stride, add_bos, truncate, max_windows):
        window = ([bos_id] if add_bos else []) + list(ids[begin:end])
        nll = score(window, trg, chunk)
        window_means.append(float(nll.mean()))
        if progress is not None:
            progress.update(1)
    return math.exp(float(np.mean(window_means)))


@dataclass
class PplResult:
    lengths: list[int]
    mean: list[float | None]  # mean over the documents long enough for that length
    per_document: dict[str, list[float | None]] = field(default_factory=dict)


def sweep(model, documents: dict[str, list[int]], lengths: list[int], *, bos_id: int | None,
          stride: int = 256, truncate: bool = True, max_windows: int | None = 10, chunk: int | None = None,
          progress: bool = True, label: str = "ppl") -> PplResult:
    """Perplexity of every document at every length. A document shorter than a window is skipped at that length
    (None) rather than scored at a shorter length than asked — as the papers' minimum-token filter does."""
    from tqdm.auto import tqdm

    need = {L: (L - 1 if bos_id is not None else L) for L in lengths}
    plan = [(L, name) for L in lengths for name, ids in documents.items() if len(ids) >= need[L]]
    total = sum(len(windows(len(documents[n]), L, stride, bos_id is not None, truncate, max_windows)) for L, n in plan)
    result = PplResult(list(lengths), [], {name: [None] * len(lengths) for name in documents})
    with tqdm(total=total, desc=label, unit="window", disable=not progress, leave=False) as bar:
        for L, name in plan:
            bar.set_postfix_str(f"{name} @ {L}")
            ppl = document_ppl(model, documents[name], L, bos_id=bos_id, stride=stride, truncate=truncate,
                               max_windows=max_windows, chunk=chunk, progress=bar)
            result.per_document[name][lengths.index(L)] = ppl
    for i in range(len(lengths)):
        values = [v[i] for v in result.per_document.values() if v[i] is not None]
        result.mean.append(float(np.mean(values)) if values else None)
    return result


def tokens_needed(lengths: list[int], stride: int, truncate: bool, max_windows: int | None) -> int:
    """How many tokens of a document the sweep can use: lets callers tokenise only a prefix of a long book."""
    longest = max(lengths)
    if truncate or not max_windows:
        return longest if truncate else 1 << 62
    return longest + stride * (max_windows - 1)
