"""What one `ropeconvert search` run is asked to do: the only declaration of the search options.

The CLI builds its flags from these fields (ropeconvert/cli_search.py) and refuses a flag whose field the chosen
method does not read (`methods` in the field's metadata; None = every method), so `--method dpe --population 8`
is one error line instead of a silently ignored option. run.py (longrope, longrope2) and dpe.py read the fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from ropeconvert.convert.options import cli

METHODS = ("longrope", "longrope2", "dpe")
LONGROPE = ("longrope", "longrope2")
DPE = ("dpe",)


@dataclass
class SearchOptions:
    model: str = field(metadata=cli("Base model: alias, Hub id, HF directory or .gguf file.", argument=True))
    method: str = field(default="longrope", metadata=cli(
        "longrope (all pairs, PI/NTK/YaRN seeds), longrope2 (critical dim, needle perplexity) or dpe (per-group "
        "scales by 4-needle retrieval)."))
    target_context: int | None = field(default=None, metadata=cli("Length the factors are searched for."))
    factor: float | None = field(default=None, metadata=cli(
        "Scale s = target / original (instead of --target-context)."))
    budget: int | None = field(default=None, metadata=cli(  # per phase; default: the paper's full run
        "Evaluations per phase at most (default population + generations × population/2; the paper's 64/40 → "
        "1344)."))
    population: int = field(default=64, metadata=cli(
        "Population P (top P/2 are parents; P/4 mutants + P/4 crosses per generation).", methods=LONGROPE))
    generations: int = field(default=40, metadata=cli(
        "Generations after the initial population (paper: 40).", methods=LONGROPE))
    patience: int = field(default=10, metadata=cli(
        "Stop when the best improved by < 0.001 over this many generations.", methods=LONGROPE))
    seed: int = field(default=0, metadata=cli("Seed of the search (and of the needles)."))
    out: Path | None = field(default=None, metadata=cli("Output directory (default MODEL-METHOD-search-NNk)."))
    resume: bool = field(default=False, metadata=cli("Continue the search checkpointed in --out (same options)."))
    force: bool = field(default=False, metadata=cli("Start over in an --out that holds a search."))
    documents: int = field(default=5, metadata=cli(
        "Fitness documents (first K of the corpus long enough).", "-k", methods=LONGROPE))
    text: str = field(default="austen", metadata=cli(flag=False))  # --text FILE|DIR, else --corpus NAME
    short: bool = field(default=False, metadata=cli(
        "Also search short factors at the original length.", methods=LONGROPE))
    short_max: float | None = field(default=None, metadata=cli(
        "--short: largest short factor (default ∛s).", methods=LONGROPE))
    max_factor: float | None = field(default=None, metadata=cli(
        "longrope: largest factor (default 1.25·s as in the paper; the released code uses 1+s).", methods=LONGROPE))
    critical_dim: int | None = field(default=None, metadata=cli(
        "longrope2: first searched pair (default ⌈(d/2)·log_θ(L/2π)⌉ − 1).", methods=LONGROPE))
    original_context: int | None = None
    device: str | None = None
    window: int | None = field(default=None, metadata=cli("dpe: neighbour window W (default original/8).",
                                                          methods=DPE))
    groups: int = field(default=8, metadata=cli("dpe: dimension groups (even split of the frequency pairs).",
                                                methods=DPE))
    # default all pairs; the reference keeps 3/4 (48 of 64), which SmolLM2 does not survive
    topk: int | None = field(default=None, metadata=cli(
        "dpe: pairs rescaled per (layer, head), the top K by ‖q_i‖·‖k_i‖ (default all; the reference: 3/4).",
        methods=DPE))
    # candidate effective lengths ℓ, g = N / ℓ: "4096,2048" from the CLI, or a tuple of ints
    lengths: str | tuple[int, ...] | None = field(default=None, metadata=cli(
        "dpe: candidate effective lengths ℓ, scale g = target/ℓ (default target, target/2, … ≥ W).",
        methods=DPE))
    fixed_scale: float | None = field(default=None, metadata=cli(
        "dpe: start every group at this scale (default: the best uniform candidate, scored first).", methods=DPE))
    samples: int = field(default=1, metadata=cli("dpe: 4-needle prompts per evaluation.", methods=DPE))
    stop_after: int | None = field(default=None, metadata=cli(  # generations in this session, then the checkpoint
        "Run at most N generations now, then leave the checkpoint for --resume.", methods=LONGROPE))
    progress: bool = field(default=True, metadata=cli(flag=False))  # --quiet
    # ropeconvert/fanout.py: a generation's candidates (longrope) or a sweep's maps (dpe) on Ray workers; the driver
    # keeps the order and the RNG
    workers: int | None = field(default=None, metadata=cli())
    ray: str | None = field(default=None, metadata=cli())
    gpus_per_worker: float = field(default=1.0, metadata=cli())


def readers(name: str) -> tuple[str, ...]:
    """The search methods that read option `name`."""
    meta = next(f for f in fields(SearchOptions) if f.name == name).metadata.get("cli", {})
    return meta.get("methods") or METHODS


def foreign(method: str) -> list[str]:
    """The options `method` does not read, in field order."""
    return [f.name for f in fields(SearchOptions) if method not in readers(f.name)]
