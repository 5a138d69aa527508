"""An HF export run by vLLM (`--engine vllm`), behind the surface the RULER task uses (as validators/runtime.py and
validators/gguf_runtime.py): `kind`, the export's own HF `tokenizer`, `bos_id`, `eos_ids`, `greedy`, `describe`,
`close` — plus `complete_ids`, which hands every prompt of a cell to one `LLM.generate` call so vLLM's scheduler
batches them (validators/generate.py `complete` routes through it).

The prompts are tokenised here, by the same AutoTokenizer the transformers runtime loads, and sent as token ids: both
engines see the very same ids. Decoding is greedy (temperature 0) and ignores the checkpoint's generation_config
sampling defaults (pitfall 13). vLLM cannot run a DPE / Self-Extend position map (formats/runtimes.py) nor a GGUF
export: `check_engine` refuses those before anything loads. vLLM is imported lazily, so importing this module
needs no vLLM (CI has none, and no GPU).
"""
from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ropeconvert.errors import InputError
from ropeconvert.formats.archs import keeps_local_rope, window_to_lift

DTYPE = "bfloat16"
# vLLM's get_rope tables hold max_position_embeddings rows for these rope types (vllm/config/model.py
# _get_and_verify_max_len leaves their max_position_embeddings unscaled); linear and dynamic hold it × factor
_UNSCALED = ("default", "su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")


def check_engine(export_kind: str, spec: dict | None) -> None:
    """Refuse `--engine vllm` where it cannot run, before any model loads: one InputError, problem and fix.
    The export checks come first: they hold on every machine, whatever is installed."""
    if export_kind == "gguf":
        raise InputError("--engine vllm runs HF exports; GGUF runs in llama.cpp",
                         "drop --engine vllm for this GGUF, or validate its HF export with --engine vllm")
    if spec and (spec.get("position_map") is not None or spec.get("kind") == "position_map"):
        raise InputError(f"--engine vllm cannot run this export's {spec.get('method') or 'DPE / Self-Extend'} "
                         "position map: it needs the transformers runtime (ropeconvert's attention)",
                         "drop --engine vllm (transformers is the default engine)")
    if spec:
        from ropeconvert.convert.spec import RopeSpec
        from ropeconvert.formats.runtimes import rule

        verdict = rule("vllm", RopeSpec.from_dict(spec))
        if verdict.status == "unsupported":  # e.g. dynamic NTK: vLLM's table ends at the original length
            raise InputError(f"vLLM cannot run this export's rope: {verdict.note}",
                             "drop --engine vllm (transformers runs it exactly)")
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise InputError("--engine vllm needs vLLM, which is not installed",
                         "pip install vllm==0.33.0 (a CUDA build, on a machine with an NVIDIA GPU), or drop "
                         "--engine vllm") from None
    import torch

    if not torch.cuda.is_available():
        raise InputError("--engine vllm needs a CUDA GPU and none is available",
                         "run on a machine with an NVIDIA GPU, or drop --engine vllm (transformers runs on CPU)")


def rope_table(config: dict[str, Any]) -> int:
    """How many positions vLLM's rope table for this config holds (its derived max_model_len, rope part)."""
    from ropeconvert.formats.hf_config import rope_dict, rope_type

    positions = int(config["max_position_embeddings"])
    # vLLM's gemma3 takes no factor (formats/runtimes.py)
    if rope_type(config) in _UNSCALED or keeps_local_rope(config.get("model_type")):
        return positions
    return int(positions * float(rope_dict(config).get("factor") or 1.0))


class VllmRuntime:
    """One vLLM engine on one export for the runtime's life (validate keeps one model in memory at a time).

    max_model_len: the longest prompt + answer the caller will send (validate: its longest length + a margin
    for the special tokens RULER's sizing leaves out). The rest goes to `vllm.LLM` (gpu_memory_utilization,
    enforce_eager...)."""

    kind = "vllm"

    def __init__(self, export: str | Path, max_model_len: int, *, dtype: str = DTYPE, progress: bool = False,
                 enforce_eager: bool = False, gpu_memory_utilization: float | None = None, **engine_args: Any):
        from transformers import AutoTokenizer

        from ropeconvert.formats.hf_config import base_rope_from_config, rope_type
        from ropeconvert.formats.source import hf_checkpoint, read_config, resolve
        from ropeconvert.formats.tensors import require_safetensors

        self.path = hf_checkpoint(resolve(str(export), progress=progress), progress=progress)
        self.dtype, self.notes = dtype, []
        config = read_config(self.path)
        self.base = base_rope_from_config(config)  # validate's original_context() reads it for a spec-less export
        require_safetensors(self.path)  # before vLLM sees the directory: no pickle weights reach torch.load
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)  # never remote code
        self._eos = _eos_ids(self.path, config, self.tokenizer)
        overrides: dict[str, Any] = {}
        if window := window_to_lift(config):  # as the transformers runtime: it would hide the haystack past it
            overrides["sliding_window"] = None
            self.notes.append(f"sliding window ({window}) disabled for long-context evaluation")
        table = rope_table(config)
        if rope_type(config) == "default" and max_model_len > table:
            # A plain rope's frequencies never read max_position_embeddings; vLLM sizes its cos/sin table by it
            # (positions past it index out of the table). Raising it lets a base run past its trained length,
            # continuing its rope there exactly as transformers does.
            overrides["max_position_embeddings"] = table = max_model_len
            self.notes.append(f"vLLM: max_position_embeddings raised to {max_model_len} (the plain rope's table "
                              "size only) so the base runs past its trained length, as in transformers")
        if max_model_len > table:  # a scaled rope's table is its extent: past it vLLM would read out of bounds
            self.notes.append(f"vLLM holds {table} positions of this rope: max_model_len {max_model_len} lowered "
                              f"to {table}")
            max_model_len = table
        self.max_model_len = max_model_len
        if gpu_memory_utilization is not None:
            engine_args["gpu_memory_utilization"] = gpu_memory_utilization
        if not progress:
            os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # read when vllm is first imported
        import vllm

        self._vllm_version = vllm.__version__
        # every position up to max_model_len is inside the rope table (above), so vLLM's other length limits —
        # the tokenizer's model_max_length, which often stops at the base's length — are not the model's
        with _allow_long_max_model_len():
            self._llm = vllm.LLM(model=str(self.path), tokenizer=str(self.path), dtype=dtype,
                                 max_model_len=max_model_len, enforce_eager=enforce_eager, hf_overrides=overrides,
                                 generation_config="vllm", trust_remote_code=False, seed=0, **engine_args)

    @property
    def bos_id(self) -> int | None:
        return getattr(self.tokenizer, "bos_token_id", None)

    @property
    def eos_ids(self) -> set[int]:
        return set(self._eos)

    def complete_ids(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuations (new token ids, EOS left out, like generate.greedy) of every prompt, in one
        `LLM.generate` call. No stop string: RULER's answer ends at the first newline *after the text starts*
        (generate.first_line keeps leading blank lines out of the cut), and vLLM's stop=["\\n"] would end an answer
        at a leading newline instead — so each answer runs to EOS or its budget and the caller cuts it."""
        from vllm import SamplingParams, TokensPrompt

        for ids in prompts:
            if len(ids) >= self.max_model_len:
                raise InputError(f"a prompt of {len(ids)} tokens does not fit vLLM's max_model_len "
                                 f"({self.max_model_len}) for {self.path.name}",
                                 "keep --lengths within the export's context, or drop --engine vllm")
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=sorted(self._eos),
                                detokenize=False, skip_special_tokens=True)
        outs = self._llm.generate([TokensPrompt(prompt_token_ids=list(ids)) for ids in prompts], params,
                                  use_tqdm=False)
        answers = []
        for out in outs:
            new = list(out.outputs[0].token_ids)
            while new and new[-1] in self._eos:  # vLLM keeps the stopping token in the output; greedy() does not
                new.pop()
            answers.append(new)
        return answers

    def greedy(self, input_ids: list[int], max_new_tokens: int) -> list[int]:
        return self.complete_ids([input_ids], max_new_tokens)[0]

    def describe(self) -> dict:
        import torch
        import transformers

        return {"device": "cuda", "dtype": self.dtype, "torch": torch.__version__,
                "transformers": transformers.__version__, "vllm": self._vllm_version}

    def close(self) -> None:
        """Stop the engine (its core process holds the weights and the KV cache) and free what this process
        holds, so the next model (the base after the export) gets the whole GPU."""
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
        del llm
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()  # in-process engines (VLLM_ENABLE_V1_MULTIPROCESSING=0): their groups + cache
        gc.collect()


def _eos_ids(path: Path, config: dict[str, Any], tokenizer) -> set[int]:
    """The tokenizer's EOS and the checkpoint's generation EOS ids (generation_config.json, else config.json, as
    transformers builds model.generation_config): the same set the transformers runtime stops on."""
    from ropeconvert.formats.safe_io import read_json

    gen = path / "generation_config.json"
    source = read_json(gen, "generation config") if gen.is_file() else config
    extra = source.get("eos_token_id") if isinstance(source, dict) else None
    ids = {getattr(tokenizer, "eos_token_id", None), *(extra if isinstance(extra, list) else [extra])}
    return {int(i) for i in ids if isinstance(i, int)}


@contextmanager
def _allow_long_max_model_len():
    """VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 while the engine config is built (in this process), then as it was."""
    key, old = "VLLM_ALLOW_LONG_MAX_MODEL_LEN", os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN")
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
