"""Published per-pair factors, matched to a model by what its config says (never by its name).

`--method longrope` without `--factors` first looks here: a model whose config has every identity value of an
entry, and the entry's trained length, gets that entry's factors for that entry's target. Every entry records where
its numbers come from; the files in convert/factor_catalog/ are read through the same parser as a user's
`--factors` file (convert/factor_files.py), so a catalog entry is exactly what passing that file would give.

What the entries are (and are not):
- LongRoPE (Ding et al. 2024) released, for LLaMA-2-7B and Mistral-7B-v0.1, the factors it searched at 128k and
  256k and used to initialise long-context fine-tuning (`script/longrope_scale/ft_*`). On the base model without
  that fine-tuning they are the paper's starting point, not a fine-tuned model: the paper reports good results
  without fine-tuning up to 8× only. LongRoPE treated Mistral-7B-v0.1 as a 4k model (its scripts pass
  `original_max_position_embeddings=4096`, its sliding window), although its config says 32768.
- Phi-3.5-mini-instruct's own long/short factors (4k → 128k), which that model was trained with.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ropeconvert.convert.factor_files import FactorSet, load_factor_file

CATALOG_DIR = Path(__file__).resolve().parent / "factor_catalog"
LONGROPE = "https://github.com/microsoft/LongRoPE/tree/c666237f776f7fb73b04de0c25d930647b6a68c5/script/longrope_scale"
LONGROPE_NOTE = ("LongRoPE's searched factors that initialised its long-context fine-tuning; without fine-tuning the "
                 "paper reports good results up to 8× only")

LLAMA2_7B = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32000, "rope_theta": 10000.0}
MISTRAL_7B_V01 = {"model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                  "num_key_value_heads": 8, "vocab_size": 32000, "rope_theta": 10000.0, "sliding_window": 4096}
PHI3_MINI = {"model_type": "phi3", "hidden_size": 3072, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32064, "rope_theta": 10000.0}


@dataclass(frozen=True)
class Entry:
    name: str  # what the factors were made for, in words
    file: str  # under convert/factor_catalog/
    identity: dict[str, Any] = field(hash=False)  # config values a model must have, all of them
    trained_context: int  # the length its config says it was trained for
    original_context: int  # the length the factors treat as original (LongRoPE's Mistral: 4096)
    target_context: int
    source: str
    note: str = ""

    @property
    def path(self) -> Path:
        return CATALOG_DIR / self.file

    def factors(self) -> FactorSet:
        return load_factor_file(self.path)

    def knobs(self) -> dict[str, Any]:
        """The longrope knobs that give this entry (LongRoPE's Mistral factors are not monotone: searched, noisy)."""
        f = self.factors()
        monotone = all(b >= a for lst in (f.long, f.short or ()) for a, b in zip(lst, lst[1:]))
        return {"factors": self.path, "target_context": self.target_context,
                "allow_non_monotone": None if monotone else True}

    def matches(self, config: dict[str, Any]) -> bool:
        if _trained_context(config) != self.trained_context:
            return False
        return all(_same(_value(config, key), value) for key, value in self.identity.items())


ENTRIES: tuple[Entry, ...] = (
    Entry("LLaMA-2-7B, 4k → 128k (LongRoPE)", "longrope_ft_la2_128k.csv", LLAMA2_7B, 4096, 4096, 131072,
          f"{LONGROPE}/ft_la2_128k.csv", LONGROPE_NOTE),
    Entry("LLaMA-2-7B, 4k → 256k (LongRoPE)", "longrope_ft_la2_256k.csv", LLAMA2_7B, 4096, 4096, 262144,
          f"{LONGROPE}/ft_la2_256k.csv", LONGROPE_NOTE),
    Entry("Mistral-7B-v0.1, 4k → 128k (LongRoPE)", "longrope_ft_mis_128k.csv", MISTRAL_7B_V01, 32768, 4096, 131072,
          f"{LONGROPE}/ft_mis_128k.csv", LONGROPE_NOTE),
    Entry("Mistral-7B-v0.1, 4k → 256k (LongRoPE)", "longrope_ft_mis_256k.csv", MISTRAL_7B_V01, 32768, 4096, 262144,
          f"{LONGROPE}/ft_mis_256k.csv", LONGROPE_NOTE),
    Entry("Phi-3.5-mini (phi3, 3072 wide, 32 layers), 4k → 128k", "phi35_mini_128k.json", PHI3_MINI, 4096, 4096,
          131072, "https://huggingface.co/microsoft/Phi-3.5-mini-instruct/blob/main/config.json (rope_scaling; "
          "numbers as transcribed in sdpython/experimental-experiment's Phi-3.5 export recipe)",
          "the factors Phi-3.5-mini was trained with; on another phi3 model of that shape they are a starting point"),
)
_DEFAULTS = {"num_key_value_heads": None, "sliding_window": None, "rope_theta": 10000.0}


def candidates(config: dict[str, Any]) -> list[Entry]:
    """Every entry whose identity the config has (any target)."""
    return [e for e in ENTRIES if e.matches(config)]


def lookup(config: dict[str, Any], target_context: int) -> Entry | None:
    """The entry for this model at exactly this target, or None."""
    return next((e for e in candidates(config) if e.target_context == target_context), None)


def _value(config: dict[str, Any], key: str) -> Any:
    """A config value as the model reads it: rope_theta may sit in the rope dict (transformers 5 writes
    rope_parameters), and a missing one is transformers' default."""
    if key == "rope_theta" and "rope_theta" not in config:
        rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
        return rope.get("rope_theta", _DEFAULTS[key]) if isinstance(rope, dict) else _DEFAULTS[key]
    return config.get(key, _DEFAULTS.get(key))


def _trained_context(config: dict[str, Any]) -> int | None:
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    value = (rope.get("original_max_position_embeddings") if isinstance(rope, dict) else None) \
        or config.get("original_max_position_embeddings") or config.get("max_position_embeddings")
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _same(have: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(have, (int, float)) and not isinstance(have, bool):
        return abs(float(have) - want) <= 1e-9 * abs(want)
    return have == want


def from_catalog(config: dict[str, Any], knobs: dict[str, Any],
                 original_context: int | None = None) -> tuple[Entry, dict[str, Any]] | None:
    """The entry for a `--method longrope` run given no --factors, and the knobs that give it; None when no entry
    has this model's config and the asked target (--target-context N, or --factor s × the entry's original)."""
    for entry in candidates(config):
        if original_context not in (None, entry.original_context):
            continue
        target = knobs.get("target_context")
        if target is None and knobs.get("factor") is not None:
            target = round(float(knobs["factor"]) * entry.original_context)
        if target == entry.target_context:
            given = {k: v for k, v in knobs.items() if v is not None and k != "factor"}
            return entry, {**{k: v for k, v in entry.knobs().items() if v is not None}, **given}
    return None
