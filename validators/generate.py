"""Shared by the retrieval tasks: greedy decoding with a KV cache (one prompt, or a left-padded batch), and sizing a
prompt to a token length."""
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


def first_line(text: str) -> str:
    """A generated answer up to the first newline after it starts (leading blank lines kept out of the test)."""
    body = text.lstrip()
    cut = body.find("\n")
    return text if cut < 0 else text[:len(text) - len(body) + cut]


def _answered(text: str) -> bool:
    return "\n" in text.lstrip()


@torch.inference_mode()
def greedy_batch(model: nn.Module, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int], pad_id: int,
                 stop: Callable[[list[int]], bool] | None = None) -> list[list[int]]:
    """Greedy continuations of several prompts in one batch: left padding, an attention mask and position ids
    counted from each row's first real token (so a padded row sees the same rope positions as alone), one prefill,
    then one token per step against the KV cache. A row ends at EOS or when `stop(its new ids)` says so; the batch
    ends when every row has. Written out rather than `generate()` so no checkpoint setting can turn sampling on."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    new: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for step in range(max_new_tokens):
        tokens = out.logits[:, -1].argmax(-1)
        for i, token in enumerate(tokens.tolist()):
            if done[i]:
                continue
            if token in eos_ids:
                done[i] = True
                continue
            new[i].append(token)
            done[i] = stop is not None and stop(new[i])
        if all(done) or step + 1 == max_new_tokens:
            break
        mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=1)
        pos = pos[:, -1:] + 1
        key = "cache" if "cache" in out else "past_key_values"  # transformers ≥ 5.24 renamed it
        out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=pos, use_cache=True,
                    **{key: out[key]})
    return new


BATCH_TOKENS = {"cuda": 65536, "cpu": 8192}  # prompt tokens per batch: bounds the prefill's activations


def complete(runtime, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers to `prompts` (text), each cut at the end of its first line (`first_line`). transformers:
    batches of prompts of similar length with left padding (a DPE/Self-Extend export one prompt at a time: its
    attention keeps its own positions); llama.cpp: one prompt at a time through the runtime's worker; a runtime with
    `complete_ids` (vLLM): every prompt in one call, its own scheduler batching them."""
    tok = runtime.tokenizer
    encoded = [list(tok(p).input_ids) for p in prompts]
    if hasattr(runtime, "complete_ids"):
        return [first_line(tok.decode(new, skip_special_tokens=True))
                for new in runtime.complete_ids(encoded, max_new_tokens)]
    answers: list[str | None] = [None] * len(prompts)
    if runtime.kind != "transformers":
        for i, ids in enumerate(encoded):
            answers[i] = first_line(tok.decode(runtime.greedy(ids, max_new_tokens), skip_special_tokens=True))
        return answers
    model = runtime.model
    one_by_one = "dpe" in model.config.to_dict()
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    budget = BATCH_TOKENS.get(runtime.device.type, BATCH_TOKENS["cpu"])
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    batch: list[int] = []

    def flush() -> None:
        outs = greedy_batch(model, [encoded[i] for i in batch], max_new_tokens, runtime.eos_ids, pad,
                            stop=lambda ids: _answered(tok.decode(ids, skip_special_tokens=True)))
        for i, new in zip(batch, outs):
            answers[i] = first_line(tok.decode(new, skip_special_tokens=True))
        batch.clear()

    for i in order:
        if batch and (one_by_one or (len(batch) + 1) * len(encoded[i]) > budget):
            flush()
        batch.append(i)
    if batch:
        flush()
    return answers
