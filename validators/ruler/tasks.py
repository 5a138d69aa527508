"""Build a RULER sample of a given token length, and score a task's answers.

A sample's length is counted as RULER counts it (data/synthetic/*.py: `len(text_to_tokens(input_text)) +
tokens_to_generate <= max_seq_length`): the tokens of input + answer prefix, special tokens excluded, plus the
task's answer budget. The prompt is grown to the largest haystack that keeps that within the requested length.
Samples are seeded by (task, length, seed): base and extended models get the same prompts.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ropeconvert.errors import InputError, RopeConvertError
from ropeconvert.validators.ruler import extraction, niah, qa as qa_task, vt
from ropeconvert.validators.ruler.config import TASKS, Plan, TaskConfig
from ropeconvert.validators.ruler.haystack import EssayHaystack, TooShort, largest_fitting, token_counter
from ropeconvert.validators.ruler.qa import QaData
from ropeconvert.validators.ruler.scoring import PER_SAMPLE, aggregate


class TaskNotRun(RopeConvertError):
    """The task cannot run with what is at hand; callers running a task group list it as not run."""


class QaDataMissing(TaskNotRun):
    """qa_1/qa_2 need a SQuAD/HotpotQA file, and none was given."""


@dataclass(frozen=True)
class Sample:
    task: str
    input: str  # RULER's `input`: everything before the answer prefix
    answer_prefix: str  # generation continues input + answer_prefix
    outputs: tuple[str, ...]  # the references
    max_new_tokens: int
    metric: str  # "string_match_all" | "string_match_part"
    length: int  # tokens of input + answer_prefix (no special tokens) + max_new_tokens; ≤ target
    target: int
    units: int  # haystack units used (words, lines or documents)
    seed: int

    @property
    def prompt(self) -> str:
        return self.input + self.answer_prefix


def get_task(name: str) -> TaskConfig:
    """The task of that name (UnknownNameError with "did you mean" otherwise)."""
    return TASKS.get(name)


def _plan(cfg: TaskConfig, rng: random.Random, length: int, count, seed: int, essay, qa) -> Plan:
    if cfg.family == "niah":
        return niah.plan(cfg, rng, essay)
    if cfg.family == "variable_tracking":
        return vt.plan(cfg, rng, count)
    if cfg.family == "common_words_extraction":
        return extraction.cwe_plan(cfg, rng, length)
    if cfg.family == "freq_words_extraction":
        return extraction.fwe_plan(cfg, rng, length)
    return qa_task.plan(cfg, rng, qa, seed)


def _check_inputs(cfg: TaskConfig, length: int, essay, qa) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise InputError(f"a RULER length must be a positive number of tokens (got {length!r})",
                         "pass lengths such as 4096,8192")
    need = cfg.needs
    if need == "essay" and not isinstance(essay, EssayHaystack):
        raise InputError(f"{cfg.name} uses the essay haystack and none was given",
                         "load a corpus (austen, shakespeare or --text) for it")
    if need in ("squad", "hotpotqa"):
        if qa is None:
            squad = need == "squad"
            kind, ruler_file = ("SQuAD", "SQuAD 2.0 dev") if squad else ("HotpotQA", "HotpotQA dev distractor")
            raise QaDataMissing(f"{cfg.name} needs a {kind} file", f"pass one to run it (RULER uses {ruler_file})")
        if not isinstance(qa, QaData) or qa.kind != need:
            raise InputError(f"{cfg.name} reads {need} data, and {getattr(qa, 'name', 'the file given')} is "
                             f"{getattr(qa, 'kind', 'neither')}", f"pass a {need} file for {cfg.name}")


def make_sample(task: str, length: int, tokenizer, seed: int = 0, *, essay: EssayHaystack | None = None,
                qa: QaData | None = None) -> Sample:
    """One RULER sample of `task` that fits `length` tokens (answer budget included) as tightly as its haystack
    allows. `essay` is needed by the essay-haystack tasks, `qa` by qa_1 (SQuAD) and qa_2 (HotpotQA)."""
    cfg = get_task(task)
    _check_inputs(cfg, length, essay, qa)
    count = token_counter(tokenizer)
    plan = _plan(cfg, random.Random(f"ruler:{cfg.name}:{length}:{seed}"), length, count, seed, essay, qa)
    budget = length - cfg.max_new_tokens
    seen: dict[int, tuple[int, tuple[str, str, tuple[str, ...]]]] = {}

    def measure(n: int) -> int:
        if n not in seen:
            parts = plan.render(n)
            seen[n] = (count(parts[0] + parts[1]), parts)
        return seen[n][0]

    try:
        units, tokens = largest_fitting(measure, budget, plan.lo, plan.probe, plan.cap)
    except TooShort as e:
        shortest = e.tokens + cfg.max_new_tokens
        raise InputError(f"{cfg.name} at {length} tokens: its shortest prompt (haystack {plan.unit}: {plan.lo}) "
                         f"with its {cfg.max_new_tokens} answer tokens needs {shortest} tokens",
                         f"choose a RULER length of at least {shortest}") from None
    if plan.cap is not None and units >= plan.cap:
        raise TaskNotRun(f"{cfg.name} at {length} tokens needs more than the {plan.cap} distinct words of the "
                         "offline word list", "choose a shorter length for it")
    text, prefix, outputs = seen[units][1]
    return Sample(cfg.name, text, prefix, outputs, cfg.max_new_tokens, cfg.metric, tokens + cfg.max_new_tokens,
                  length, units, seed)


def make_samples(task: str, length: int, tokenizer, samples: int, seed: int = 0, *,
                 essay: EssayHaystack | None = None, qa: QaData | None = None) -> list[Sample]:
    """`samples` samples with seeds seed, seed + 1, … (for qa, questions seed, seed + 1, … of the file)."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise InputError(f"RULER needs at least one sample per task and length (got {samples!r})",
                         "pass --samples 1 or more (RULER uses 500)")
    return [make_sample(task, length, tokenizer, seed + i, essay=essay, qa=qa) for i in range(samples)]


def score(task: str, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """The task's RULER metric over the samples, in [0, 100] (rounded to 2 decimals as RULER does)."""
    return aggregate(per_sample(task, predictions, references))


def per_sample(task: str, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """Each sample's score in [0, 1] under the task's metric (for intervals)."""
    return PER_SAMPLE[get_task(task).metric](predictions, references)
