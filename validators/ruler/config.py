"""RULER's task table: templates, answer prefixes, answer budgets, metrics and the 13 named task configurations.

- Templates, answer prefixes and `tokens_to_generate`: NVIDIA/RULER `scripts/data/synthetic/constants.py` (`TASKS`),
  verbatim. RULER's prepare.py appends the answer prefix to the template (the `base` model template adds
  nothing), and a sample's `input` is the text before that prefix; generation sees input + answer prefix.
- Metrics: `scripts/eval/synthetic/constants.py` (string_match_all for niah, variable tracking, cwe and fwe;
  string_match_part for qa).
- Task configurations: `scripts/synthetic.yaml` (niah_single_1..3, niah_multikey_1..3, niah_multivalue,
  niah_multiquery, vt, cwe, fwe, qa_1, qa_2), their arguments verbatim.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ropeconvert.registry import Registry


@dataclass(frozen=True)
class Family:
    template: str
    answer_prefix: str
    max_new_tokens: int
    metric: str  # "string_match_all" | "string_match_part"


FAMILIES: Mapping[str, Family] = MappingProxyType({
    "niah": Family(
        "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I will "
        "quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic {type_needle_v} "
        "for {query} mentioned in the provided text?",
        " The special magic {type_needle_v} for {query} mentioned in the provided text are",
        128, "string_match_all"),
    "variable_tracking": Family(
        "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
        "Question: Find all variables that are assigned the value {query} in the text above.",
        " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
        "assigned the value {query}, they are: ",
        30, "string_match_all"),
    "common_words_extraction": Family(
        "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones "
        "that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?",
        " Answer: The top 10 words that appear most often in the list are:",
        120, "string_match_all"),
    "freq_words_extraction": Family(
        "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
        "appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
        "What are the three most frequently appeared words in the above coded text?",
        " Answer: According to the coded text above, the three most frequently appeared words are:",
        50, "string_match_all"),
    "qa": Family(
        "Answer the question based on the given documents. Only give me the answer and do not output any other "
        "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
        "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}",
        " Answer:",
        32, "string_match_part"),
})


@dataclass(frozen=True)
class TaskConfig:
    name: str
    family: str
    args: Mapping[str, object] = field(default_factory=dict)

    @property
    def spec(self) -> Family:
        return FAMILIES[self.family]

    @property
    def max_new_tokens(self) -> int:
        return self.spec.max_new_tokens

    @property
    def metric(self) -> str:
        return self.spec.metric

    @property
    def needs(self) -> str | None:
        """What the task reads besides the tokenizer: "essay" (a corpus), "squad"/"hotpotqa" (a QA file)."""
        if self.family == "qa":
            return str(self.args["dataset"])
        return "essay" if self.args.get("type_haystack") == "essay" else None


def _niah(hay: str, k: str, v: str, nk: int = 1, nv: int = 1, nq: int = 1) -> dict:
    return {"type_haystack": hay, "type_needle_k": k, "type_needle_v": v,
            "num_needle_k": nk, "num_needle_v": nv, "num_needle_q": nq}


TASKS: Registry[TaskConfig] = Registry("RULER task")
for _cfg in (
    TaskConfig("niah_single_1", "niah", _niah("noise", "words", "numbers")),
    TaskConfig("niah_single_2", "niah", _niah("essay", "words", "numbers")),
    TaskConfig("niah_single_3", "niah", _niah("essay", "words", "uuids")),
    TaskConfig("niah_multikey_1", "niah", _niah("essay", "words", "numbers", nk=4)),
    TaskConfig("niah_multikey_2", "niah", _niah("needle", "words", "numbers")),
    TaskConfig("niah_multikey_3", "niah", _niah("needle", "uuids", "uuids")),
    TaskConfig("niah_multivalue", "niah", _niah("essay", "words", "numbers", nv=4)),
    TaskConfig("niah_multiquery", "niah", _niah("essay", "words", "numbers", nq=4)),
    TaskConfig("vt", "variable_tracking", {"type_haystack": "noise", "num_chains": 1, "num_hops": 4}),
    TaskConfig("cwe", "common_words_extraction", {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10}),
    TaskConfig("fwe", "freq_words_extraction", {"alpha": 2.0}),
    TaskConfig("qa_1", "qa", {"dataset": "squad"}),
    TaskConfig("qa_2", "qa", {"dataset": "hotpotqa"}),
):
    TASKS.register(_cfg.name, _cfg)
TASKS.freeze()

RULER_TASKS: tuple[str, ...] = tuple(TASKS)  # the 13 tasks whose mean is "the RULER score"
OFFLINE_TASKS: tuple[str, ...] = tuple(n for n in RULER_TASKS if TASKS.get(n).family != "qa")


@dataclass(frozen=True)
class Plan:
    """One sample before sizing: `render(n)` is its (input, answer_prefix, outputs) with n haystack units.
    render is deterministic in n (every random draw that does not depend on n is made before), so the sizing
    search sees a function, not a new sample each call."""
    render: Callable[[int], tuple[str, str, tuple[str, ...]]]
    lo: int  # fewest units a prompt can have
    probe: int  # RULER's first probe (its `incremental`)
    cap: int | None = None  # most units the data allows (None: the haystack repeats)
    unit: str = "units"
