"""Shared by the retrieval tasks: greedy decoding with a KV cache, and sizing a prompt to a token length."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


@torch.inference_mode()
def greedy(model: nn.Module, input_ids: list[int], max_new_tokens: int, eos_ids: set[int] = frozenset()) -> list[int]:
    """Greedy continuation of `input_ids`: one prefill (logits for the last position only), then one token at a
    time against the KV cache. Written out rather than `generate()` so a checkpoint's generation_config cannot
    turn sampling on (pitfall 13: the protocols are greedy)."""
    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], dtype=torch.long, device=device)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    new: list[int] = []
    for step in range(max_new_tokens):
        token = int(out.logits[0, -1].argmax())
        if token in eos_ids:
            break
        new.append(token)
        if step + 1 == max_new_tokens:
            break
        nxt = torch.tensor([[token]], dtype=torch.long, device=device)
        key = "cache" if "cache" in out else "past_key_values"  # transformers ≥ 5.24 renamed it (and warns on the old)
        out = model(input_ids=nxt, use_cache=True, **{key: out[key]})
    return new


def fit_to_tokens(build: Callable[[int], str], count: Callable[[str], int], target: int, hi: int) -> int:
    """Smallest n in [0, hi] with count(build(n)) ≥ target, by bisection (token counts grow with n).

    The reference generators step n by 128 characters until the prompt reaches the target; bisection finds the same
    boundary with ~20 tokenisations instead of thousands. Returns hi when even hi is too short."""
    lo = 0
    if count(build(hi)) < target:
        return hi
    while lo < hi:
        mid = (lo + hi) // 2
        if count(build(mid)) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo
