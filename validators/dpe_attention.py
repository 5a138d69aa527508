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

import math

import numpy as np
import torch

from ropeconvert.errors import InputError, UnsupportedError

SCORE_BUDGET = 64 << 20  # bytes of float32 scores per query chunk
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
    from ropeconvert.validators.dpe_register import ATTN_NAME, register as ensure_registered

    ensure_registered()
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


def _by_group(a: torch.Tensor, b: torch.Tensor, heads: int) -> torch.Tensor:
    """a [B, H, n, X] @ b [B, Hkv, X, m] with query heads grouped over their kv head (no repeat_kv copy)."""
    B, _, n, X = a.shape
    kv = b.shape[1]
    return (a.reshape(B, kv, (heads // kv) * n, X) @ b).reshape(B, heads, n, -1)


def dpe_attention(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0,
                  position_ids=None, **kwargs):
    """The attention function transformers calls: q [B, H, Q, D], k/v [B, Hkv, K, D] → ([B, Q, H, D], None)."""
    B, H, Q, D = query.shape
    K = key.shape[2]
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
    W = plan.window if not plan.local_only else math.inf
    if not plan.local_only:
        t = plan.table.ensure(int(qpos.max()) + 1)
        g = plan.gidx[None, :, None, :]  # [1, H, 1, pairs]
        pair = torch.arange(g.shape[-1], device=dev)
        at_k = (g, kpos[:, None, :, None], pair)
        k_all = key[:, :, None].expand(B, key.shape[1], H // key.shape[1], K, D).reshape(B, H, K, D)
        k_grouped = _rotate(k_all, t.ck[at_k], t.sk[at_k], plan.rotary_dim).to(query.dtype)
    chunk = max(1, min(Q, SCORE_BUDGET // max(1, 4 * B * H * K)))
    out = torch.empty(B, Q, H, D, dtype=query.dtype, device=dev)
    for t0 in range(0, Q, chunk):
        t1 = min(Q, t0 + chunk)
        q = query[:, :, t0:t1]
        slots = torch.arange(K - Q + t0, K - Q + t1, device=dev)
        hi = K - Q + t1  # keys past the chunk's last slot are in its future
        lo = 0 if plan.local_only else max(0, K - Q + t0 - plan.window + 1)
        local = _by_group(q, key[:, :, lo:hi].transpose(-1, -2), H).float() * scaling
        dist = slots[:, None] - torch.arange(lo, hi, device=dev)[None]  # [n, hi - lo]
        if plan.local_only or hi - plan.window <= 0:  # no key of this chunk is W or more away (and lo = 0)
            scores = local
        else:
            at_q = (g, qpos[:, None, t0:t1, None], pair)
            q_grouped = _rotate(q, t.cq[at_q], t.sq[at_q], plan.rotary_dim).to(query.dtype)
            ghi = hi - plan.window  # only keys at distance ≥ W use grouped positions
            scores = local.new_full((B, H, t1 - t0, hi), -math.inf)
            scores[..., :ghi] = (q_grouped @ k_grouped[:, :, :ghi].transpose(-1, -2)).float() * scaling
            scores[..., lo:] = torch.where(dist < W, local, scores[..., lo:])
        scores[..., lo:] = scores[..., lo:].masked_fill(dist < 0, -math.inf)
        if keep is not None:
            scores = scores.masked_fill(~keep[:, None, None, :hi], -math.inf)
        probs = torch.softmax(scores, dim=-1).nan_to_num_(0.0)  # a fully padded row attends to nothing
        if dropout and module.training:
            probs = torch.nn.functional.dropout(probs, p=dropout)
        out[:, t0:t1] = _by_group(probs.to(value.dtype), value[:, :, :hi], H).transpose(1, 2)
    return out, None
