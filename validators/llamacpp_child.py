"""The llama.cpp worker: one GGUF loaded once in a child process, answering the evaluations ropeconvert asks for.

`python -m ropeconvert.validators.llamacpp_child GGUF SCRATCH_DIR THREADS [--vocab-only]`, started and spoken to by
validators/llamacpp.py (the parent never loads libllama). Why a child: llama-cpp-python 0.3.36 built natively on an
AVX-512/AMX Xeon segfaults evaluating quantized GGUFs, and a segfault in our own process would take the measurements
made so far (and the run) with it; in a child it is one line, and the transformers half survives.

Protocol: one JSON request per line on stdin ({"op": ..., ...}), one JSON answer per line on the original stdout
({"ok": value} | {"error", "hint", "kind"} for a RopeConvertError | {"bug": "Type: message"}). Fd 1 itself is pointed
at stderr first, so nothing libllama prints can corrupt an answer. Float arrays come back as .npy files in
SCRATCH_DIR (exact, and read with allow_pickle=False). The model is loaded once; each evaluation gets its own context
of the size it needs, because llama.cpp picks LongRoPE long/short factors from the allocated context (pitfall 9).

Every rope parameter is llama.cpp's default ("from the model"), as llama-cli loads a file: only the context size,
batch size and thread count are chosen here. Logits are read back one decoded chunk at a time and reduced to
log-probabilities at once, so memory stays O(chunk × vocab).

Test hook (tests only, harmless elsewhere): with ROPECONVERT_TEST_LLAMACPP_CRASH=1 in the environment the worker
kills itself with SIGSEGV (core dumps off) at its first evaluation, as the natively built runtime does, so the tests
can show what a real crash does to a run.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ropeconvert.errors import InputError, RopeConvertError, UnsupportedError

CHUNK = 256  # tokens per llama_decode call; logits of one chunk are (CHUNK × vocab) float32
CRASH_HOOK = "ROPECONVERT_TEST_LLAMACPP_CRASH"
_log_lines: list[str] = []


class Model:
    """One GGUF in llama.cpp, through the C API."""

    def __init__(self, path: Path, scratch: Path, threads: int, vocab_only: bool):
        self.lib, self.path, self.scratch, self.threads = _lib(), path, scratch, threads
        params = self.lib.llama_model_default_params()
        params.n_gpu_layers, params.vocab_only = 0, vocab_only
        _log_lines.clear()
        self.model = self.lib.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise InputError(f"llama.cpp cannot load {path.name}: {_last_error()}", "re-export the file")
        self.vocab = self.lib.llama_model_get_vocab(self.model)
        self.n_vocab = int(self.lib.llama_vocab_n_tokens(self.vocab))

    def info(self) -> dict:
        """What llama.cpp reports about the file (n_ctx_train read once a context exists, as a user would see it)."""
        with self._context(256):
            bos = int(self.lib.llama_vocab_bos(self.vocab))
            return {"n_ctx_train": int(self.lib.llama_model_n_ctx_train(self.model)), "n_vocab": self.n_vocab,
                    "rope_freq_scale_train": float(self.lib.llama_model_rope_freq_scale_train(self.model)),
                    "bos": bos if bos >= 0 else None, "eos": int(self.lib.llama_vocab_eos(self.vocab)),
                    "version": self.lib.__version__}

    def eval(self, ids: list[int], n_ctx: int) -> dict:
        """Score every next token of one sequence: nll[t] = −log p(ids[t+1] | ids[:t+1]), top1[t] = argmax at t."""
        _crash_hook()
        ids_a = np.asarray(ids, dtype=np.int64)
        self._check_ids(ids_a)
        nll, top1 = np.empty(ids_a.size - 1, dtype=np.float64), np.empty(ids_a.size - 1, dtype=np.int64)
        with self._context(n_ctx) as ctx:
            for start in range(0, ids_a.size - 1, CHUNK):  # the last token is never a context for a prediction
                chunk = ids_a[start:min(start + CHUNK, ids_a.size - 1)]
                logits = self._decode(*ctx, chunk, start, all_logits=True)
                _score(logits, ids_a[start + 1:start + 1 + len(chunk)], nll[start:], top1[start:])
            n_ctx_alloc = int(self.lib.llama_n_ctx(ctx[0]))
        np.save(self.scratch / "nll.npy", nll)
        np.save(self.scratch / "top1.npy", top1)
        return {"n_ctx_train": int(self.lib.llama_model_n_ctx_train(self.model)), "n_ctx": n_ctx_alloc}

    def greedy(self, ids: list[int], max_new_tokens: int, n_ctx: int) -> list[int]:
        """Greedy continuation (argmax, as temperature 0), stopping at EOS or after max_new_tokens."""
        _crash_hook()
        prompt = np.asarray(ids, dtype=np.int64)
        self._check_ids(prompt)
        eos, out = int(self.lib.llama_vocab_eos(self.vocab)), []
        with self._context(n_ctx) as ctx:
            for start in range(0, prompt.size, CHUNK):
                logits = self._decode(*ctx, prompt[start:start + CHUNK], start, all_logits=False)
            pos = prompt.size
            while len(out) < max_new_tokens:
                token = int(np.argmax(logits[-1]))  # first index of the maximum, as llama.cpp's greedy sampler
                if token == eos:
                    break
                out.append(token)
                if len(out) < max_new_tokens:
                    logits = self._decode(*ctx, np.array([token]), pos, all_logits=False)
                    pos += 1
        return out

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        room = len(data) + 16
        for _ in range(2):
            out = (self.lib.llama_token * room)()
            n = self.lib.llama_tokenize(self.vocab, data, len(data), out, room, add_special, parse_special)
            if n >= 0:
                return list(out[:n])
            room = -n  # too small: llama.cpp answers minus the room it needs
        raise InputError(f"llama.cpp could not tokenize the text ({n})")

    def detokenize(self, ids: list[int], special: bool) -> str:
        """The text of `ids` (llama-cpp-python's rule: a leading space after a leading BOS is dropped)."""
        pieces = []
        for token in ids:
            size = 64
            while True:
                buf = ctypes.create_string_buffer(size)
                n = self.lib.llama_token_to_piece(self.vocab, int(token), buf, size, 0, special)
                if n >= 0:
                    pieces.append(buf.raw[:n])
                    break
                size = -n
        text = b"".join(pieces)
        if ids and ids[0] == self.lib.llama_vocab_bos(self.vocab) and text[:1] == b" ":
            text = text[1:]
        return text.decode("utf-8", "replace")

    def close(self) -> None:
        self.lib.llama_model_free(self.model)

    def _check_ids(self, ids: np.ndarray) -> None:
        if ids.ndim != 1 or ids.size < 1 or ids.max() >= self.n_vocab or ids.min() < 0:
            bad = int(ids.max()) if ids.size else "none"
            raise InputError(f"token ids ({bad}) outside the GGUF vocabulary of {self.n_vocab}",
                             "tokenize with the model's own tokenizer")

    @contextmanager
    def _context(self, n_ctx: int):
        """A fresh (context, batch) of `n_ctx` tokens over the loaded model, freed on exit."""
        cparams = self.lib.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_ctx, CHUNK, CHUNK
        cparams.n_threads = cparams.n_threads_batch = self.threads
        _log_lines.clear()
        ctx = self.lib.llama_init_from_model(self.model, cparams)
        if not ctx:
            raise InputError(f"llama.cpp cannot create a context for {self.path.name}: {_last_error()}",
                             "re-export the file")
        batch = self.lib.llama_batch_init(CHUNK, 0, 1)
        try:
            yield ctx, batch
        finally:
            self.lib.llama_batch_free(batch)
            self.lib.llama_free(ctx)

    def _decode(self, ctx, batch, tokens: np.ndarray, start: int, all_logits: bool) -> np.ndarray:
        """Decode `tokens` at positions start…; the logits of every row (all_logits) or of the last one."""
        for j, tok in enumerate(tokens):
            batch.token[j], batch.pos[j], batch.n_seq_id[j] = int(tok), start + j, 1
            batch.seq_id[j][0], batch.logits[j] = 0, int(all_logits or j == len(tokens) - 1)
        batch.n_tokens = len(tokens)
        rc = self.lib.llama_decode(ctx, batch)
        if rc != 0:
            raise UnsupportedError(f"llama.cpp could not decode {self.path.name} (llama_decode returned {rc})")
        rows = len(tokens) if all_logits else 1
        return np.ctypeslib.as_array(self.lib.llama_get_logits(ctx), shape=(rows, self.n_vocab))


def _score(logits: np.ndarray, targets: np.ndarray, nll_out: np.ndarray, top_out: np.ndarray, rows: int = 32) -> None:
    """Log-softmax in float64, a few rows at a time (a float64 copy of all rows would be CHUNK × vocab × 8 bytes)."""
    for r in range(0, logits.shape[0], rows):
        x = logits[r:r + rows].astype(np.float64)
        m = x.max(axis=1, keepdims=True)
        lse = (m[:, 0] + np.log(np.exp(x - m).sum(axis=1)))
        t = targets[r:r + rows]
        nll_out[r:r + len(t)] = lse - x[np.arange(len(t)), t]
        top_out[r:r + len(t)] = x.argmax(axis=1)


def _crash_hook() -> None:
    if os.environ.get(CRASH_HOOK) == "1":
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file for a deliberate crash
        os.kill(os.getpid(), signal.SIGSEGV)


def _lib():
    try:
        import llama_cpp
    except ImportError:
        raise UnsupportedError("llama-cpp-python is not installed", "pip install 'ropeconvert[llamacpp]'") from None
    llama_cpp.llama_backend_init()
    _lib.callback = llama_cpp.llama_log_callback(_collect_log)  # keep a reference: C holds the pointer
    llama_cpp.llama_log_set(_lib.callback, ctypes.c_void_p(0))
    return llama_cpp


def _collect_log(level: int, text: bytes, user_data) -> None:
    """Keep llama.cpp quiet; remember errors (level 3) so a failed load can say why."""
    if level == 3 and len(_log_lines) < 50:
        _log_lines.append(text.decode("utf-8", "replace").strip())


def _last_error() -> str:
    lines = [line for line in _log_lines if line]
    return lines[-1][:200] if lines else "no reason given"


def _answer(out, message: dict) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def _serve(model: Model, request: dict):
    op = request["op"]
    if op == "info":
        return model.info()
    if op == "eval":
        return model.eval(request["ids"], int(request["n_ctx"]))
    if op == "greedy":
        return model.greedy(request["ids"], int(request["max_new_tokens"]), int(request["n_ctx"]))
    if op == "tokenize":
        return model.tokenize(request["text"], bool(request["add_special"]), bool(request["parse_special"]))
    if op == "detokenize":
        return model.detokenize(request["ids"], bool(request["special"]))
    raise ValueError(f"unknown request {op!r}")


def main(argv: list[str]) -> None:
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")  # the answers' own channel…
    os.dup2(2, 1)  # …and fd 1 goes to stderr, so nothing printed by libllama lands in an answer
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops this worker
    if os.environ.get("ROPECONVERT_DEBUG"):
        import faulthandler

        faulthandler.enable()  # a crash then shows where it happened
    path, scratch, threads = Path(argv[0]), Path(argv[1]), int(argv[2])
    model = None
    for line in sys.stdin:
        try:
            model = model or Model(path, scratch, threads, vocab_only="--vocab-only" in argv)
            _answer(out, {"ok": _serve(model, json.loads(line))})
        except RopeConvertError as e:
            _answer(out, {"error": e.problem, "hint": e.fix, "kind": type(e).__name__})
        except Exception as e:  # a bug: the parent raises it as one
            _answer(out, {"bug": f"{type(e).__name__}: {e}"[:500]})
    if model is not None:
        model.close()


if __name__ == "__main__":
    main(sys.argv[1:])
