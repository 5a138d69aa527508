"""`ropeconvert check-runtimes EXPORT`: the export run by every installed runtime's own code against transformers.
vLLM, SGLang, mlx-lm: their rope, built from config.json as their model code does (calls named below), rotates one
random query at positions 0..T-1 for T below the original length, just past it and the target (long/short and
dynamic ropes depend on T). mistral.rs and llama.cpp run whole models: log-probs of the same Austen tokens vs
transformers (float32). mistral.rs loads the export (float32, f32 KV cache, pass-through chat template); its chat
requests' `logprobs`/`top_logprobs` are its Python package's only log-probs (completions have none; no prompt
log-probs or logits): the top-10 after the prompt. llama.cpp runs the export's `--to gguf` GGUF, every token
compared. formats/runtimes.py says what each should do; the matrix shows both. Gemma 3: tests/test_runtimes.py."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import typer

from ropeconvert.cli_options import AsJson, with_help
from ropeconvert.errors import InputError, RopeConvertError

# float32 angles lose ~T·2^-24 rad; anything a wrong rope does is orders of magnitude larger
TOLERANCE_PER_TOKEN = 2e-6
# |Δ log-prob|: mistral.rs (max over its top-10) is within ~1e-5 of transformers in float32. llama.cpp's f16 KV
# cache moves single log-probs of the tiny sharpened test models by up to 0.3 but their mean over a sequence by
# < 0.006, while the smallest rope change measured (YaRN attention factor 1.14 → 1.5) moves the mean by 0.065
LOGPROB_TOLERANCE = {"mistral.rs": 1e-3, "llama.cpp": 2e-2}  # llama.cpp: the mean over the tokens
PAST_ORIGINAL = 1024  # the whole-model runs' longest sequence past the original length (as `validate --parity`)
MEASURED = ("transformers", "vllm", "sglang", "mlx-lm", "mistral.rs", "llama.cpp")
WHOLE_MODEL = ("mistral.rs", "llama.cpp")
_MODULES = {"vllm": "vllm", "sglang": "sglang", "mlx-lm": "mlx_lm", "mistral.rs": "mistralrs", "llama.cpp": "llama_cpp"}
RAW_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"  # the prompt as it is


def installed(runtime: str) -> bool:
    return runtime == "transformers" or importlib.util.find_spec(_MODULES[runtime]) is not None


def tolerance(seq_len: int) -> float:
    return max(1e-4, TOLERANCE_PER_TOKEN * seq_len)


def _query(seq_len: int, head_dim: int):
    import numpy as np  # here, not at import: the CLI imports this module for its command

    return np.random.default_rng(0).standard_normal((seq_len, head_dim)).astype(np.float32)


def _head_dim(config) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def _transformers(export: Path, seq_len: int) -> Any:
    """The model's own rotary embedding class (modeling_<type>.<Type>RotaryEmbedding) and apply_rotary_pos_emb."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(export)
    modeling = importlib.import_module(f"transformers.models.{config.model_type}.modeling_{config.model_type}")
    rotary = getattr(modeling, f"{config.model_type.capitalize()}RotaryEmbedding")(config=config)
    q = torch.from_numpy(_query(seq_len, _head_dim(config)))[None, None]
    return modeling.apply_rotary_pos_emb(q, q, *rotary(q, torch.arange(seq_len)[None]))[0][0, 0].numpy()


def _vllm(export: Path, seq_len: int, max_model_len: int) -> Any:
    """vllm/model_executor/models/llama.py: get_rope(head_dim, max_position_embeddings, rope_parameters) on the
    config vLLM patches (transformers_utils/config.py patch_rope_parameters); longrope reads max_model_len."""
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")  # its CPU platform: no accelerator needed
    import torch
    from transformers import AutoConfig
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.rotary_embedding import get_rope
    from vllm.transformers_utils.config import patch_rope_parameters

    config = AutoConfig.from_pretrained(export)
    patch_rope_parameters(config)
    vllm_config = VllmConfig()
    # the one ModelConfig field the rope reads (a full ModelConfig would resolve the model on the Hub)
    object.__setattr__(vllm_config, "model_config", SimpleNamespace(max_model_len=max_model_len))
    with set_current_vllm_config(vllm_config):
        rope = get_rope(_head_dim(config), config.max_position_embeddings, True, config.rope_parameters, torch.float32)
        return _apply(rope, seq_len, torch.from_numpy(_query(seq_len, _head_dim(config))))[0].numpy()


def _apply(rope, seq_len: int, q):
    """CustomOp ropes run their reference path (forward_native); the LongRoPE modules have only forward."""
    import torch

    return (getattr(rope, "forward_native", None) or rope.forward)(torch.arange(seq_len), q.clone(), q.clone())


def _sglang(export: Path, seq_len: int) -> Any:
    """sglang/srt/models/llama.py: rope_parameters (+ original_max_position_embeddings) into factory.py get_rope."""
    import torch
    from sglang.srt.layers.rotary_embedding import get_rope
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(export)
    original = getattr(config, "original_max_position_embeddings", None)
    scaling, d = {**config.rope_parameters, **({"original_max_position_embeddings": original} if original else {})}, \
        _head_dim(config)
    rope = get_rope(d, d, config.max_position_embeddings, scaling.get("rope_theta", 10000), True, scaling,
                    torch.float32)
    return _apply(rope, seq_len, torch.from_numpy(_query(seq_len, d)))[0].numpy()


def _mlx(export: Path, seq_len: int) -> Any:
    """mlx_lm/models/llama.py: initialize_rope(...) from the raw config.json; phi3.py: SuScaledRoPE for longrope,
    with the top-level original_max_position_embeddings (4096 when absent). Applied from offset 0."""
    import mlx.core as mx
    from mlx_lm.models.rope_utils import SuScaledRoPE, initialize_rope

    c = json.loads((export / "config.json").read_text())
    d = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    theta, scaling = c.get("rope_theta", 10000.0), c.get("rope_scaling")
    if c["model_type"] == "phi3" and scaling and scaling.get("type") in ("longrope", "su"):
        rope = SuScaledRoPE(d, theta, c["max_position_embeddings"], c.get("original_max_position_embeddings", 4096),
                            scaling["short_factor"], scaling["long_factor"])
    else:
        rope = initialize_rope(d, theta, False, scaling, c.get("max_position_embeddings"))
    return __import__("numpy").array(rope(mx.array(_query(seq_len, d))[None, None], offset=0)[0, 0])


def export_spec(export: Path):
    """The export's spec: its manifest's (ropeconvert.json), else read from config.json."""
    from ropeconvert.convert.spec import RopeSpec
    from ropeconvert.formats.hf_config import spec_from_hf_config
    from ropeconvert.formats.manifest import MANIFEST_FILE, load_manifest
    from ropeconvert.formats.source import read_config

    if not (export / "config.json").is_file():
        raise InputError(f"{export} is not an HF export directory",
                         "pass the directory written by `ropeconvert MODEL --method … --to hf`; GGUF exports run in "
                         "llama.cpp: check them with `ropeconvert validate --parity HF_DIR GGUF`")
    spec = load_manifest(export).get("spec") if (export / MANIFEST_FILE).is_file() else None
    if spec:
        return RopeSpec.from_dict(spec)
    spec = spec_from_hf_config(read_config(export))
    if spec is None:
        raise InputError(f"{export} carries plain RoPE and no ropeconvert.json",
                         "pass an export written by ropeconvert (its manifest says what the rope was extended to)")
    return spec


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"


def _max_diff(measure: Callable[[], tuple[Any, Any]], reduce: str = "max") -> float | str:
    """max (or mean) |got − want| of what `measure` returns, or why it failed (a refusal or crash is a finding)."""
    import numpy as np

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # runtimes print banners; the matrix is the output
            got, want = measure()
        return float(getattr(np, reduce)(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))
    except Exception as e:
        return _why(e)


def _prompts(export: Path, lengths: dict[str, int]) -> dict[str, tuple[str, list[int]]]:
    """(text, its token ids) per length: prefixes of the longest Austen document, in the export's tokenizer."""
    from transformers import AutoTokenizer

    from ropeconvert.validators import corpus as C

    tok = AutoTokenizer.from_pretrained(export)
    doc = max(C.load("austen"), key=lambda d: len(d.text))
    ids = tok(doc.text[:max(lengths.values()) * 12], add_special_tokens=False).input_ids
    return {k: ((t := tok.decode(ids[:n])), tok(t, add_special_tokens=False).input_ids) for k, n in lengths.items()}


def _reference(export: Path, prompts: dict[str, tuple[str, list[int]]]) -> dict[str, tuple[Any, Any]]:
    """transformers (float32) per length: (each next token's log-prob, the vocabulary's after the last token)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ropeconvert.validators.perplexity import hidden_states, nll_from_hidden

    model, out = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval(), {}
    with torch.inference_mode():
        for key, (_, ids) in prompts.items():
            hidden = hidden_states(model, torch.tensor([ids]))[0]
            nll, _ = nll_from_hidden(model, hidden[:-1], torch.tensor(ids[1:]))
            last = torch.log_softmax(model.get_output_embeddings()(hidden[-1:]).double(), -1)[0]
            out[key] = (-nll.double().numpy(), last.numpy())
    return out


def _mistralrs(export: Path, spec, prompts, reference) -> dict[str, Any]:
    """mistral.rs loads the export (or its config parser refuses it); per length, its top-10 next log-probs."""
    os.environ.setdefault("MISTRALRS_CPU_KV_F32", "1")  # its CPU KV cache is f16 otherwise (log-probs ~1e-3 off)
    from mistralrs import ChatCompletionRequest, ModelDType, Runner, Which

    with tempfile.TemporaryDirectory(prefix="ropeconvert-check-") as tmp:
        (Path(tmp) / "raw.jinja").write_text(RAW_TEMPLATE)
        try:
            runner = Runner(Which.Plain(model_id=str(export), dtype=ModelDType.F32), jinja_explicit=f"{tmp}/raw.jinja")
        except Exception as e:  # its config parser's refusal is the finding
            return {"loads": _why(e)}
        row: dict[str, Any] = {"loads": True, "max_sequence_length": int(runner.max_sequence_length())}
        for key, (text, ids) in prompts.items():
            row[key] = _max_diff(lambda: _top(runner, ChatCompletionRequest(
                messages=text, model="export", logprobs=True, top_logprobs=10, max_tokens=1, temperature=0.0),
                len(ids), reference[key][1]))
    return row


def _top(runner, request, n_tokens: int, want) -> tuple[list[float], list[float]]:
    answer = runner.send_chat_completion_request(request)
    if answer.usage.prompt_tokens != n_tokens:
        raise ValueError(f"mistral.rs read {answer.usage.prompt_tokens} tokens, transformers {n_tokens}")
    tops = answer.choices[0].logprobs.content[0].top_logprobs  # token ids and their log-probs
    return [t.logprob for t in tops], [want[t.token] for t in tops]


def _llamacpp(export: Path, spec, prompts, reference) -> dict[str, Any]:
    """`--to gguf --outtype f32` of the export in llama.cpp, its context sized to the prompt (as a user's)."""
    from ropeconvert.formats.gguf import write_gguf_export
    from ropeconvert.validators.llamacpp import LlamaCpp

    with tempfile.TemporaryDirectory(prefix="ropeconvert-check-") as tmp:
        try:
            gguf, _ = write_gguf_export(export, spec, Path(tmp) / "export.gguf", outtype="f32", progress=False)
        except RopeConvertError as e:  # `--to gguf` refusing this rope (dynamic without --static) is the finding
            return {"refused": e.problem}
        with LlamaCpp(gguf) as llm:  # the mean |Δ| over the tokens: LOGPROB_TOLERANCE says why
            return {k: _max_diff(lambda: (-llm.eval(ids).nll, reference[k][0]), "mean")
                    for k, (_, ids) in prompts.items()}


def check_runtimes(export: Path, runtimes: tuple[str, ...] = MEASURED, spec=None) -> dict[str, Any]:
    """{runtime: {rule, installed, short/edge/long (|Δ| vs transformers, or an error), match}} + the lengths."""
    from ropeconvert.convert.spec import POSITION_MAP
    from ropeconvert.formats.runtimes import RUNTIMES, keeps_local_rope, rule  # the table's own, as the rule reads it

    export, spec = Path(export), spec or export_spec(Path(export))
    L = spec.original_context
    # below the original length, one token past it (where long/short ropes switch) and the target length
    lengths = {"short": max(2, L // 2), "edge": L + 1, "long": spec.target_context}
    model_lengths = {**lengths, "long": min(spec.target_context, L + PAST_ORIGINAL)}
    result: dict[str, Any] = {"lengths": lengths, "model_lengths": model_lengths, "runtimes": {}}
    rope_ref = prompts = model_ref = None
    for name in RUNTIMES:
        r = rule(name, spec)
        row = result["runtimes"][name] = {"status": r.status, "flags": r.flags, "note": r.note,
                                          "installed": installed(name)}
        if name not in runtimes:
            row["skipped"] = "not requested"
        elif not row["installed"]:
            row["skipped"] = "not installed (pip install 'ropeconvert[runtimes]')"
        elif spec.kind == POSITION_MAP and name != "transformers":  # the map lives in ropeconvert's attention
            row["skipped"] = f"not supported: {r.note}"
        elif keeps_local_rope(spec.base.arch):
            row["skipped"] = "per-layer-type ropes (Gemma 3) are not measured by check-runtimes yet"
        elif name in WHOLE_MODEL and not any(export.glob("*.safetensors")):
            row["skipped"] = "the export has no weights (config.json only)"
        elif name in WHOLE_MODEL:
            prompts = prompts or _prompts(export, model_lengths)
            model_ref = model_ref or _reference(export, prompts)
            with contextlib.redirect_stdout(io.StringIO()):
                row.update((_mistralrs if name == "mistral.rs" else _llamacpp)(export, spec, prompts, model_ref))
            row["match"] = all(isinstance(row.get(k), float) and row[k] <= LOGPROB_TOLERANCE[name] for k in lengths)
        else:
            rope_ref = rope_ref or {k: _transformers(export, n) for k, n in lengths.items()}
            run = {"transformers": _transformers, "sglang": _sglang, "mlx-lm": _mlx,  # vLLM: as `--max-model-len N`
                   "vllm": lambda export, n: _vllm(export, n, spec.target_context)}[name]
            for key, n in lengths.items():
                row[key] = _max_diff(lambda: (run(export, n), rope_ref[key]))
            row["match"] = all(isinstance(row[k], float) and row[k] <= tolerance(n) for k, n in lengths.items())
    return result


def format_matrix(result: dict[str, Any]) -> str:
    from ropeconvert.formats.runtimes import LABELS, Rule, cell

    n, m = result["lengths"], result["model_lengths"]
    lines = [f"max |Δ| vs transformers: rotated query at {', '.join(map(str, n.values()))} positions; log-probs at "
             f"{', '.join(map(str, m.values()))} tokens for mistral.rs and llama.cpp (whole models)",
             f"{'runtime':<13} {'measured':<30} expected"]
    for name, row in result["runtimes"].items():
        refused = row.get("refused") or (row["loads"] if row.get("loads", True) is not True else None)
        measured = f"— {row['skipped']}" if "skipped" in row else f"refused ({refused[:60]})" if refused else None
        if measured is None:
            vals = [f"{row[k]:.1e}" if isinstance(row[k], float) else row[k][:40] for k in n]
            measured = f"{'match' if row['match'] else 'DIFFERS'} ({', '.join(vals)})"
        lines.append(f"{LABELS[name]:<13} {measured:<30} {cell(Rule(row['status'], row['note'], '', row['flags']))}")
    return "\n".join(lines)


def check_runtimes_command(
    export: Path = typer.Argument(..., help="An HF export directory written by ropeconvert."),
    as_json: with_help(AsJson, "Print the matrix as JSON.") = False,
):
    """Run the export through every installed runtime against transformers; print the matrix and the rules."""
    typer.echo(json.dumps(check_runtimes(export), indent=2) if as_json else format_matrix(check_runtimes(export)))
