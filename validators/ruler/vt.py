"""RULER's variable tracking task (vt: one chain of four hops in the noise haystack).

Follows NVIDIA/RULER `scripts/data/synthetic/variable_tracking.py`:
- a chain is "VAR A = 12345" then "VAR B = VAR A " … (num_hops hops, the trailing space kept), names of five
  upper-case letters, all distinct, the value an integer in [10000, 99999) (np.random.randint's upper bound);
- noise haystack: NOISE repeated n times; each chain's lines go to sorted distinct random line positions
  (line j at position_j + j), lines joined by newlines, ". \n" tightened to ".\n";
- the answer is every name of the first chain; the question names its value and the answer prefix the number of
  names (num_hops + 1);
- one in-context example first, as RULER's main() builds it: the same task with three-letter names, value 12345,
  sized to at most 500 tokens with nothing reserved for generation, followed by its answer; each sample then gets
  the example with new names and a new value (RULER's `randomize_icl`, done here with whole-word replacement so a
  new name can never overwrite part of another), then a blank line, then the task.
"""
from __future__ import annotations

import random
import re
import string
from collections.abc import Callable

from ropeconvert.validators.ruler.config import FAMILIES, Plan, TaskConfig
from ropeconvert.validators.ruler.haystack import NOISE, TooShort, largest_fitting

ICL_TOKENS = 500  # RULER: sys_vartrack_w_noise_random(num_samples=1, max_seq_length=500, ...) for the example
ICL_VALUE = "12345"


def _names(rng: random.Random, count: int, letters: int) -> list[str]:
    names = ["".join(rng.choices(string.ascii_uppercase, k=letters)) for _ in range(count)]
    while len(set(names)) < count:  # RULER appends fresh names until enough are distinct
        names.append("".join(rng.choices(string.ascii_uppercase, k=letters)))
    return list(dict.fromkeys(names))[:count]


def _chains(rng: random.Random, num_chains: int, num_hops: int, letters: int, value: str | None):
    names = _names(rng, (num_hops + 1) * num_chains, letters)
    groups = [names[i:i + num_hops + 1] for i in range(0, len(names), num_hops + 1)]
    chains = []
    for g in groups:
        first = value if value is not None else str(rng.randint(10000, 99998))
        chains.append([f"VAR {g[0]} = {first}"] + [f"VAR {g[j + 1]} = VAR {g[j]} " for j in range(num_hops)])
    return groups, chains


def _task_text(chains: list[list[str]], n: int, position_seed: int, num_v: int) -> str:
    family = FAMILIES["variable_tracking"]
    lines = [NOISE] * n
    where = random.Random(f"{position_seed}:{n}")
    for chain in chains:
        positions = sorted(where.sample(range(len(lines)), len(chain)))
        for j, (at, line) in enumerate(zip(positions, chain)):
            lines.insert(at + j, line)
    context = "\n".join(lines).replace(". \n", ".\n")
    value = chains[0][0].split("=")[-1].strip()
    return (family.template + family.answer_prefix).format(context=context, query=value, num_v=num_v)


def icl_example(rng: random.Random, count: Callable[[str], int], num_chains: int, num_hops: int) -> str:
    """RULER's one-shot example: the task with three-letter names and value 12345, the most noise lines that keep
    it within 500 tokens, then its answer and a newline."""
    hops = min(10, num_hops)
    groups, chains = _chains(rng, num_chains, hops, 3, ICL_VALUE)
    seed = rng.getrandbits(64)
    try:
        n, _ = largest_fitting(lambda k: count(_task_text(chains, k, seed, hops + 1)), ICL_TOKENS, hops + 1, 5)
    except TooShort:  # RULER falls back to its smallest haystack
        n = hops + 1
    return _task_text(chains, n, seed, hops + 1) + " " + " ".join(groups[0]) + "\n"


def randomize_icl(example: str, rng: random.Random, num_hops: int) -> str:
    """New names (same lengths) for the example's answer names, and a new value for 12345."""
    old = example.strip().split()[-(num_hops + 1):]
    new = _names(rng, len(old) + 8, len(old[0]))
    new = [w for w in new if w not in old][:len(old)]  # a new name equal to an old one would be renamed twice
    mapping = dict(zip(old, new))
    example = re.sub(r"\b(" + "|".join(map(re.escape, old)) + r")\b", lambda m: mapping[m.group(1)], example)
    return example.replace(ICL_VALUE, str(rng.randint(10000, 99998)))


def plan(cfg: TaskConfig, rng: random.Random, count: Callable[[str], int]) -> Plan:
    num_chains, num_hops = int(cfg.args["num_chains"]), int(cfg.args["num_hops"])
    example = randomize_icl(icl_example(rng, count, num_chains, num_hops), rng, min(10, num_hops))
    groups, chains = _chains(rng, num_chains, num_hops, 5, None)
    position_seed = rng.getrandbits(64)
    prefix_start = FAMILIES["variable_tracking"].answer_prefix
    outputs = tuple(groups[0])

    def render(n: int) -> tuple[str, str, tuple[str, ...]]:
        text = example + "\n" + _task_text(chains, n, position_seed, num_hops + 1)
        cut = text.rfind(prefix_start[:10])  # RULER cuts the answer prefix where its first 10 characters last occur
        return text[:cut], text[cut:], outputs

    return Plan(render, num_hops + 1, 25, None, "lines")
