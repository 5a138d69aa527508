"""A GGUF export run by llama.cpp, behind the same small interface as the transformers Runtime: a tokenizer,
`token_nll` for perplexity (validators/llamacpp.py, which streams logits chunk by chunk) and `greedy` for the
retrieval tasks (llama-cpp-python's Llama with temperature 0).

The file is loaded as a user would load it: every rope parameter "from the model", only the context size chosen
here. llama.cpp picks LongRoPE's long or short factors from the allocated context, not the prompt length
(pitfall 9), so the context is sized to the prompt (+ the new tokens), as a user running that prompt would.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ropeconvert.errors import UnsupportedError
from ropeconvert.validators import llamacpp

PAD = 256  # llama.cpp pads contexts to 256 anyway


class LlamaCppTokenizer:
    """The GGUF's own tokenizer, through llama.cpp, with the two calls the tasks make."""

    def __init__(self, llm):
        self._llm = llm
        # the vocabulary's BOS, whether or not the tokenizer adds it itself: the perplexity protocol prepends it to
        # every window, as it does for transformers (same ids in both runtimes)
        self.bos_token_id = llm.token_bos() if llm.token_bos() >= 0 else None
        self.eos_token_id = llm.token_eos()

    def __call__(self, text: str, add_special_tokens: bool = True):
        ids = self._llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=False)
        return type("Encoding", (), {"input_ids": ids})()

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._llm.detokenize(list(ids), special=not skip_special_tokens).decode("utf-8", "replace")


class GgufRuntime:
    kind = "llama.cpp"

    def __init__(self, path: Path, threads: int | None = None):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise UnsupportedError("llama-cpp-python is not installed", "pip install 'ropeconvert[llamacpp]'") from None
        self.path = Path(path)
        self.threads = threads or max(1, min(4, os.cpu_count() or 1))
        self.n_ctx_train = llamacpp.n_ctx_train(self.path)  # first: this also routes llama.cpp's log to us
        self._Llama = Llama
        self._vocab = Llama(model_path=str(self.path), vocab_only=True, verbose=False)
        self.tokenizer = LlamaCppTokenizer(self._vocab)
        self.notes: list[str] = []

    @property
    def scorer(self) -> "GgufRuntime":
        return self

    @property
    def bos_id(self) -> int | None:
        return self.tokenizer.bos_token_id

    def token_nll(self, ids: list[int], n_targets: int) -> np.ndarray:
        return llamacpp.gguf_eval(self.path, ids, n_threads=self.threads).nll[-n_targets:]

    def greedy(self, input_ids: list[int], max_new_tokens: int) -> list[int]:
        n_ctx = -(-(len(input_ids) + max_new_tokens) // PAD) * PAD
        llm = self._Llama(model_path=str(self.path), n_ctx=n_ctx, n_batch=512, n_threads=self.threads,
                          n_gpu_layers=0, verbose=False)
        try:
            out: list[int] = []
            for token in llm.generate(input_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
                if token == self.tokenizer.eos_token_id or len(out) >= max_new_tokens:
                    break
                out.append(token)
            return out
        finally:
            llm.close()

    def describe(self) -> dict:
        import llama_cpp

        from gguf import LlamaFileType

        from ropeconvert.formats.gguf_read import field, open_gguf

        file_type = field(open_gguf(self.path), "general.file_type")
        try:
            dtype = LlamaFileType(int(file_type)).name.removeprefix("ALL_").removeprefix("MOSTLY_").lower()
        except (TypeError, ValueError):
            dtype = "gguf"
        return {"device": "cpu", "dtype": dtype, "llama_cpp_python": llama_cpp.__version__}

    def close(self) -> None:
        self._vocab.close()
