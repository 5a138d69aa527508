"""`ropeconvert check-runtimes EXPORT`: the export's rope run by every installed runtime's own code, against
transformers, on the same positions.

Each runtime builds its rope from the export's config.json the way its model code does (the calls are named per
runtime below) and rotates the same random query at positions 0..T-1, for one sequence shorter than the original
length, one just past it and one of the target length (long/short and dynamic ropes depend on the length). The
largest absolute difference from transformers' rotated query is the measurement; formats/runtimes.py says what each
runtime is expected to do, and the matrix shows both. mistral.rs has no rope or logits API in Python: it loads the
export, which checks its config parsing and the length it serves. Runtimes that are not installed are listed.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import os
from pathlib import Path
from typing import Any, Callable

import typer

from ropeconvert.errors import InputError

# float32 angles lose ~T·2^-24 rad; anything a wrong rope does is orders of magnitude larger
TOLERANCE_PER_TOKEN = 2e-6
MEASURED = ("transformers", "vllm", "sglang", "mlx-lm", "mistral.rs")
# runtimes whose rope cannot be run on its own here, and why (their rules come from reading their code)
NOT_MEASURED = {
    "llama.cpp": "runs GGUF files: `ropeconvert validate --tasks parity` on the `--to gguf` export checks it",
}
_MODULES = {"vllm": "vllm", "sglang": "sglang", "mlx-lm": "mlx_lm", "mistral.rs": "mistralrs"}


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
    cos, sin = rotary(q, torch.arange(seq_len)[None])
    rotated, _ = modeling.apply_rotary_pos_emb(q, q, cos, sin)
    return rotated[0, 0].numpy()


def _vllm(export: Path, seq_len: int, max_model_len: int) -> Any:
    """vllm/model_executor/models/llama.py: get_rope(head_dim, max_position_embeddings, rope_parameters) on the
    config vLLM patches (transformers_utils/config.py patch_rope_parameters); longrope reads max_model_len."""
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    import torch
    from transformers import AutoConfig
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.rotary_embedding import get_rope
    from vllm.transformers_utils.config import patch_rope_parameters

    config = AutoConfig.from_pretrained(export)
    patch_rope_parameters(config)
    vllm_config = VllmConfig()
    # the one ModelConfig field the rope reads (a full ModelConfig would resolve the model on the Hub)
    object.__setattr__(vllm_config, "model_config", _Namespace(max_model_len=max_model_len))
    with set_current_vllm_config(vllm_config):
        rope = get_rope(_head_dim(config), config.max_position_embeddings, True, config.rope_parameters, torch.float32)
        q = torch.from_numpy(_query(seq_len, _head_dim(config)))
        out, _ = _apply(rope, seq_len, q)
    return out.numpy()


def _apply(rope, seq_len: int, q):
    """CustomOp ropes run their reference path (forward_native); the LongRoPE modules have only forward."""
    import torch

    forward = getattr(rope, "forward_native", None) or rope.forward
    return forward(torch.arange(seq_len), q.clone(), q.clone())


def _sglang(export: Path, seq_len: int) -> Any:
    """sglang/srt/models/llama.py LlamaDecoderLayer: rope_parameters (+ top-level original_max_position_embeddings)
    into layers/rotary_embedding/factory.py get_rope."""
    import torch
    from sglang.srt.layers.rotary_embedding import get_rope
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(export)
    scaling = dict(config.rope_parameters)
    if getattr(config, "original_max_position_embeddings", None):
        scaling["original_max_position_embeddings"] = config.original_max_position_embeddings
    d = _head_dim(config)
    rope = get_rope(d, d, config.max_position_embeddings, scaling.get("rope_theta", 10000), True, scaling,
                    torch.float32)
    out, _ = _apply(rope, seq_len, torch.from_numpy(_query(seq_len, d)))
    return out.numpy()


def _mlx(export: Path, seq_len: int) -> Any:
    """mlx_lm/models/llama.py Attention: initialize_rope(head_dim, rope_theta, rope_traditional, rope_scaling,
    max_position_embeddings) from the raw config.json, applied from offset 0."""
    import mlx.core as mx
    from mlx_lm.models.rope_utils import initialize_rope

    config = json.loads((export / "config.json").read_text())
    d = int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
    rope = initialize_rope(d, config.get("rope_theta", 10000.0), False, config.get("rope_scaling"),
                           config.get("max_position_embeddings"))
    import numpy as np

    out = rope(mx.array(_query(seq_len, d))[None, None], offset=0)
    return np.array(out[0, 0])


def _mistralrs(export: Path, target: int) -> dict[str, Any]:
    """mistral.rs loads the whole export (its Python package has no rope or logits API): whether it accepts the
    rope_scaling (its config parser knows `default`, `linear`, `llama3`) and how long a prompt it serves."""
    from mistralrs import Runner, Which

    try:
        runner = Runner(which=Which.Plain(model_id=str(export)))
    except Exception as e:  # its config parser's refusal is the finding
        return {"loads": f"{type(e).__name__}: {' '.join(str(e).split())[:120]}", "match": False}
    limit = int(runner.max_sequence_length())
    return {"loads": True, "max_sequence_length": limit, "match": limit >= target}


class _Namespace:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def _runner(runtime: str, max_model_len: int) -> Callable[[Path, int], Any]:
    if runtime == "vllm":
        return lambda export, n: _vllm(export, n, max_model_len)
    return {"transformers": _transformers, "sglang": _sglang, "mlx-lm": _mlx}[runtime]


def export_spec(export: Path):
    """The export's spec: its manifest's (ropeconvert.json), else read from config.json."""
    from ropeconvert.convert.spec import RopeSpec
    from ropeconvert.formats.hf_config import spec_from_hf_config
    from ropeconvert.formats.manifest import MANIFEST_FILE, load_manifest
    from ropeconvert.formats.source import read_config

    if not (export / "config.json").is_file():
        raise InputError(f"{export} is not an HF export directory",
                         "pass the directory written by `ropeconvert MODEL --method … --to hf`; GGUF exports run in "
                         "llama.cpp: check them with `ropeconvert validate --tasks parity`")
    if (export / MANIFEST_FILE).is_file():
        spec = load_manifest(export).get("spec")
        if spec:
            return RopeSpec.from_dict(spec)
    config = read_config(export)
    spec = spec_from_hf_config(config)
    if spec is None:
        raise InputError(f"{export} carries plain RoPE and no ropeconvert.json",
                         "pass an export written by ropeconvert (its manifest says what the rope was extended to)")
    return spec


def check_runtimes(export: Path, runtimes: tuple[str, ...] = MEASURED, spec=None) -> dict[str, Any]:
    """{runtime: {rule, installed, short/edge/long (max |Δ| vs transformers, or an error), match}} + the lengths.
    `spec` defaults to the export's own (export_spec)."""
    import numpy as np

    from ropeconvert.formats.runtimes import RUNTIMES, rule

    export = Path(export)
    spec = export_spec(export) if spec is None else spec
    # below the original length, one token past it (where long/short ropes switch) and the target length
    lengths = {"short": max(2, spec.original_context // 2), "edge": spec.original_context + 1,
               "long": spec.target_context}
    reference = {k: _transformers(export, n) for k, n in lengths.items()}
    result: dict[str, Any] = {"lengths": lengths, "runtimes": {}}
    for name in RUNTIMES:
        r = rule(name, spec)
        row: dict[str, Any] = {"status": r.status, "flags": r.flags, "note": r.note, "installed": False}
        result["runtimes"][name] = row
        if name not in runtimes:
            row["skipped"] = NOT_MEASURED.get(name, "not requested")
            continue
        if not installed(name):
            row["skipped"] = "not installed (pip install 'ropeconvert[runtimes]')"
            continue
        row["installed"] = True
        if name == "mistral.rs":
            with contextlib.redirect_stdout(io.StringIO()):
                row.update(_mistralrs(export, spec.target_context))
            continue
        run = _runner(name, spec.target_context)  # vLLM longrope: as with `--max-model-len N`
        for key, n in lengths.items():
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # runtimes print banners; the matrix is the output
                    got = run(export, n)
                row[key] = float(np.max(np.abs(got - reference[key])))
            except Exception as e:  # a runtime refusing or crashing on this rope is a finding
                row[key] = f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
        row["match"] = all(isinstance(row[k], float) and row[k] <= tolerance(n) for k, n in lengths.items())
    return result


def format_matrix(result: dict[str, Any]) -> str:
    from ropeconvert.formats.runtimes import LABELS, cell, Rule

    n = result["lengths"]
    lines = [f"max |Δ| of the rotated query vs transformers at {', '.join(map(str, n.values()))} positions",
             f"{'runtime':<13} {'measured':<30} expected"]
    for name, row in result["runtimes"].items():
        if "skipped" in row:
            measured = f"— {row['skipped']}"
        elif "loads" in row:  # mistral.rs: load and length only
            measured = (f"loads, serves {row['max_sequence_length']} tokens" if row["loads"] is True
                        else f"refused ({row['loads'][:60]})")
        else:
            vals = [f"{row[k]:.1e}" if isinstance(row[k], float) else row[k][:40] for k in n]
            measured = f"{'match' if row['match'] else 'DIFFERS'} ({', '.join(vals)})"
        expected = cell(Rule(row["status"], row["note"], "", row["flags"]))
        lines.append(f"{LABELS[name]:<13} {measured:<30} {expected}")
    return "\n".join(lines)



def check_runtimes_command(
    export: Path = typer.Argument(..., help="An HF export directory written by ropeconvert."),
    as_json: bool = typer.Option(False, "--json", help="Print the matrix as JSON."),
):
    """Run the export's rope through every installed runtime (vLLM, SGLang, mlx-lm rope code on CPU; mistral.rs
    loads it) against transformers and print the matrix beside what each runtime is expected to do (missing
    runtimes are listed)."""
    result = check_runtimes(export)
    typer.echo(json.dumps(result, indent=2) if as_json else format_matrix(result))
