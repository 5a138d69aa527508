"""A GGUF export run by llama.cpp, behind the same small interface as the transformers Runtime: a tokenizer,
`token_nll` for perplexity and `greedy` (argmax, as temperature 0) for the retrieval tasks — all answered by one
llama.cpp worker process that holds the model for the runtime's life (validators/llamacpp.py), so a llama.cpp
crash is a `LlamaCppCrash`, not the end of the run.

The file is loaded as a user would load it: every rope parameter "from the model" (llama.cpp's own context
defaults, as llama-cli uses them — also for greedy decoding, which llama-cpp-python's `Llama` class would otherwise
run with its own YaRN attention factor and betas), only the context size chosen here. llama.cpp picks LongRoPE's
long or short factors from the allocated context, not the prompt length (pitfall 9), so the context is sized to the
prompt (+ the new tokens), as a user running that prompt would.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ropeconvert.validators import llamacpp

PAD = 256  # llama.cpp pads contexts to 256 anyway


class LlamaCppTokenizer:
    """The GGUF's own tokenizer, through llama.cpp, with the two calls the tasks make."""

    def __init__(self, llm: llamacpp.LlamaCpp):
        self._llm = llm
        # the vocabulary's BOS, whether or not the tokenizer adds it itself: the perplexity protocol prepends it to
        # every window, as it does for transformers (same ids in both runtimes)
        self.bos_token_id, self.eos_token_id = llm.info().bos, llm.info().eos

    def __call__(self, text: str, add_special_tokens: bool = True):
        ids = self._llm.tokenize(text, add_special=add_special_tokens, parse_special=False)
        return type("Encoding", (), {"input_ids": ids})()

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._llm.detokenize(list(ids), special=not skip_special_tokens)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The HF-style call RULER sizes its prompts with (validators/ruler/haystack.py `token_counter`)."""
        return self(text, add_special_tokens).input_ids


class GgufRuntime:
    kind = "llama.cpp"

    def __init__(self, path: Path, threads: int | None = None):
        self.path = Path(path)
        self.threads = threads or max(1, min(4, os.cpu_count() or 1))
        self._llm = llamacpp.LlamaCpp(self.path, self.threads)  # one worker holds the model for every task
        try:
            self.n_ctx_train = self._llm.info().n_ctx_train
            self.tokenizer = LlamaCppTokenizer(self._llm)
        except BaseException:
            self._llm.close()
            raise
        self.notes: list[str] = []

    @property
    def scorer(self) -> "GgufRuntime":
        return self

    @property
    def bos_id(self) -> int | None:
        return self.tokenizer.bos_token_id

    def token_nll(self, ids: list[int], n_targets: int) -> np.ndarray:
        return self._llm.eval(ids).nll[-n_targets:]

    def greedy(self, input_ids: list[int], max_new_tokens: int) -> list[int]:
        n_ctx = -(-(len(input_ids) + max_new_tokens) // PAD) * PAD
        return self._llm.greedy(input_ids, max_new_tokens, n_ctx)

    def describe(self) -> dict:
        from gguf import LlamaFileType

        from ropeconvert.formats.gguf_read import field, open_gguf

        file_type = field(open_gguf(self.path), "general.file_type")
        try:
            dtype = LlamaFileType(int(file_type)).name.removeprefix("ALL_").removeprefix("MOSTLY_").lower()
        except (TypeError, ValueError):
            dtype = "gguf"
        return {"device": "cpu", "dtype": dtype, "llama_cpp_python": self._llm.info().version}

    def close(self) -> None:
        self._llm.close()


class CrashGuard:
    """What `validate` keeps when llama.cpp dies measuring one side (a `LlamaCppCrash`): the other side's results,
    the crashed side's as nulls ("not measured" in the report schema) with a note, and — once the report is
    written — the crash raised again, now saying where the surviving results are."""

    def __init__(self):
        self.crashes: list[tuple[str, llamacpp.LlamaCppCrash]] = []
        self._engines: dict[str, str] = {}

    def run(self, side: str, rt, measure: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        self._engines[side] = rt.kind
        try:
            return measure()
        except llamacpp.LlamaCppCrash as e:
            self.crashes.append((side, e))
            return None

    def fill(self, based: dict[str, Any] | None, extended: dict[str, Any] | None) -> tuple[dict, dict, list[str]]:
        """(base, extended, notes) with a crashed side blanked; nothing survived → the crash itself."""
        if not self.crashes:
            return based, extended, []
        if based is None and extended is None:
            raise self.crashes[0][1]
        notes = [f"{e.problem}: its {side} results are missing (null)" for side, e in self.crashes]
        # a crashed side is {}: validate asks each task for its blank result (task.blank), shaped like the other side's
        return based or {}, extended or {}, notes

    def reraise(self, report: Path) -> None:
        if self.crashes:
            side, crash = self.crashes[0]
            alive = "base" if side == "extended" else "extended"
            what = "the transformers results" if self._engines.get(alive) == "transformers" else f"the {alive} results"
            raise crash.kept(report, what)
