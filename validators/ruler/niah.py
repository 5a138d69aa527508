"""RULER's needle-in-a-haystack family (niah_single_*, niah_multikey_*, niah_multivalue, niah_multiquery).

Follows NVIDIA/RULER `scripts/data/synthetic/niah.py` (`generate_input_output`):
- needle "One of the special magic {type_needle_v} for {key} is: {value}." (the type stays plural in needles);
  num_needle_k keys (at least num_needle_q), num_needle_v values per key, needles shuffled;
- haystack `noise` (NOISE repeated n times, needles inserted at distinct random line indices, lines joined by
  newlines), `needle` (n distractor needles with fresh random keys and values, the real needles inserted the same
  way) or `essay` (the first n corpus words cut into sentences; each needle placed before sentence int(S·d/100),
  with depths d drawn without replacement from round(linspace(0, 100, 40)); pieces joined by a space);
- query: num_needle_q of the keys drawn at random, named "a, b, and c" when several; the answer is every value of
  every queried key;
- with one query and one value the template is made singular ("Some" → "A", "are all"/"are" → "is", type without
  its final "s"), as RULER does.

Every random draw that does not depend on n is made up front; line positions come from a generator seeded by the
sample and n, and distractor needles from one stream (the i-th is the same for every n), so the token count
grows steadily with n while the sizing search runs.
"""
from __future__ import annotations

import random

from ropeconvert.validators.ruler.config import FAMILIES, Plan, TaskConfig
from ropeconvert.validators.ruler.haystack import NOISE, EssayHaystack
from ropeconvert.validators.ruler.words import random_value

NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
DEPTHS = tuple(round(100 * i / 39) for i in range(40))  # np.round(np.linspace(0, 100, num=40)); no .5 ties occur


def _singular(text: str) -> str:
    # RULER's replacements, in its order, on the template and answer prefix (never on the context)
    for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
        text = text.replace(old, new)
    return text


def plan(cfg: TaskConfig, rng: random.Random, essay: EssayHaystack | None) -> Plan:
    a = cfg.args
    k_type, v_type, hay = str(a["type_needle_k"]), str(a["type_needle_v"]), str(a["type_haystack"])
    num_q, num_v = int(a["num_needle_q"]), int(a["num_needle_v"])
    num_k = max(int(a["num_needle_k"]), num_q)

    keys, values, needles = [], [], []
    for _ in range(num_k):
        keys.append(random_value(k_type, rng))
        values.append([random_value(v_type, rng) for _ in range(num_v)])
        needles += [NEEDLE.format(type_needle_v=v_type, key=keys[-1], value=v) for v in values[-1]]
    rng.shuffle(needles)
    chosen = rng.sample(range(num_k), num_q)
    queries = [keys[i] for i in chosen]
    outputs = tuple(v for i in chosen for v in values[i])
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]

    family = FAMILIES["niah"]
    template, prefix, type_v = family.template, family.answer_prefix, v_type
    if num_q * num_v == 1:
        template, prefix, type_v = _singular(template), _singular(prefix), v_type[:-1]
    answer_prefix = prefix.format(type_needle_v=type_v, query=query)

    if hay == "essay":
        if essay is None:
            raise ValueError(f"{cfg.name} needs an essay haystack")  # tasks.make_sample checks this first
        depths = rng.sample(DEPTHS, len(needles))

        def context(n: int) -> str:
            return essay.with_inserts(n, depths, needles)

        lo, probe, unit = 1, 500, "words"
    else:
        position_seed = rng.getrandbits(64)
        stream = random.Random(rng.getrandbits(64))
        distractors: list[str] = []

        def context(n: int) -> str:
            if hay == "noise":
                lines = [NOISE] * n
            else:
                while len(distractors) < n:
                    distractors.append(NEEDLE.format(type_needle_v=v_type, key=random_value(k_type, stream),
                                                     value=random_value(v_type, stream)))
                lines = distractors[:n]
            where = random.Random(f"{position_seed}:{n}")
            for index, needle in zip(sorted(where.sample(range(n), len(needles)), reverse=True), needles):
                lines.insert(index, needle)
            return "\n".join(lines)

        lo, probe, unit = len(needles), 25, "lines"

    def render(n: int) -> tuple[str, str, tuple[str, ...]]:
        return template.format(type_needle_v=type_v, context=context(n), query=query), answer_prefix, outputs

    return Plan(render, lo, probe, None, unit)
