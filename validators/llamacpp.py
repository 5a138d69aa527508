"""A GGUF run by the real llama.cpp runtime (llama-cpp-python's C API): per-token NLL and top-1 predictions.

The model is loaded exactly as a user would load it: CPU, default rope parameters (scaling type, freq base/scale,
YaRN factors all "from the model"), so whatever extension llama.cpp applies comes from the file alone. Only the
context size, batch size and thread count are chosen here. Logits are read back one decoded chunk at a time and
reduced to log-probabilities right away, so memory stays O(chunk × vocab), never O(tokens × vocab).

llama.cpp picks LongRoPE long vs short factors from the allocated context per sequence (n_ctx, padded to 256)
against the original length, not from the number of tokens; `n_ctx` therefore matters for longrope exports.
"""
from __future__ import annotations

import ctypes
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ropeconvert.errors import InputError, UnsupportedError

CHUNK = 256  # tokens per llama_decode call; logits of one chunk are (CHUNK × vocab) float32
_LOG_LOCK = threading.Lock()
_log_lines: list[str] = []


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


def gguf_eval(path: Path, token_ids: Sequence[int], n_ctx: int | None = None, n_threads: int | None = None) -> GgufEval:
    """Run `token_ids` through llama.cpp in one sequence and score every next token."""
    ids = np.asarray(token_ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size < 2:
        raise InputError("gguf_eval needs at least two token ids")
    n_ctx = int(n_ctx or ids.size)
    if n_ctx < ids.size:
        raise InputError(f"{ids.size} tokens do not fit in n_ctx={n_ctx}", "raise n_ctx")
    with _loaded(path, n_ctx, n_threads) as (lib, model, ctx):
        n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model))
        if ids.max() >= n_vocab or ids.min() < 0:
            raise InputError(f"token id {int(ids.max())} is outside the GGUF vocabulary of {n_vocab}",
                             "tokenize with the model's own tokenizer")
        nll = np.empty(ids.size - 1, dtype=np.float64)
        top1 = np.empty(ids.size - 1, dtype=np.int64)
        batch = lib.llama_batch_init(CHUNK, 0, 1)
        try:
            for start in range(0, ids.size - 1, CHUNK):  # the last token is never a context for a prediction
                chunk = ids[start:min(start + CHUNK, ids.size - 1)]
                for j, tok in enumerate(chunk):
                    batch.token[j], batch.pos[j], batch.n_seq_id[j] = int(tok), start + j, 1
                    batch.seq_id[j][0], batch.logits[j] = 0, 1
                batch.n_tokens = len(chunk)
                rc = lib.llama_decode(ctx, batch)
                if rc != 0:
                    raise UnsupportedError(f"llama.cpp could not decode {path.name} (llama_decode returned {rc})")
                logits = np.ctypeslib.as_array(lib.llama_get_logits(ctx), shape=(len(chunk), n_vocab))
                _score(logits, ids[start + 1:start + 1 + len(chunk)], nll[start:], top1[start:])
        finally:
            lib.llama_batch_free(batch)
        return GgufEval(nll, top1, int(lib.llama_model_n_ctx_train(model)), int(lib.llama_n_ctx(ctx)))


def gguf_info(path: Path, n_ctx: int = 256) -> GgufInfo:
    """Load a GGUF with default parameters and a small context; what llama.cpp then reports about it."""
    with _loaded(path, n_ctx, None) as (lib, model, ctx):
        return GgufInfo(int(lib.llama_model_n_ctx_train(model)),
                        int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model))),
                        float(lib.llama_model_rope_freq_scale_train(model)))


def gguf_tokenize(path: Path, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
    """Token ids llama.cpp's own tokenizer gives for `text` (vocabulary only, no weights loaded)."""
    lib = _lib()
    mparams = lib.llama_model_default_params()
    mparams.vocab_only = True
    with _LOG_LOCK:
        _log_lines.clear()
        model = lib.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise InputError(f"llama.cpp cannot load {Path(path).name}: {_last_error()}", "re-export the file")
    try:
        data = text.encode("utf-8")
        room = len(data) + 16
        out = (lib.llama_token * room)()
        n = lib.llama_tokenize(lib.llama_model_get_vocab(model), data, len(data), out, room, add_special, parse_special)
        if n < 0:
            raise InputError(f"llama.cpp could not tokenize the text ({n})")
        return list(out[:n])
    finally:
        lib.llama_model_free(model)


def n_ctx_train(path: Path) -> int:
    """llama.cpp's trained context for a GGUF (read after a context is created, as llama.cpp may re-adjust it)."""
    return gguf_info(path).n_ctx_train


def _score(logits: np.ndarray, targets: np.ndarray, nll_out: np.ndarray, top_out: np.ndarray, rows: int = 32) -> None:
    """Log-softmax in float64, a few rows at a time (a float64 copy of all rows would be CHUNK × vocab × 8 bytes)."""
    for r in range(0, logits.shape[0], rows):
        x = logits[r:r + rows].astype(np.float64)
        m = x.max(axis=1, keepdims=True)
        lse = (m[:, 0] + np.log(np.exp(x - m).sum(axis=1)))
        t = targets[r:r + rows]
        nll_out[r:r + len(t)] = lse - x[np.arange(len(t)), t]
        top_out[r:r + len(t)] = x.argmax(axis=1)


@contextmanager
def _loaded(path: Path, n_ctx: int, n_threads: int | None) -> Iterator[tuple[object, object, object]]:
    lib = _lib()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist", "pass a .gguf file")
    mparams = lib.llama_model_default_params()
    mparams.n_gpu_layers = 0
    with _LOG_LOCK:
        _log_lines.clear()
        model = lib.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise InputError(f"llama.cpp cannot load {path.name}: {_last_error()}", "re-export the file")
        try:
            cparams = lib.llama_context_default_params()
            threads = n_threads or max(1, min(4, os.cpu_count() or 1))
            cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_ctx, CHUNK, CHUNK
            cparams.n_threads = cparams.n_threads_batch = threads
            ctx = lib.llama_init_from_model(model, cparams)
            if not ctx:
                raise InputError(f"llama.cpp cannot create a context for {path.name}: {_last_error()}", "re-export the file")
        except BaseException:
            lib.llama_model_free(model)
            raise
    try:
        yield lib, model, ctx
    finally:
        lib.llama_free(ctx)
        lib.llama_model_free(model)


def _lib():
    try:
        import llama_cpp
    except ImportError:
        raise UnsupportedError("llama-cpp-python is not installed", "pip install 'ropeconvert[llamacpp]'") from None
    if not getattr(_lib, "ready", False):
        llama_cpp.llama_backend_init()
        _lib.callback = llama_cpp.llama_log_callback(_collect_log)  # keep a reference: C holds the pointer
        llama_cpp.llama_log_set(_lib.callback, ctypes.c_void_p(0))
        _lib.ready = True
    return llama_cpp


def _collect_log(level: int, text: bytes, user_data) -> None:
    """Keep llama.cpp quiet; remember errors (level 3) so a failed load can say why."""
    if level == 3 and len(_log_lines) < 50:
        _log_lines.append(text.decode("utf-8", "replace").strip())


def _last_error() -> str:
    lines = [line for line in _log_lines if line]
    return lines[-1][:200] if lines else "no reason given"
