"""Passkey retrieval with the landmark-attention template, exactly as YaRN's eval/passkey.py (methods.md §5.1).

The haystack is the landmark "garbage" sentence repeated; the pass key line sits at a character depth; the suffix
restarts at the start of the garbage string (as the reference does); the key is 1..50000; decoding is greedy with
10 new tokens and the answer is the first integer in the response (pitfall 13). The reference draws a random depth
per trial; here depth is a grid axis (lengths × depths), trials differ in the key, and the keys are seeded so base
and extended models see the same prompts.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import numpy as np

from ropeconvert.validators.generate import fit_to_tokens

TASK_DESCRIPTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
                    "I will quiz you about the important information there.")
GARBAGE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
FINAL_QUESTION = "What is the pass key? The pass key is"
MAX_NEW_TOKENS = 10


def information_line(pass_key: int) -> str:
    return f"The pass key is {pass_key}. Remember it. {pass_key} is the pass key."


def build_prompt(n_garbage: int, depth: float, pass_key: int) -> str:
    """The reference prompt with `n_garbage` characters of haystack, the key after round(depth·n) of them."""
    garbage_inf = " ".join([GARBAGE] * (n_garbage // len(GARBAGE) + 2))
    n_prefix = int(round(depth * n_garbage))
    prefix, suffix = garbage_inf[:n_prefix], garbage_inf[:n_garbage - n_prefix]
    return "\n".join([TASK_DESCRIPTION, prefix, information_line(pass_key), suffix, FINAL_QUESTION])


def garbage_for(tokenizer, n_tokens: int) -> int:
    """Characters of haystack that make the prompt reach `n_tokens` tokens (the reference steps 128 chars at a
    time until the token count is reached; bisection finds the same point)."""
    def count(text: str) -> int:
        return len(tokenizer(text).input_ids)

    return fit_to_tokens(lambda n: build_prompt(n, 0.5, 50000), count, n_tokens, hi=max(64, n_tokens * 8))


def answer_of(response: str) -> int | None:
    match = re.search(r"\d+", response)
    return int(match.group()) if match else None


@dataclass
class PasskeyResult:
    lengths: list[int]
    depths: list[float]
    trials: int
    accuracy: list[list[float]]  # [length][depth]
    tokens: list[int]  # actual prompt length (tokens) at each grid length, first trial at depth 0.5
    samples: list[dict] = field(default_factory=list)


def run(runtime, lengths: list[int], depths: list[float], trials: int, *, seed: int = 0,
        max_new_tokens: int = MAX_NEW_TOKENS, progress: bool = True, label: str = "passkey") -> PasskeyResult:
    from tqdm.auto import tqdm

    tok = runtime.tokenizer
    accuracy = np.zeros((len(lengths), len(depths)))
    tokens, samples = [], []
    with tqdm(total=len(lengths) * len(depths) * trials, desc=label, unit="prompt", disable=not progress,
              leave=False) as bar:
        for i, length in enumerate(lengths):
            n_garbage = garbage_for(tok, length)
            tokens.append(len(tok(build_prompt(n_garbage, 0.5, 50000)).input_ids))
            for j, depth in enumerate(depths):
                for t in range(trials):
                    pass_key = random.Random(f"{seed}-{length}-{depth}-{t}").randint(1, 50000)
                    ids = tok(build_prompt(n_garbage, depth, pass_key)).input_ids
                    new = runtime.greedy(ids, max_new_tokens)
                    response = tok.decode(new, skip_special_tokens=True)
                    correct = answer_of(response) == pass_key
                    accuracy[i, j] += correct / trials
                    samples.append({"length": length, "depth": depth, "trial": t, "tokens": len(ids),
                                    "pass_key": pass_key, "response": response, "correct": bool(correct)})
                    bar.update(1)
    return PasskeyResult(list(lengths), list(depths), trials, accuracy.round(6).tolist(), tokens, samples)
