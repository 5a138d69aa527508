"""Exact DPE / Self-Extend attention for stock transformers, registered as an attention implementation.

transformers rotates q and k with the model's native rope *before* the attention function runs, and the KV cache
holds keys rotated at their true positions. Rotations compose, so instead of un-rotating and re-rotating, the
grouped branch turns a natively rotated vector at position p into one rotated at the mapped position P by one more
rotation of angle θ_i·P − θ_i·p. Both angles are computed in float32 exactly as transformers computes θ_i·p (so the
native rotation cancels to rounding) and their difference in float64. The local branch uses q and k as they
arrive. Per query head and pair, the map gives a scale g (1 for unselected pairs, whose positions stay exact:
⌊p/1⌋ + W − W/1 = p), and the angle tables for each distinct g are shared by all layers and grown as positions
grow, so decoding a token costs a gather, not fresh sin/cos over the whole cache.

Queries are processed in chunks sized so one chunk's scores stay under SCORE_BUDGET bytes: memory is O(L·chunk),
never O(L²). In a chunk the scores against keys at distance ≥ W come from the grouped branch, the others from the
local branch, merged per element before one softmax — the eager form of Self-Extend, identical to the two
flash-attention calls merged by log-sum-exp that the reference code uses.

Key positions: slot j of the cache holds position j − offset, with the per-row offset read from position_ids
(0 unless rows are left-padded); padding comes in as the 2D mask (the mask policy registered with the attention).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ropeconvert.errors import InputError, UnsupportedError

CHUNK = 512  # queries per chunk on the fused CPU kernel (its masks are chunk × (W + chunk))
SCORE_BUDGET = 64 << 20  # bytes of float32 scores per query chunk on the eager path (CUDA)
USE_FUSED = True  # tests switch it off to check the eager path against the same reference
_MAP_ATTR, _PLAN_ATTR = "_ropeconvert_position_map", "_ropeconvert_dpe_plan"
_TABLES: dict[tuple, "_AngleTable"] = {}


def register(name: str) -> None:
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(name, dpe_attention)
    # no [L, L] mask is ever built: only the 2D padding mask (or None) comes through, as for flash attention
    AttentionMaskInterface.register(name, flash_attention_mask)


# ---- the map and the native rope of a layer -----------------------------------------------------------------------
def load_position_map(config):
    """The map of a model loaded from an export: config.json `dpe` + the index-map file beside it (local directory
    or, for a Hub id, the same repository through the huggingface_hub cache)."""
    from pathlib import Path

    from ropeconvert.formats.dpe_format import CONFIG_KEY, position_map_from_hf

    block = getattr(config, CONFIG_KEY, None)
    if block is None:
        raise UnsupportedError("this model's config.json has no `dpe` block, so the DPE attention has no map",
                               "load an export written with --method dpe or selfextend, or attach() a map")
    where = str(getattr(config, "_name_or_path", "") or "")

    def read(name: str) -> bytes:
        if Path(where, name).is_file():
            return Path(where, name).read_bytes()
        if Path(where).is_dir() or not where:
            raise InputError(f"{where or 'the model directory'} lacks {name}, the index map its config.json names",
                             "copy the whole export directory")
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(where, name)).read_bytes()

    return position_map_from_hf(block, read)


def native_inv_freq(config) -> tuple[torch.Tensor, int]:
    """(inv_freq float32 [pairs], rotary_dim) exactly as the model's own rotary module computes them."""
    import importlib

    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kind = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if kind in ("dynamic", "longrope"):
        raise UnsupportedError(f"the native rope is {kind!r}, whose frequencies change with the length",
                               "apply DPE to a model with a static rope")
    module = importlib.import_module(type(config).__module__.replace("configuration_", "modeling_"))
    own = type(config).__name__.removesuffix("Config") + "RotaryEmbedding"  # e.g. LlamaConfig → LlamaRotaryEmbedding
    names = [own] + sorted(n for n in dir(module) if n.endswith("RotaryEmbedding"))
    rotary = next((getattr(module, n) for n in names if hasattr(module, n)), None)
    if rotary is None:
        raise UnsupportedError(f"{type(config).__name__} has no rotary embedding class", "use a Llama-family model")
    inv = rotary(config=config).inv_freq.detach().to("cpu", torch.float32)
    return inv, 2 * inv.numel()


class _AngleTable:
    """cos/sin of θ_i·P(p) − θ_i·p for each distinct g, positions 0..n−1: P = ⌊p/g⌋ + W − W/g for queries,
    ⌊p/g⌋ for keys. [n_g, n, pairs] float32 each, grown on demand."""

    def __init__(self, scales: tuple[float, ...], window: int, inv32: torch.Tensor, device: torch.device):
        self.scales, self.window, self.inv32, self.device, self.n = scales, window, inv32, device, 0

    def ensure(self, n: int) -> "_AngleTable":
        if n <= self.n:
            return self
        n = max(n, 2 * self.n, 1024)
        p = torch.arange(n, dtype=torch.float64)
        native = p.float()[:, None] * self.inv32  # transformers' angle, bit for bit
        qs, ks = [], []
        for g in self.scales:
            grouped = torch.floor(p / g)
            for out, pos in ((qs, grouped + self.window - self.window / g), (ks, grouped)):
                delta = (pos.float()[:, None] * self.inv32).double() - native.double()
                out.append(delta)
        dq, dk = torch.stack(qs), torch.stack(ks)
        self.cq, self.sq = dq.cos().float().to(self.device), dq.sin().float().to(self.device)
        self.ck, self.sk = dk.cos().float().to(self.device), dk.sin().float().to(self.device)
        self.n = n
        return self


class _Plan:
    """What one attention layer needs: W, the distinct scales, each (head, pair)'s scale index, the angle table."""

    def __init__(self, module, pm, device: torch.device):
        config = module.config
        inv32, rotary_dim = native_inv_freq(config)
        layers, heads = int(config.num_hidden_layers), int(config.num_attention_heads)
        table = pm.scale_table(layers, heads)[module.layer_idx]  # [heads, pairs], float64
        if table.shape[1] != inv32.numel():
            raise InputError(f"the map covers {table.shape[1]} pairs but the model's rope has {inv32.numel()}")
        scales = tuple(sorted(set(table.ravel().tolist()) | {1.0}))
        self.window, self.rotary_dim, self.device = pm.window, rotary_dim, device
        self.local_only = scales == (1.0,)  # nothing rescaled in this layer: plain causal attention
        self.gidx = torch.as_tensor(np.searchsorted(scales, table), dtype=torch.long, device=device)
        key = (str(device), pm.window, scales, inv32.numpy().tobytes())
        self.table = _TABLES.setdefault(key, _AngleTable(scales, pm.window, inv32, device))
        self.source = pm


def _plan(module, device: torch.device) -> _Plan:
    pm = getattr(module, _MAP_ATTR, None)
    if pm is None:
        pm = load_position_map(module.config)
        setattr(module, _MAP_ATTR, pm)
    plan = getattr(module, _PLAN_ATTR, None)
    if plan is None or plan.device != device or plan.source is not pm:
        plan = _Plan(module, pm, device)
        setattr(module, _PLAN_ATTR, plan)
    return plan


def attach(model, position_map) -> None:
    """Run `model` (already loaded) with `position_map` under the DPE attention — what the search uses to try a
    map without writing an export. `detach` restores the previous attention."""
    # the name comes from dpe_format, not dpe_register: dpe_register imports this module (no import back)
    from ropeconvert.formats.dpe_format import ATTN_NAME

    register(ATTN_NAME)  # idempotent: the same function under the same name
    for module in _attention_modules(model):
        setattr(module, _MAP_ATTR, position_map)
        if hasattr(module, _PLAN_ATTR):
            delattr(module, _PLAN_ATTR)
    if model.config._attn_implementation != ATTN_NAME:
        model._ropeconvert_previous_attn = model.config._attn_implementation
        model.set_attn_implementation(ATTN_NAME)


def detach(model) -> None:
    previous = getattr(model, "_ropeconvert_previous_attn", None)
    if previous is not None:
        model.set_attn_implementation(previous)
        del model._ropeconvert_previous_attn


def _attention_modules(model):
    found = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "q_proj")]
    if not found:
        raise UnsupportedError(f"{type(model).__name__} has no attention layers DPE knows", "use a Llama-family model")
    return found


# ---- the attention ------------------------------------------------------------------------------------------------
def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """Rotate each rotate-half pair (x[i], x[i + d/2]) of x [..., D] by the angle whose cos/sin are [..., pairs]."""
    half = rotary_dim // 2
    x = x.float()
    x1, x2 = x[..., :half], x[..., half:rotary_dim]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., rotary_dim:]), dim=-1)


def _fused_ok(q: torch.Tensor) -> bool:
    return USE_FUSED and q.device.type == "cpu" and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")


@functools.lru_cache(maxsize=32)
def _mask(kind: str, n: int, off: int, m: int, window: int, device: torch.device, dtype: torch.dtype):
    """Which of m keys the n queries of a chunk may see, (allowed bool, additive bias, dead rows): query i and key
    column c are off + i − c apart; "mid" keeps distances ≥ W (grouped), "band" 0 ≤ distance < W (exact). Chunks
    repeat the same geometry, so this is built once and shared by every layer."""
    dist = off + torch.arange(n, device=device)[:, None] - torch.arange(m, device=device)[None]
    ok = dist >= window if kind == "mid" else (dist >= 0) & (dist < window)
    return ok, torch.where(ok, 0.0, -math.inf).to(dtype), ~ok.any(-1)


def _part(q, k, v, mask, keep, scale):
    """softmax(q·kᵀ·scale) · v over the allowed keys, and its log-sum-exp per query: (out [B, H, n, D],
    lse [B, H, n]). `mask` is a _mask() triple (None: all keys) and `keep` [B, m] the key padding (None: none).

    On CPU torch's fused flash kernel returns both without materialising the scores; elsewhere (CUDA, or if the
    kernel refuses) the scores of one part are materialised, which the chunking keeps at O(chunk · L)."""
    bias = dead = None
    if mask is not None:
        _, bias, dead = mask
    if keep is not None:  # padding: combine per row of the batch (rare: not cached)
        ok = keep[:, None, None, :] & (mask[0] if mask is not None else True)
        bias, dead = torch.where(ok, 0.0, -math.inf).to(q.dtype), ~ok.any(-1)
    if _fused_ok(q):
        try:
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False,
                                                                              attn_mask=bias, scale=scale)
            if dead is not None:  # the kernel reports a query with no allowed key as lse 0, out 0: make it −inf
                lse = lse.float().masked_fill(dead, -math.inf)
            return out.float(), lse.float()
        except RuntimeError:  # an unsupported dtype or layout: the eager form below gives the same result
            pass
    scores = (q @ k.transpose(-1, -2)).float() * scale
    if bias is not None:
        scores = scores + bias
    lse = torch.logsumexp(scores, dim=-1)
    return torch.exp(scores - lse[..., None]).nan_to_num_(0.0) @ v.float(), lse


def _merge(parts):
    """One softmax over the union of the parts' keys, from their outputs and log-sum-exps."""
    if len(parts) == 1:
        return parts[0][0]
    lse = torch.stack([p[1] for p in parts])
    weight = torch.exp(lse - lse.amax(0)).nan_to_num_(0.0)  # a part with no key for a query weighs 0
    weight = weight / weight.sum(0).clamp_min(1e-30)
    out = parts[0][0] * weight[0][..., None]
    for w, (o, _) in zip(weight[1:], parts[1:]):
        out.addcmul_(o, w[..., None])
    return out


def dpe_attention(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0,
                  position_ids=None, **kwargs):
    """The attention function transformers calls: q [B, H, Q, D], k/v [B, Hkv, K, D] → ([B, Q, H, D], None).

    Per chunk of queries at slots [s0, s1) the keys split into three parts whose softmaxes are merged by
    log-sum-exp: [0, s0−W+1) — grouped positions for every query of the chunk (no mask); [s0−W+1, s1−W) — grouped
    where the distance is ≥ W (a triangle mask); [s0−W+1, s1) — exact positions where 0 ≤ distance < W."""
    if dropout and module.training:
        raise UnsupportedError("the DPE attention is for inference: it has no attention dropout", "call model.eval()")
    B, H, Q, D = query.shape
    K, kv = key.shape[2], key.shape[1]
    plan = _plan(module, query.device)
    scaling = D ** -0.5 if scaling is None else scaling
    dev = query.device
    if position_ids is None:
        position_ids = torch.arange(K - Q, K, device=dev)[None]
    given = position_ids.to(dev).long()
    offset = (K - 1) - given[:, -1:]  # [B', 1]: cache slot minus position, from the last (never padded) query
    slot_pos = torch.arange(K, device=dev)[None] - offset  # [B', K]: position of every slot (< 0: left padding)
    kpos, qpos = slot_pos.clamp(min=0), slot_pos[:, K - Q:].clamp(min=0)
    keep = None if attention_mask is None else attention_mask[:, -K:].to(dev, torch.bool)  # [B, K]
    real = slot_pos[:, K - Q:] >= 0 if keep is None else keep[:, K - Q:] & (slot_pos[:, K - Q:] >= 0)
    if given.shape[-1] != Q or bool(((given != qpos) & real).any()):
        raise UnsupportedError("DPE attention needs each sequence's positions to count up with its cache slots",
                               "no packed sequences; left padding is fine")
    if keep is not None and bool(keep.all()):
        keep = None
    W = K + 1 if plan.local_only else plan.window  # nothing rescaled in this layer: every key is "local"
    # GQA: the grouped keys depend on the query head (its own selection), so everything is per query head
    rep = lambda x: x[:, :, None].expand(B, kv, H // kv, K, D).reshape(B, H, K, D)  # noqa: E731
    k_local, v_all = rep(key), rep(value)
    if not plan.local_only:
        t = plan.table.ensure(int(qpos.max()) + 1)
        g, pair = plan.gidx[None, :, None, :], torch.arange(plan.gidx.shape[-1], device=dev)
        at_k = (g, kpos[:, None, :, None], pair)
        k_grouped = _rotate(k_local, t.ck[at_k], t.sk[at_k], plan.rotary_dim).to(query.dtype)
    pad = lambda lo, hi: None if keep is None else keep[:, lo:hi]  # noqa: E731
    if K - W > 0:  # some key is W or more away from some query: the queries at their grouped positions
        at_q = (g, qpos[:, None, :, None], pair)
        q_grouped_all = _rotate(query, t.cq[at_q], t.sq[at_q], plan.rotary_dim).to(query.dtype)
    chunk = min(Q, CHUNK) if _fused_ok(query) else max(1, min(Q, SCORE_BUDGET // max(1, 4 * B * H * K)))
    out = torch.empty(B, Q, H, D, dtype=query.dtype, device=dev)
    for t0 in range(0, Q, chunk):
        t1 = min(Q, t0 + chunk)
        n, s0, s1 = t1 - t0, K - Q + t0, K - Q + t1
        a, ghi = max(0, s0 - W + 1), max(0, s1 - W)  # grouped for all queries below a; for some below ghi
        parts = []
        if ghi > 0:
            q_grouped = q_grouped_all[:, :, t0:t1]
            if a > 0:
                parts.append(_part(q_grouped, k_grouped[:, :, :a], v_all[:, :, :a], None, pad(0, a), scaling))
            if ghi > a:
                mid = _mask("mid", n, s0 - a, ghi - a, W, dev, query.dtype)
                parts.append(_part(q_grouped, k_grouped[:, :, a:ghi], v_all[:, :, a:ghi], mid, pad(a, ghi), scaling))
        band = None if n == 1 else _mask("band", n, s0 - a, s1 - a, W, dev, query.dtype)  # 1 query: all local
        parts.append(_part(query[:, :, t0:t1], k_local[:, :, a:s1], v_all[:, :, a:s1], band, pad(a, s1), scaling))
        out[:, t0:t1] = _merge(parts).transpose(1, 2).to(out.dtype)
    return out, None
