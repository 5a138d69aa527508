"""DPE key-dimension selection (step b; reference dimension_selection/{sample_qk,qk_2_norm_select_dim}.py): per
(layer, query head), the top-k frequency pairs by the mean over tokens of ‖(q_i, q_{i+d/2})‖ · ‖(k_i, k_{i+d/2})‖.

The reference samples pre-rope q/k. A pair's norm does not change under its rotation, so the norms are read from
the q/k that transformers hands to the attention function (a capturing attention, swapped in for the run), which
also covers architectures that normalise q/k after the projection. Query head h reads kv head h // (H / Hkv), the
ratio taken from the model — the reference hard-codes a repeat of 7 (Qwen2.5-7B's ratio; pitfall 8).
"""
from __future__ import annotations

import numpy as np

from ropeconvert.errors import InputError, SpecError

CAPTURE = "ropeconvert_dpe_capture"
_ACTIVE: list = []  # the collector the capturing attention adds to (one selection run at a time)


def _capture(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    sums = _ACTIVE[-1]
    half = sums.shape[-1]
    H, kv, Q = query.shape[1], key.shape[1], query.shape[2]
    qn = query[..., :half].float().pow(2).add(query[..., half:2 * half].float().pow(2)).sqrt()  # [B, H, Q, pairs]
    kn = key[..., :half].float().pow(2).add(key[..., half:2 * half].float().pow(2)).sqrt()
    kn = kn[:, :, -Q:].repeat_interleave(H // kv, dim=1)  # no cache: token t's query meets token t's key
    sums[module.layer_idx] += (qn * kn).sum(dim=(0, 2)).double().cpu().numpy()
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


def pair_scores(model, samples: list[list[int]], progress: bool = False) -> np.ndarray:
    """Mean ‖q_i‖·‖k_i‖ per (layer, query head, pair) over every token of `samples` (float64)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AttentionInterface

    from ropeconvert.validators.dpe_attention import native_inv_freq

    config = model.config
    pairs = native_inv_freq(config)[0].numel()
    sums = np.zeros((config.num_hidden_layers, config.num_attention_heads, pairs))
    AttentionInterface.register(CAPTURE, _capture)
    previous = config._attn_implementation
    model.set_attn_implementation(CAPTURE)
    _ACTIVE.append(sums)
    tokens = 0
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for ids in tqdm(samples, desc="dpe: q/k norms", unit="sample", disable=not progress, leave=False):
                model.model(torch.as_tensor([ids], device=device), use_cache=False)
                tokens += len(ids)
    finally:
        _ACTIVE.pop()
        model.set_attn_implementation(previous)
    if tokens == 0:
        raise InputError("key-dimension selection needs sample text", "give at least one sample")
    return sums / tokens


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """bool [layers, heads, pairs]: the k highest-scoring pairs of each (layer, head); ties go to the lower pair."""
    pairs = scores.shape[-1]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= pairs:
        raise SpecError(f"--topk must be an integer in [1, {pairs}] (the number of frequency pairs), got {k!r}",
                        f"DPE uses 3/4 of the pairs (48 of 64); e.g. --topk {3 * pairs // 4}")
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=-1)
    return mask


def sample_windows(tokenizer, text: str, samples: int, length: int) -> list[list[int]]:
    """`samples` windows of `length` tokens from a corpus, spread over its documents (the reference uses 10 essays)."""
    from ropeconvert.validators import corpus

    docs = corpus.load(text)
    out: list[list[int]] = []
    for doc in docs:
        ids = tokenizer(doc.text[:length * 8 * samples], add_special_tokens=False).input_ids
        for start in range(0, len(ids) - length + 1, length):
            out.append(list(ids[start:start + length]))
            if len(out) == samples:
                return out
    if not out:
        raise InputError(f"{text!r} has no {length}-token stretch for key-dimension selection", "pass --text FILE|DIR")
    return out


def select(model, tokenizer, topk: int, *, text: str = "austen", samples: int = 4, length: int = 2048,
           progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(selection mask, scores) for a loaded model."""
    scores = pair_scores(model, sample_windows(tokenizer, text, samples, length), progress)
    return top_k(scores, topk), scores


def selection_for(source, base, knobs: dict, progress: bool = True, device: str | None = None) -> np.ndarray:
    """The `selected` knob of `--method dpe --topk K`: every other knob is checked first (no model load for a
    typo), then the model runs on sample text once."""
    from ropeconvert.convert.methods import build_spec
    from ropeconvert.formats.source import hf_checkpoint
    from ropeconvert.validators.runtime import load

    build_spec("dpe", base, **{**knobs, "topk": None, "selected": None})
    top_k(np.zeros((1, 1, base.n_pairs)), knobs["topk"])
    if not progress:  # --quiet: transformers' own "Loading weights" bar too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    runtime = load(hf_checkpoint(source, progress), device=device, original_context=base.original_context)
    try:
        mask, _ = select(runtime.model, runtime.tokenizer, knobs["topk"], length=min(2048, base.original_context),
                         progress=progress)
    finally:
        runtime.close()
    return mask


def select_job(worker, model, topk: int, text: str, length: int, progress: bool):
    """Key-dimension selection on a worker's model: (mask, scores)."""
    rt = worker.runtime(model)
    return select(rt.model, rt.tokenizer, topk, text=text, length=length, progress=progress)

