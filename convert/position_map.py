"""DPE's "index map" (reference/methods.md §3.2): a dimension-grouped Self-Extend, as one frozen value.

Attention between a query at position p and a key at position k, for frequency pair i of head h in layer l:
- distance p − k < W (the local window): the exact positions p and k, in every pair;
- distance ≥ W: the query sits at ⌊p/g⌋ + W − W/g and the key at ⌊k/g⌋, where g is the scale of the group
  that pair i belongs to — but only for the pairs selected for (l, h); the others keep p and k.
The relative position a pair then sees past the window is about W + (p−k−W)/g, so a group's "effective length" at
a target N is W + (N−W)/g. Self-Extend (§4.1) is the same map with one group and every pair selected.

Groups are contiguous ranges of frequency-pair indices (HF rotate-half pair i is (x[i], x[i + d/2])), given by
their boundaries 0 = b_0 < b_1 < … < b_G = d/2. The selection is a bool mask [layers, heads, pairs] over query
heads (DPE selects per query head, GQA or not); None means every pair everywhere (Self-Extend). It is stored as
bytes so the value stays hashable and comparable like the rest of RopeSpec.

W − W/g is the float quotient of DPE's and Self-Extend's prefill code. Their decode paths use W − W//g; the two
agree whenever g divides W (every published configuration), and this map uses the float form everywhere so that
prefill and decoding compute the same attention.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ropeconvert.errors import SpecError


@dataclass(frozen=True)
class PositionMap:
    window: int  # W: distances below it keep exact positions
    boundaries: tuple[int, ...]  # group edges over pair indices, 0 … n_pairs
    scales: tuple[float, ...]  # g per group, ≥ 1 (1 = that group keeps its positions)
    original_context: int  # the model's trained length: W must lie inside it
    shape: tuple[int, int, int] | None = None  # (layers, heads, pairs) of the selection; None = all selected
    selected_bytes: bytes | None = None  # uint8 0/1, C order, `shape`

    def __post_init__(self):
        if isinstance(self.window, bool) or not isinstance(self.window, (int, np.integer)) or self.window < 1:
            raise SpecError(f"window must be an integer ≥ 1, got {self.window!r}")
        if self.window >= self.original_context:
            raise SpecError(f"window {self.window} must be smaller than the original context {self.original_context}",
                            "the local window holds exact positions the model was trained on: "
                            f"pick --window below {self.original_context} (DPE uses 1024 for 8k models)")
        object.__setattr__(self, "window", int(self.window))
        b = tuple(int(x) for x in self.boundaries)
        if len(b) < 2 or b[0] != 0 or any(y <= x for x, y in zip(b, b[1:])):
            raise SpecError(f"group boundaries must rise strictly from 0 to the number of pairs, got {list(b)}",
                            "e.g. 0,8,16,24,32 for four groups of a 64-dim head")
        object.__setattr__(self, "boundaries", b)
        scales = tuple(_scale(i, s) for i, s in enumerate(self.scales))
        if len(scales) != len(b) - 1:
            raise SpecError(f"{len(scales)} scales for {len(b) - 1} dimension groups", "give one scale per group")
        object.__setattr__(self, "scales", scales)
        if (self.shape is None) != (self.selected_bytes is None):
            raise SpecError("a selection needs both its shape and its mask")
        if self.shape is not None:
            shape = tuple(int(x) for x in self.shape)
            if len(shape) != 3 or min(shape) < 1 or shape[2] != self.n_pairs:
                raise SpecError(f"selection mask has shape {list(shape)}, expected [layers, heads, {self.n_pairs}] "
                                f"(one entry per frequency pair)", "rebuild the map for this model")
            if len(self.selected_bytes) != math.prod(shape):
                raise SpecError(f"selection mask holds {len(self.selected_bytes)} entries, its shape {list(shape)} "
                                f"needs {math.prod(shape)}")
            if set(self.selected_bytes) - {0, 1}:
                raise SpecError("selection mask entries must be 0 or 1")
            object.__setattr__(self, "shape", shape)

    # ---- construction ---------------------------------------------------------------------------------------
    @classmethod
    def build(cls, *, window: int, boundaries: Sequence[int], scales: Sequence[float], original_context: int,
              selected: np.ndarray | None = None) -> "PositionMap":
        if selected is None:
            return cls(window, tuple(boundaries), tuple(scales), original_context)
        mask = np.asarray(selected)
        if mask.ndim != 3:
            raise SpecError(f"selection mask has shape {list(mask.shape)}, expected [layers, heads, pairs]")
        return cls(window, tuple(boundaries), tuple(scales), original_context, tuple(mask.shape),
                   np.ascontiguousarray(mask.astype(bool), dtype=np.uint8).tobytes())

    # ---- derived --------------------------------------------------------------------------------------------
    @property
    def n_pairs(self) -> int:
        return self.boundaries[-1]

    @property
    def n_groups(self) -> int:
        return len(self.scales)

    @property
    def selected(self) -> np.ndarray | None:
        """bool [layers, heads, pairs] (read-only), or None when every pair is selected."""
        if self.shape is None:
            return None
        return np.frombuffer(self.selected_bytes, dtype=np.uint8).reshape(self.shape).astype(bool)

    def pair_scales(self) -> np.ndarray:
        """g of each pair's group, [pairs]."""
        return np.repeat(np.asarray(self.scales), np.diff(self.boundaries))

    def scale_table(self, layers: int, heads: int) -> np.ndarray:
        """The scale each (layer, query head, pair) uses past the window: its group's g if selected, else 1."""
        self.check_model(layers, heads, self.n_pairs)
        g = np.broadcast_to(self.pair_scales(), (layers, heads, self.n_pairs))
        sel = self.selected
        return np.array(g if sel is None else np.where(sel, g, 1.0), dtype=np.float64)

    def check_model(self, layers: int, heads: int, pairs: int) -> None:
        """Refuse a map made for another model shape (wrong layer/head/pair counts)."""
        if pairs != self.n_pairs:
            raise SpecError(f"the map covers {self.n_pairs} frequency pairs but the model has {pairs}",
                            "rebuild the map for this model")
        if self.shape is not None and self.shape[:2] != (layers, heads):
            raise SpecError(f"selection mask has shape {list(self.shape)} but the model has {layers} layers × "
                            f"{heads} attention heads × {pairs} pairs", "rebuild the map for this model")

    def effective_lengths(self, target: int) -> list[float]:
        """W + (N−W)/g per group: the largest relative position a group's selected pairs see at length N."""
        return [self.window + (target - self.window) / g for g in self.scales]

    # ---- serialisation --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"window": self.window, "boundaries": list(self.boundaries),
                               "scales": list(self.scales), "original_context": self.original_context,
                               "shape": None, "selected": None}
        if self.shape is not None:
            # one hex bitmask per (layer, head), bit i = pair i: compact and readable in ropeconvert.json / GGUF
            sel = self.selected.reshape(-1, self.n_pairs)
            weights = 1 << np.arange(self.n_pairs, dtype=object)
            out["shape"] = list(self.shape)
            out["selected"] = [format(int((row.astype(object) * weights).sum()), "x") for row in sel]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PositionMap":
        try:
            window, boundaries, scales = data["window"], data["boundaries"], data["scales"]
            original = data["original_context"]
        except (KeyError, TypeError) as e:
            raise SpecError(f"position map lacks {e}", "rebuild it with ropeconvert") from None
        shape, rows = data.get("shape"), data.get("selected")
        if rows is None:
            return cls(window, tuple(boundaries), tuple(scales), original)
        pairs = boundaries[-1]
        try:
            mask = np.array([[(int(r, 16) >> i) & 1 for i in range(pairs)] for r in rows], dtype=np.uint8)
        except (TypeError, ValueError):
            raise SpecError("position map: selection rows must be hex bitmasks") from None
        if not isinstance(shape, (list, tuple)) or len(shape) != 3 or len(rows) != math.prod(shape[:2]):
            raise SpecError(f"position map: {len(rows)} selection rows do not match its shape {shape}")
        return cls(window, tuple(boundaries), tuple(scales), original, tuple(shape), mask.tobytes())


def even_boundaries(n_pairs: int, groups: int) -> tuple[int, ...]:
    """DPE's partition: `groups` contiguous groups of equal size (the paper uses eight)."""
    if isinstance(groups, bool) or not isinstance(groups, int) or not 1 <= groups <= n_pairs or n_pairs % groups:
        raise SpecError(f"groups must divide the {n_pairs} frequency pairs evenly, got {groups!r}",
                        f"pick a divisor of {n_pairs}, e.g. {_divisor_hint(n_pairs)}")
    return tuple(range(0, n_pairs + 1, n_pairs // groups))


def _divisor_hint(n: int) -> str:
    return ", ".join(str(d) for d in (1, 2, 4, 8, 16) if n % d == 0)


def _scale(index: int, value: Any) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 1:
        raise SpecError(f"scales[{index}] = {value!r}: a group scale must be a finite number ≥ 1",
                        "g = 1 keeps a group's positions; g > 1 divides its relative positions past the window")
    return float(value)
