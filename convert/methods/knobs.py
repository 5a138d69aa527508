"""The CLI text of every method knob, written once.

A knob is a keyword parameter of a registered method function; its type and default come from that signature, its
flag is `--knob-name`, and the convert command builds one option per knob from the registry and this table
(ropeconvert/cli_options.py `knob_option`). A new method's new knob needs one line here and no CLI edit; a test
checks that every registered parameter has an entry. The help names the methods that take the knob, from the
registry, unless every method takes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ropeconvert.convert.methods._registry import METHODS


@dataclass(frozen=True)
class Knob:
    help: str
    shorts: tuple[str, ...] = ()
    cli: bool = True  # False: the API takes it, the CLI does not (no value a flag can carry)


KNOBS: dict[str, Knob] = {
    "factor": Knob("scale s = target / original length (dynamic: α).", ("-s",)),
    "target_context": Knob("target length in tokens (instead of --factor).", ("-t",)),
    "beta_fast": Knob("rotations above which a pair is kept (default 32)."),
    "beta_slow": Knob("rotations below which a pair is interpolated (default 1)."),
    "attention_factor": Knob("replace the default attention factor."),
    "mscale": Knob("DeepSeek-style mscale (with --mscale-all-dim)."),
    "mscale_all_dim": Knob("DeepSeek-style mscale_all_dim."),
    "low_freq_factor": Knob("low frequency factor (default 1)."),
    "high_freq_factor": Knob("high frequency factor (default 4)."),
    "factors": Knob("factor file (CSV, JSON, Phi-3 config.json, search output)."),
    "short_factors": Knob("short factor file."),
    "allow_non_monotone": Knob("accept non-monotone factors."),
    "window": Knob("neighbour window W of exact positions (default original/8)."),
    "group_size": Knob("group size G (default: the smallest power of two keeping W+(N−W)/G ≤ original/2)."),
    "scales": Knob("one scale g per dimension group, e.g. 2,8,2,8 (from `ropeconvert search --method dpe`)."),
    "topk": Knob("rescale only the top-k pairs per (layer, head) by mean ‖q_i‖·‖k_i‖ (measured on the model; "
                 "default all)."),
    "dpe_map": Knob("the dpe_map.json a DPE search wrote (window, scales, selection)."),
    # a (layers, heads, pairs) boolean array: the CLI chooses it with --topk or --dpe-map
    "selected": Knob("the pairs to rescale per (layer, head), as a boolean array.", cli=False),
}


def knob(name: str) -> Knob:
    """The entry of `name`; a parameter without one still gets a flag (the test asks for the entry)."""
    return KNOBS.get(name, Knob(f"{name.replace('_', ' ')}."))


def names() -> list[str]:
    """Every parameter of every registered method, in registry order (the first method to take it decides)."""
    seen: dict[str, None] = {}
    for _, m in METHODS.items():
        seen.update(dict.fromkeys(m.params))
    return list(seen)


def takers(name: str) -> list[str]:
    return [m.name for _, m in METHODS.items() if name in m.params]


def annotation_of(name: str) -> Any:
    """The knob's value type as the first method taking it annotates it (the registry reads the annotation)."""
    return next(k for k in METHODS.get(takers(name)[0]).knobs if k.name == name).cli_type


def help_of(name: str) -> str:
    text = knob(name).help
    who = takers(name)
    if len(who) == len(list(METHODS.items())):
        return text[:1].upper() + text[1:]
    return f"{'/'.join(who)}: {text}"


def cli_names() -> list[str]:
    return [n for n in names() if knob(n).cli]
