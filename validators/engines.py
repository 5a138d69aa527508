"""Open a model the way validate measures it: an HF model in stock transformers, a GGUF in llama.cpp (its own
child process), or with `--engine vllm` an HF model in vLLM. Used by validate and by the fan-out's workers
(ropeconvert/fanout.py), so both open a side the same way."""
from __future__ import annotations

from pathlib import Path


def open_runtime(path: str | Path, kind: str, device: str | None, progress: bool, engine: str = "native",
                 max_len: int | None = None):
    """`kind` is the export's format: a GGUF export's base is a GGUF too when it is one, else transformers."""
    if engine == "vllm":  # checked before (validators/vllm_runtime.check_engine): an HF model on a CUDA GPU
        from ropeconvert.validators.vllm_runtime import VllmRuntime

        return VllmRuntime(path, max_len, progress=progress)
    if kind == "gguf":
        from ropeconvert.formats.source import resolve
        from ropeconvert.validators.gguf_runtime import GgufRuntime

        src = resolve(str(path), progress=progress)
        if src.kind == "gguf":
            return GgufRuntime(src.path)
    from ropeconvert.validators import runtime

    rt = runtime.load(path, device=device, progress=progress)
    if kind == "gguf":  # an HF base for a GGUF export: say plainly that two runtimes are compared
        rt.notes.append("the base ran in transformers (it is not a GGUF); the extended GGUF ran in llama.cpp")
    return rt
