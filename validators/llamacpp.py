"""A GGUF run by the real llama.cpp runtime (llama-cpp-python's C API), always in a child process.

`LlamaCpp(path)` starts one worker (validators/llamacpp_child.py) that loads the file once and answers every
evaluation made on it — per-token NLL and top-1 (`eval`), greedy continuations, tokenization — until `close()`.
This process never loads libllama: llama-cpp-python 0.3.36 built natively (-march=native) on an AVX-512/AMX Xeon
segfaults evaluating quantized GGUFs, and here that is a `LlamaCppCrash` (one line naming the runtime, the file and
the known issue) instead of the end of the run; callers keep what the other runtime measured.

The model is loaded as a user would load it: CPU, every rope parameter "from the model"; only the context size,
batch size and thread count are chosen. llama.cpp picks LongRoPE long vs short factors from the allocated context
(n_ctx, padded to 256) against the original length, not from the number of tokens; `n_ctx` therefore matters for
longrope exports.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ropeconvert.errors import InputError, OutputError, UnsupportedError

WORKER = "ropeconvert.validators.llamacpp_child"
KNOWN_ISSUE = ("a natively built llama-cpp-python segfaults on quantized GGUFs on AVX-512/AMX CPUs; rebuild it with "
               "the portable flags (README, Known issues)")
_DOING = {"info": "loading", "tokenize": "tokenizing with", "detokenize": "decoding with"}


@dataclass(frozen=True)
class GgufEval:
    nll: np.ndarray  # float64, −log p(token[t] | tokens[:t]) for t = 1..n-1
    top1: np.ndarray  # int64, argmax prediction made *at* position t for t = 0..n-2 (compare with tokens[1:])
    n_ctx_train: int  # what llama.cpp reports as the model's trained context
    n_ctx: int  # the context llama.cpp allocated (padded to 256)

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.nll.mean()))


@dataclass(frozen=True)
class GgufInfo:
    n_ctx_train: int
    n_vocab: int
    rope_freq_scale_train: float
    bos: int | None
    eos: int
    version: str  # llama-cpp-python's, as the worker imported it


class LlamaCppCrash(UnsupportedError):
    """The llama.cpp worker died: killed by a signal, or gone without answering."""

    def __init__(self, path: Path, how: str, doing: str):
        super().__init__(f"llama.cpp crashed ({how}) {doing} {Path(path).name}", KNOWN_ISSUE)
        self.how = how

    def kept(self, report: Path, what: str = "the transformers results") -> "LlamaCppCrash":
        """The same crash, now also saying where the results that survived it were written."""
        self.fix = f"{KNOWN_ISSUE} — {what} are kept in {report}"
        return self


class LlamaCpp:
    """One GGUF, loaded once by one llama.cpp worker process for as long as this is open."""

    def __init__(self, path: Path, threads: int | None = None, vocab_only: bool = False):
        if importlib.util.find_spec("llama_cpp") is None:
            raise UnsupportedError("llama-cpp-python is not installed", "pip install 'ropeconvert[llamacpp]'")
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path} does not exist", "pass a .gguf file")
        threads = threads or max(1, min(4, os.cpu_count() or 1))
        try:
            self._scratch = Path(tempfile.mkdtemp(prefix="ropeconvert-llamacpp-"))
        except OSError as e:
            raise OutputError(f"cannot make a scratch directory for llama.cpp ({e.strerror})",
                              "free some space in the temporary directory or set TMPDIR") from None
        debug = bool(os.environ.get("ROPECONVERT_DEBUG"))  # then the worker's own output (a crash trace) shows
        self._proc = subprocess.Popen(
            [sys.executable, "-m", WORKER, str(self.path.absolute()), str(self._scratch), str(threads),
             *(["--vocab-only"] if vocab_only else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None if debug else subprocess.DEVNULL,
            text=True, encoding="ascii")  # the requests and answers are ASCII JSON lines
        self._busy = [False]  # a request in flight: closing then (an interrupt) kills the worker at once
        self._stop = weakref.finalize(self, _stop, self._proc, self._scratch, self._busy)  # also at GC / exit
        self._crash: LlamaCppCrash | None = None
        self._info: GgufInfo | None = None

    def info(self) -> GgufInfo:
        if self._info is None:
            self._info = GgufInfo(**self._ask("info"))
        return self._info

    def eval(self, token_ids: Sequence[int], n_ctx: int | None = None) -> GgufEval:
        """Run `token_ids` in one sequence and score every next token."""
        ids = [int(t) for t in token_ids]
        if len(ids) < 2:
            raise InputError("a llama.cpp evaluation needs at least two token ids")
        n_ctx = int(n_ctx or len(ids))
        if n_ctx < len(ids):
            raise InputError(f"{len(ids)} tokens do not fit in n_ctx={n_ctx}", "raise n_ctx")
        answer = self._ask("eval", ids=ids, n_ctx=n_ctx)
        nll, top1 = (np.load(self._scratch / f"{name}.npy", allow_pickle=False) for name in ("nll", "top1"))
        return GgufEval(nll, top1, answer["n_ctx_train"], answer["n_ctx"])

    def greedy(self, token_ids: Sequence[int], max_new_tokens: int, n_ctx: int) -> list[int]:
        return self._ask("greedy", ids=[int(t) for t in token_ids], max_new_tokens=int(max_new_tokens), n_ctx=n_ctx)

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return self._ask("tokenize", text=text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, token_ids: Sequence[int], special: bool = False) -> str:
        return self._ask("detokenize", ids=[int(t) for t in token_ids], special=special)

    def close(self) -> None:
        self._stop()

    def __enter__(self) -> "LlamaCpp":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _ask(self, op: str, **args):
        if self._crash is not None:  # a dead worker stays dead: the same line for every later request
            raise self._crash
        if not self._stop.alive:
            raise RuntimeError(f"llama.cpp worker for {self.path.name} used after close()")
        self._busy[0] = True
        try:
            self._proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        self._busy[0] = False
        if not line:
            raise self._died(op)
        answer = json.loads(line)
        if "ok" in answer:
            return answer["ok"]
        if "error" in answer:
            raise {"InputError": InputError}.get(answer["kind"], UnsupportedError)(answer["error"], answer.get("hint"))
        raise RuntimeError(f"llama.cpp worker failed on {op}: {answer.get('bug')}")

    def _died(self, op: str) -> LlamaCppCrash:
        try:
            code = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # closed its pipe but lingers: not a worker we can talk to any more
            self._proc.kill()
            code = self._proc.wait()
        how = (signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}") if code < 0 \
            else f"exit {code} without an answer"
        self._crash = LlamaCppCrash(self.path, how, _DOING.get(op, "evaluating"))
        self.close()
        return self._crash


def _stop(proc: subprocess.Popen, scratch: Path, busy: list[bool]) -> None:
    """End the worker (EOF on its stdin lets it free the model; killed if it does not go, or at once if it is in the
    middle of a request: Ctrl-C or SIGTERM in this process) and drop its scratch."""
    try:
        if busy[0] and proc.poll() is None:
            proc.kill()
        if proc.poll() is None:
            try:
                proc.stdin.close()
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def gguf_eval(path: Path, token_ids: Sequence[int], n_ctx: int | None = None, n_threads: int | None = None) -> GgufEval:
    """Run `token_ids` through llama.cpp in one sequence and score every next token (one worker, one load)."""
    with LlamaCpp(path, n_threads) as llm:
        return llm.eval(token_ids, n_ctx)


def gguf_info(path: Path) -> GgufInfo:
    """Load a GGUF with default parameters and a small context; what llama.cpp then reports about it."""
    with LlamaCpp(path) as llm:
        return llm.info()


def gguf_tokenize(path: Path, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
    """Token ids llama.cpp's own tokenizer gives for `text` (vocabulary only, no weights loaded)."""
    with LlamaCpp(path, vocab_only=True) as llm:
        return llm.tokenize(text, add_special, parse_special)


def n_ctx_train(path: Path) -> int:
    """llama.cpp's trained context for a GGUF (read after a context is created, as llama.cpp may re-adjust it)."""
    return gguf_info(path).n_ctx_train
