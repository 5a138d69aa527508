"""Issue 18: every export computes the same rope in vLLM, SGLang, mlx-lm, mistral.rs and llama.cpp as in
transformers, or the export says it does not. Each method is exported from a tiny random Llama and Phi-3 (fused
qkv/gate_up projections; weights sharpened so attention depends on position) and run through every runtime
(validators/runtime_check.py): vLLM's, SGLang's and mlx-lm's own rope code on the rotated query, mistral.rs (the
export) and llama.cpp (the `--to gguf` export of it) on log-probs of the same tokens, before, just past and well
past the original length. The measured agreement must equal what the rules table (formats/runtimes.py) claims — a
runtime the table calls exact must match, one it calls partial or unsupported must really differ or refuse (so the
export's warning is needed). Every runtime is installed by `make install` (the [runtimes] and [llamacpp] extras).

Gemma 3 (issue #21, the end of this file): its sliding layers keep their own rope, so each runtime's Gemma 3 model code
is run for a global and a sliding layer against transformers' Gemma3RotaryEmbedding, plus the length each engine
allows, and mistral.rs on a tiny sharpened Gemma 3; the table's arch-aware rules must say what is found."""
from __future__ import annotations

import json
import math
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from ropeconvert.cli import main
from ropeconvert.convert.methods import build_spec
from ropeconvert.formats.hf import write_hf_export
from ropeconvert.formats.hf_config import base_rope_from_config, hf_config_for
from ropeconvert.formats.hub_export import load_export
from ropeconvert.formats.model_card import render_card
from ropeconvert.formats.runtimes import LABELS, RUNTIMES, export_warnings, rule
from ropeconvert.formats.source import read_config
from ropeconvert.validators import runtime_check

from conftest import make_tiny_model

CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 64, "num_hidden_layers": 1,
          "vocab_size": 64, "rope_theta": 10000.0, "max_position_embeddings": 256}
N_PAIRS = 8  # the tiny models' head_dim 16
LONG = [round(v, 2) for v in np.linspace(1.0, 5.0, N_PAIRS)]
SHORT = [round(v, 2) for v in np.linspace(1.0, 2.0, N_PAIRS)]
CASES = {  # factor 4 on a 256-token model, as in the issue
    "linear": ("linear", {"factor": 4.0}),
    "ntk": ("ntk", {"factor": 4.0}),
    "dynamic": ("dynamic", {"factor": 4.0}),
    "yarn": ("yarn", {"factor": 4.0}),
    "yarn-betas-mscale": ("yarn", {"factor": 4.0, "beta_fast": 64.0, "beta_slow": 2.0, "mscale": 0.8,
                                   "mscale_all_dim": 0.5}),
    "yarn-attention-1.5": ("yarn", {"factor": 4.0, "attention_factor": 1.5}),
    "llama3": ("llama3", {"factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}),
    "longrope": ("longrope", {"factor": 4.0, "factors": LONG, "short_factors": SHORT}),
    "longrope-attention-1.3": ("longrope", {"factor": 4.0, "factors": LONG, "attention_factor": 1.3}),
}
# transformers' Phi3Config accepts rope type longrope only (its validate_rope), as real Phi-3 checkpoints carry; ntk
# writes no rope dict at all
MATRIX = [("llama", case) for case in CASES] + [("phi3", c) for c in ("ntk", "longrope")]  # phi3 takes no custom attention factor
ARCHS = ("llama", "phi3")
COMPARED = ("vllm", "sglang", "mlx-lm", "mistral.rs", "llama.cpp")


def sharp_model(out: Path, tokenizer_dir: Path, model_type: str) -> Path:
    """The tiny random model (2 layers, head_dim 16, original context 256) with weights ×5 and Q/K ×10 more, so that
    a rope change moves log-probs well past the runtimes' tolerance (test_each_method_moves_the_logprobs)."""
    import torch
    from transformers import AutoModelForCausalLM

    make_tiny_model(out, tokenizer_dir, model_type=model_type, original_max_position_embeddings=256,
                    pad_token_id=2)  # Phi3Config's default pad id (32000) is outside the tiny vocabulary
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p *= 5.0
                if "q_proj" in name or "k_proj" in name:
                    p *= 10.0
                elif "qkv_proj" in name:  # phi3's fused projection: Q and K rows first, then V
                    p[: p.shape[0] - p.shape[0] // 4] *= 10.0
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory, small_tokenizer) -> Path:
    root = tmp_path_factory.mktemp("runtimes")
    for arch in ARCHS:
        sharp_model(root / arch, small_tokenizer, arch)
    return root


def spec_for(case: str, arch: str = "config"):
    method, knobs = CASES[case]
    base = base_rope_from_config(CONFIG) if arch == "config" else base_rope_from_config(read_config(WORK[0] / arch))
    return build_spec(method, base, **knobs)


WORK: list[Path] = []  # the module's models, for the cached measurement below


@lru_cache(maxsize=None)
def measured(arch: str, case: str) -> dict:
    spec = spec_for(case, arch)
    path, _ = write_hf_export(WORK[0] / arch, spec, WORK[0] / f"{arch}-{case}", progress=False, link=True)
    return runtime_check.check_runtimes(path, spec=spec)


@pytest.fixture(scope="module", autouse=True)
def _work(work):
    WORK[:] = [work]
    yield
    measured.cache_clear()
    gemma_measured.cache_clear()


@pytest.mark.parametrize("runtime", COMPARED)
@pytest.mark.parametrize("arch,case", MATRIX)
def test_runtime_equals_transformers_or_is_declared(arch, case, runtime):
    assert runtime_check.installed(runtime), f"{runtime} is not installed: make install puts the extras in"
    row = measured(arch, case)["runtimes"][runtime]
    spec = spec_for(case, arch)
    expected = rule(runtime, spec)
    values = {k: row.get(k) for k in ("short", "edge", "long", "loads", "refused")}
    if expected.status in ("exact", "flags"):
        assert row["match"], f"{runtime} differs from transformers on {arch} {case}: {values}"
        return
    # the documented difference is real, so the export's warning is needed
    assert not row["match"], f"{runtime} matches on {arch} {case} but the rules table says {expected}"
    assert any(LABELS[runtime] in w for w in export_warnings(spec))
    if runtime == "mistral.rs" and expected.status == "unsupported":
        assert "unknown variant" in row["loads"], values
    elif runtime == "mistral.rs" and spec.kind == "linear":  # max_position_embeddings stays the original
        assert row["max_sequence_length"] == spec.original_context
        assert row["short"] <= runtime_check.LOGPROB_TOLERANCE["mistral.rs"] and "greater than" in row["edge"]
    elif runtime == "mistral.rs":  # phi3 longrope: its own longrope agrees only within the original length
        assert row["short"] <= runtime_check.LOGPROB_TOLERANCE["mistral.rs"], values
    elif runtime == "llama.cpp":  # dynamic without --static: `--to gguf` refuses, as the table says
        assert "no dynamic NTK" in row["refused"], values


@pytest.mark.parametrize("arch,case", MATRIX)
def test_each_method_moves_the_logprobs(arch, case):
    """The base model's log-probs past the original length differ from the export's by far more than the
    whole-model tolerance, so a runtime ignoring the export's rope could not match."""
    result = measured(arch, case)
    prompts = runtime_check._prompts(WORK[0] / arch, {"long": result["model_lengths"]["long"]})
    base = runtime_check._reference(WORK[0] / arch, prompts)["long"][0]
    export = runtime_check._reference(WORK[0] / f"{arch}-{case}", prompts)["long"][0]
    assert np.abs(base - export)[256:].mean() > 2 * runtime_check.LOGPROB_TOLERANCE["llama.cpp"]


def test_position_maps_run_in_transformers_only(work):
    spec = build_spec("selfextend", base_rope_from_config(read_config(work / "llama")), factor=4.0)
    path, _ = write_hf_export(work / "llama", spec, work / "llama-selfextend", progress=False, link=True)
    rows = runtime_check.check_runtimes(path, spec=spec)["runtimes"]
    assert rows["transformers"]["match"]
    for name in COMPARED:
        assert rule(name, spec).status == "unsupported" and rows[name]["skipped"].startswith("not supported: ")
    assert {w.split()[1] for w in export_warnings(spec)} == {LABELS[n] for n in COMPARED}


def test_transformers_reference_matches_itself_and_config_only_skips_whole_models(tmp_path):
    spec = spec_for("yarn", "config")
    (tmp_path / "config.json").write_text(json.dumps(hf_config_for(spec, CONFIG)))
    rows = runtime_check.check_runtimes(tmp_path, runtimes=("transformers", "mlx-lm", "llama.cpp"), spec=spec)
    assert rows["runtimes"]["transformers"]["match"] and rows["runtimes"]["transformers"]["long"] == 0.0
    assert rows["runtimes"]["mlx-lm"]["match"] and rows["runtimes"]["vllm"]["skipped"] == "not requested"
    assert rows["runtimes"]["llama.cpp"]["skipped"] == "the export has no weights (config.json only)"


def test_writer_encodings_every_runtime_reads():
    yarn = hf_config_for(spec_for("yarn-attention-1.5"), CONFIG)["rope_scaling"]
    assert "attention_factor" not in yarn and yarn["mscale_all_dim"] == 1.0
    t = 0.1 * math.log(4.0)
    assert (0.1 * yarn["mscale"] * math.log(4.0) + 1) / (1 + t) == pytest.approx(1.5, rel=1e-12)
    longrope = hf_config_for(spec_for("longrope-attention-1.3"), CONFIG)["rope_scaling"]
    assert longrope["attention_factor"] == longrope["long_mscale"] == longrope["short_mscale"] == 1.3
    ntk = hf_config_for(spec_for("ntk"), CONFIG)
    assert "rope_scaling" not in ntk and "rope_parameters" not in ntk  # mistral.rs refuses a factor-less dict
    assert ntk["max_position_embeddings"] == 1024
    # the max_position_embeddings policy: original where vLLM/SGLang multiply by factor, else the target
    assert {c: hf_config_for(spec_for(c), CONFIG)["max_position_embeddings"] for c in ("linear", "dynamic", "yarn",
            "llama3", "longrope")} == {"linear": 256, "dynamic": 256, "yarn": 1024, "llama3": 1024, "longrope": 1024}


def test_warnings_name_runtime_and_alternative():
    assert export_warnings(spec_for("llama3")) == []
    dynamic = export_warnings(spec_for("dynamic"))
    assert [w.split()[1] for w in dynamic] == ["vLLM", "SGLang", "mistral.rs", "llama.cpp"]
    assert all(w.startswith("RUNTIME: ") and ("--method ntk" in w or "--static" in w) for w in dynamic)
    assert rule("vllm", spec_for("longrope")).flags == "--max-model-len 1024"


def test_manifest_and_card_carry_the_runtimes(tiny_llama, tmp_path):
    spec = build_spec("dynamic", base_rope_from_config(json.loads((tiny_llama / "config.json").read_text())),
                      factor=4.0)
    path, notes = write_hf_export(tiny_llama, spec, tmp_path / "dyn", progress=False)
    assert any(n.startswith("RUNTIME: vLLM cannot run dynamic") for n in notes)
    manifest = json.loads((path / "ropeconvert.json").read_text())
    assert set(manifest["runtimes"]) == set(RUNTIMES)
    assert manifest["runtimes"]["vllm"]["status"] == "unsupported" and "--method ntk" in manifest["runtimes"]["vllm"]["note"]
    card = render_card(load_export(path), repo_id="me/dyn", base_id=None, license_fields={}, license_note=None)
    section = card.split("## Runs in")[1].split("\n## ")[0]
    assert "| vLLM | ✘ not supported" in section and "| mlx-lm | ✔ exact |" in section


def test_check_runtimes_cli_prints_matrix_and_lists_missing(tiny_llama, tmp_path, capsys, monkeypatch):
    spec = build_spec("yarn", base_rope_from_config(json.loads((tiny_llama / "config.json").read_text())), factor=2.0)
    path, _ = write_hf_export(tiny_llama, spec, tmp_path / "y", progress=False)
    real = runtime_check.installed
    monkeypatch.setattr(runtime_check, "installed", lambda name: name != "sglang" and real(name))
    monkeypatch.setattr(sys, "argv", ["ropeconvert", "check-runtimes", str(path)])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr().out
    assert e.value.code in (0, None), out
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "match" in lines["transformers"]
    assert "not installed" in lines["SGLang"]
    assert "refused (ValueError: unknown variant `yarn`" in lines["mistral.rs"] or "not installed" in lines["mistral.rs"]
    assert lines["llama.cpp"].split()[1] == "match", out  # the `--to gguf` export of it, run by llama.cpp


def test_check_runtimes_refuses_a_gguf_path(tmp_path, capsys, monkeypatch):
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(sys, "argv", ["ropeconvert", "check-runtimes", str(gguf)])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    # the hint names `validate --parity` (`--tasks parity` is refused, pointing there)
    assert e.value.code == 2 and err.startswith("error: ") and "validate --parity" in err


@pytest.mark.parametrize("method,knobs", [("yarn", ["-s", "4"]), ("linear", ["-s", "4"]), ("llama3", ["-s", "4"])])
def test_phi3_hf_export_refuses_a_rope_transformers_phi3_cannot_load(work, tmp_path, method, knobs):
    """transformers' Phi3Config takes only longrope (4.57 and 5.24): writing yarn/linear/llama3 for phi3 would make
    an export no runtime's phi3 model loads; refused with one line, nothing written, and `--to gguf` still works."""
    from helpers import assert_clean_refusal, run_cli, tree_digest

    src = work / "phi3"
    out = tmp_path / "phi3-hf"
    before = tree_digest(src)
    proc = run_cli(src, "-m", method, *knobs, "--to", "hf", "-o", out, "-q")
    assert_clean_refusal(proc, out, src, before, "takes only rope type longrope", "--to gguf")
    gguf = run_cli(src, "-m", method, *knobs, "--to", "gguf", "-o", tmp_path / "phi3.gguf", "-q")
    assert gguf.returncode == 0, gguf.stderr


# ---- Gemma 3 (issue #21): the sliding layers keep their own rope, only the global layers are extended ----------------
# A config-only export for the rope-level runtimes: 6 layers (5 sliding + 1 global, Gemma 3's pattern) whose sliding
# rope base is not the 10000 default, so that a runtime ignoring rope_local_base_freq would show
GEMMA = {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "hidden_size": 64,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 64,
         "num_hidden_layers": 6, "vocab_size": 64, "rope_theta": 1000000.0, "max_position_embeddings": 256,
         "sliding_window": 32, "rope_local_base_freq": 20000.0, "query_pre_attn_scalar": 16}
GEMMA_LAYERS = ("full_attention", "sliding_attention")
MADE_UP = tuple(round(float(v), 3) for v in 1.0 + 3.0 * np.random.default_rng(0).random(N_PAIRS))  # not monotone
GEMMA_CASES = {
    **{c: CASES[c] for c in ("linear", "ntk", "dynamic", "yarn", "yarn-betas-mscale", "yarn-attention-1.5", "llama3",
                             "longrope", "longrope-attention-1.3")},
    # mscale m = 0: written as attention_factor, which transformers' rope functions (so SGLang's Gemma 3 too) and vLLM
    # read, mlx-lm does not
    "yarn-attention-as-factor": ("yarn", {"factor": 4.0, "attention_factor": 1 / (1 + 0.1 * math.log(4.0))}),
    "per-pair": ("per_pair", {"attention_factor": 1.0}),
    "per-pair-attention-1.25": ("per_pair", {"attention_factor": 1.25}),
}
ROPE_LEVEL = ("vllm", "sglang", "mlx-lm")


def gemma_spec(case: str, config: dict | None = None):
    from ropeconvert.convert.spec import RopeSpec

    method, knobs = GEMMA_CASES[case]
    base = base_rope_from_config(config or GEMMA)
    if method == "per_pair":  # a spec of no registered method: the generic per-pair form (longrope, long = short)
        return RopeSpec(method="made-up", base=base, target_context=4 * base.original_context,
                        rope_theta=base.rope_theta, factors=MADE_UP, **knobs)
    return build_spec(method, base, **knobs)


def _gemma_export(case: str) -> Path:
    path = WORK[0] / "gemma-config" / case
    if not (path / "config.json").is_file():
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps(hf_config_for(gemma_spec(case), GEMMA)))
    return path


def _tf_gemma(export: Path, n: int, layer_type: str):
    """transformers 5: one Gemma3RotaryEmbedding for both layer types (modeling_gemma3.Gemma3TextModel)."""
    import torch
    from transformers import AutoConfig
    from transformers.models.gemma3 import modeling_gemma3 as m

    config = AutoConfig.from_pretrained(export)
    q = torch.from_numpy(runtime_check._query(n, config.head_dim))[None, None]
    cos, sin = m.Gemma3RotaryEmbedding(config=config)(q, torch.arange(n)[None], layer_type)
    return m.apply_rotary_pos_emb(q, q, cos, sin)[0][0, 0].numpy()


def _vllm_gemma(export: Path, n: int, layer_type: str, max_model_len: int):
    """vllm/model_executor/models/gemma3.py Gemma3Attention: get_rope(head_dim, max_position=max_position_embeddings,
    rope_parameters=config.rope_parameters[layer_type]) on the config vLLM patches."""
    import os
    from types import SimpleNamespace

    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    import torch
    from transformers import AutoConfig
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.rotary_embedding import get_rope
    from vllm.transformers_utils.config import patch_rope_parameters

    config = AutoConfig.from_pretrained(export)
    patch_rope_parameters(config)
    vllm_config = VllmConfig()
    object.__setattr__(vllm_config, "model_config", SimpleNamespace(max_model_len=max_model_len))
    with set_current_vllm_config(vllm_config):
        rope = get_rope(config.head_dim, max_position=config.max_position_embeddings,
                        rope_parameters=config.rope_parameters[layer_type], is_neox_style=True)
        return runtime_check._apply(rope, n, torch.from_numpy(runtime_check._query(n, config.head_dim)))[0].numpy()


def _sglang_source(relpath: str, *names: str) -> dict:
    """Top-level definitions of an installed SGLang module, executed by themselves: sglang/srt/models/gemma3_causal.py
    and sglang/srt/utils/hf_transformers/common.py import einops, torchvision, … (not in the [runtimes] extra), while
    the definitions used here need only torch and transformers."""
    import ast
    import importlib.util

    import torch
    from transformers import ROPE_INIT_FUNCTIONS

    path = Path(importlib.util.find_spec("sglang").submodule_search_locations[0]) / relpath
    tree = ast.parse(path.read_text())
    wanted = [n for n in tree.body if getattr(n, "name", None) in names
              or (isinstance(n, ast.Assign) and any(getattr(t, "id", None) in names for t in n.targets))]
    assert len(wanted) == len(names), f"{relpath} no longer defines {names}"
    namespace = {"torch": torch, "nn": torch.nn, "ROPE_INIT_FUNCTIONS": ROPE_INIT_FUNCTIONS, "Gemma3TextConfig": object}
    exec(compile(ast.Module(wanted, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


def _sglang_gemma(export: Path, n: int, layer_type: str):
    """sglang/srt/models/gemma3_causal.py Gemma3TextModel.__init__: Gemma3RotaryEmbedding of a config copy whose
    rope_parameters is rope_parameters["full_attention"] (global) or a default rope at the sliding theta; the layers
    apply its cos/sin (Gemma3Attention.forward_native)."""
    import copy

    import torch
    from sglang.srt.layers.rotary_embedding.utils import apply_rotary_pos_emb_native_eager
    from transformers import AutoConfig

    rotary_class = _sglang_source("srt/models/gemma3_causal.py", "Gemma3RotaryEmbedding")["Gemma3RotaryEmbedding"]
    config = AutoConfig.from_pretrained(export)
    rope = config.rope_parameters
    local = copy.deepcopy(config)
    if layer_type == "full_attention":
        local.rope_parameters = {**rope["full_attention"], "rope_theta": rope["full_attention"].get("rope_theta", 1e6)}
    else:
        local.rope_parameters = {"rope_type": "default", "rope_theta": rope["sliding_attention"].get("rope_theta", 1e4)}
    q = torch.from_numpy(runtime_check._query(n, config.head_dim))
    cos, sin = rotary_class(config=local)(q, torch.arange(n)[None])
    cos, sin = cos.reshape(-1, cos.shape[-1]), sin.reshape(-1, sin.shape[-1])
    return apply_rotary_pos_emb_native_eager(q[:, None], q[:, None], cos, sin)[0][:, 0].numpy()


def _mlx_gemma(export: Path, n: int, layer_type: str):
    """mlx_lm/models/gemma3_text.py: the rope of an Attention layer of that type, built from the raw config.json."""
    import mlx.core as mx
    from mlx_lm.models import gemma3_text

    c = json.loads((export / "config.json").read_text())
    args = gemma3_text.ModelArgs.from_dict(c)
    attention = gemma3_text.Attention(args, c["layer_types"].index(layer_type))
    assert attention.is_sliding == (layer_type == "sliding_attention")
    return np.array(attention.rope(mx.array(runtime_check._query(n, args.head_dim))[None, None], offset=0)[0, 0])


@lru_cache(maxsize=None)
def gemma_measured(case: str) -> dict:
    """{runtime: {layer type: {short/edge/long: max |Δ| of the rotated query vs transformers, or the error}}}."""
    export, spec = _gemma_export(case), gemma_spec(case)
    L = spec.original_context
    lengths = {"short": L // 2, "edge": L + 1, "long": spec.target_context}
    run = {"vllm": lambda n, t: _vllm_gemma(export, n, t, spec.target_context),  # as `--max-model-len N`
           "sglang": lambda n, t: _sglang_gemma(export, n, t), "mlx-lm": lambda n, t: _mlx_gemma(export, n, t)}
    out = {}
    for name in ROPE_LEVEL:
        out[name] = {t: {k: runtime_check._max_diff(lambda: (run[name](n, t), _tf_gemma(export, n, t)))
                         for k, n in lengths.items()} for t in GEMMA_LAYERS}
    return out


def _ok(row: dict, spec) -> dict[str, bool]:
    """Per length, whether the runtime's rotated query equals transformers' (an error is a mismatch)."""
    n = {"short": spec.original_context // 2, "edge": spec.original_context + 1, "long": spec.target_context}
    return {k: isinstance(row[k], float) and row[k] <= runtime_check.tolerance(n[k]) for k in n}


@pytest.mark.parametrize("runtime", ROPE_LEVEL)
@pytest.mark.parametrize("case", GEMMA_CASES)
def test_gemma3_rope_equals_transformers_or_is_declared(case, runtime):
    """Both layer types of each runtime's Gemma 3 rope against transformers' Gemma3RotaryEmbedding, below, just past
    and at the target length: the global layers read the export's rope, the sliding ones keep rope_local_base_freq
    (20000 here, not the 10000 default) unscaled. Where the table says partial or unsupported, the difference is real
    and is where its note says."""
    spec = gemma_spec(case)
    expected, rows = rule(runtime, spec), gemma_measured(case)[runtime]
    full, sliding = _ok(rows["full_attention"], spec), _ok(rows["sliding_attention"], spec)
    if runtime == "vllm" and spec.kind == "dynamic":  # max_position_embeddings stays L: the sliding table has L rows
        assert sliding == {"short": True, "edge": False, "long": False}, rows
        assert "IndexError" in rows["sliding_attention"]["long"]
    else:
        assert all(sliding.values()), f"{runtime}'s sliding layers differ on gemma3 {case}: {rows}"
    if expected.status in ("exact", "flags"):
        assert all(full.values()) and all(sliding.values()), f"{runtime} differs on gemma3 {case}: {rows}"
        return
    assert not (all(full.values()) and all(sliding.values())), f"{runtime} matches on {case}; table: {expected}"
    assert any(LABELS[runtime] in w for w in export_warnings(spec))
    wrong = {k for k, ok in full.items() if not ok}
    if spec.kind == "longrope" and runtime == "vllm":  # the long factors at every length
        assert wrong == {"short"}, rows
    elif spec.kind == "longrope" and runtime == "sglang":  # the short factors at every length
        assert wrong == {"edge", "long"}, rows
    elif runtime == "mlx-lm" and "attention factor" in expected.note and "long factors" not in expected.note:
        assert wrong == {"short", "edge", "long"}, rows  # the attention factor: wrong at every length
    elif runtime == "mlx-lm" and spec.kind == "longrope":
        assert "short" in wrong, rows


def test_gemma3_runtimes_read_the_exported_keys():
    """What each runtime is given by our export: vLLM and SGLang the per-layer-type rope_parameters (as transformers 5
    builds them from rope_parameters + rope_scaling), mlx-lm and mistral.rs the top-level rope_theta, rope_scaling
    and rope_local_base_freq — every one of them in the export, agreeing."""
    from transformers import AutoConfig

    config = json.loads((_gemma_export("yarn") / "config.json").read_text())
    assert config["rope_local_base_freq"] == 20000.0 and config["rope_theta"] == 1000000.0
    full = {k: v for k, v in config["rope_scaling"].items() if k != "type"}
    assert config["rope_parameters"] == {"full_attention": full,
                                        "sliding_attention": {"rope_type": "default", "rope_theta": 20000.0}}
    loaded = AutoConfig.from_pretrained(_gemma_export("yarn")).rope_parameters
    assert loaded["sliding_attention"] == {"rope_type": "default", "rope_theta": 20000.0}
    assert {k: loaded["full_attention"][k] for k in full} == full


@pytest.mark.parametrize("case", ["linear", "dynamic", "ntk", "yarn", "llama3", "longrope"])
def test_gemma3_engine_lengths(case):
    """How long a prompt each engine allows: vLLM's gemma3 takes max_position_embeddings without multiplying it by
    the factor (it does for llama), SGLang's get_context_length finds no factor in the nested rope_scaling. A linear
    Gemma 3 export carries max_position_embeddings = the target (a llama one the original, which vLLM multiplies), so
    both allow exactly the target unflagged; dynamic keeps the original (transformers' threshold), so both cap it
    there."""
    import os
    from types import SimpleNamespace

    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    from transformers import AutoConfig
    from vllm.config.model import _get_and_verify_max_len
    from vllm.transformers_utils.config import patch_rope_parameters

    spec = gemma_spec(case)
    L, N = spec.original_context, spec.target_context

    def vllm_len(config, max_model_len=None):
        patch_rope_parameters(config)
        # what vLLM's ModelArchConfigConvertor.derive_max_model_len_and_key finds in a Gemma 3 config
        arch = SimpleNamespace(derived_max_model_len_and_key=(config.max_position_embeddings,
                                                              "max_position_embeddings"))
        return _get_and_verify_max_len(config, arch, None, max_model_len, False, None)

    sglang = _sglang_source("srt/utils/hf_transformers/common.py", "CONTEXT_LENGTH_KEYS", "get_context_length")
    raw = json.loads((_gemma_export(case) / "config.json").read_text())
    config = AutoConfig.from_pretrained(_gemma_export(case))
    capped = spec.kind == "dynamic"
    assert raw["max_position_embeddings"] == (L if capped else N)
    assert sglang["get_context_length"](config) == (L if capped else N)
    if spec.kind == "longrope":  # vLLM's default for longrope is the original length, N with --max-model-len N
        assert vllm_len(config) == L and vllm_len(config, N) == N
    elif capped:
        assert vllm_len(config) == L
        with pytest.raises(ValueError, match="VLLM_ALLOW_LONG_MAX_MODEL_LEN"):
            vllm_len(config, N)
    else:
        assert vllm_len(config) == N and vllm_len(config, N) == N
        with pytest.raises(ValueError, match="VLLM_ALLOW_LONG_MAX_MODEL_LEN"):
            vllm_len(config, N + 1)  # exactly the target
    if spec.kind in ("linear", "dynamic"):  # llama keeps the original for both, and vLLM multiplies it by the factor
        llama = WORK[0] / f"llama-config-{case}"
        llama.mkdir(exist_ok=True)
        (llama / "config.json").write_text(json.dumps(hf_config_for(spec_for(case), CONFIG)))
        assert json.loads((llama / "config.json").read_text())["max_position_embeddings"] == L
        assert vllm_len(AutoConfig.from_pretrained(llama)) == 4 * CONFIG["max_position_embeddings"]  # llama: × factor
    if spec.kind == "linear":  # the original length is kept beside it, so the export reads back as itself
        from ropeconvert.formats.hf_config import spec_from_hf_config

        assert raw["original_max_position_embeddings"] == L
        again = spec_from_hf_config(raw)
        assert (again.original_context, again.target_context) == (L, N)
    assert (f"--context-length {N}" in rule("sglang", spec).flags) == capped
    vllm = rule("vllm", spec)
    if capped:
        assert vllm.status == "unsupported"
    else:
        assert vllm.status != "unsupported" and vllm.flags == (f"--max-model-len {N}" if case == "longrope" else "")


@pytest.mark.parametrize("case", ["ntk", "linear", "yarn", "llama3", "per-pair"])
def test_gemma3_sglang_cpu_amx_path_drops_the_scaling(case):
    """SGLang's CPU backend on AMX hosts (Gemma3Attention.forward_cpu) rotates with the attention's own
    get_rope(rope_scaling={"rope_type": "default"}) at the global rope_theta: only a plain rope survives there, and
    the rule's note says so for every scaled kind."""
    import torch
    from sglang.srt.layers.rotary_embedding import get_rope
    from transformers import AutoConfig

    spec, export = gemma_spec(case), _gemma_export(case)
    config = AutoConfig.from_pretrained(export)
    n, d = spec.target_context, config.head_dim
    rope = get_rope(d, rotary_dim=d, max_position=config.max_position_embeddings,
                    base=config.rope_parameters["full_attention"]["rope_theta"], rope_scaling={"rope_type": "default"},
                    is_neox_style=True)
    diff = runtime_check._max_diff(lambda: (  # its table holds max_position_embeddings rows (dynamic: L)
        runtime_check._apply(rope, n, torch.from_numpy(runtime_check._query(n, d)))[0].numpy(),
        _tf_gemma(export, n, "full_attention")))
    same = isinstance(diff, float) and diff <= runtime_check.tolerance(n)
    assert same == (spec.kind == "theta")
    assert ("AMX" in rule("sglang", spec).note) == (spec.kind != "theta")


def test_gemma3_mlx_takes_global_layers_from_the_pattern():
    """mlx-lm's gemma3_text picks the global layers by sliding_window_pattern (default 6), not layer_types: right for
    Gemma 3's own layout (every 6th layer), which the rope tests above use; another layout is run as the pattern's
    (what its source names)."""
    from mlx_lm.models import gemma3_text

    config = json.loads((_gemma_export("yarn") / "config.json").read_text())
    layout = [gemma3_text.Attention(gemma3_text.ModelArgs.from_dict(config), i).is_sliding for i in range(6)]
    assert layout == [t == "sliding_attention" for t in config["layer_types"]] == [True] * 5 + [False]
    other = {**config, "layer_types": ["full_attention"] + ["sliding_attention"] * 5}
    assert [gemma3_text.Attention(gemma3_text.ModelArgs.from_dict(other), i).is_sliding for i in range(6)] == layout
    assert "sliding_window_pattern, not layer_types" in rule("mlx-lm", gemma_spec("yarn")).source


@pytest.mark.parametrize("case", GEMMA_CASES)
def test_gemma3_llamacpp_rule_is_what_to_gguf_does(case):
    """The llama.cpp column for Gemma 3 is formats/gguf_rope.py's own answer for the gemma3 arch: linear, ntk and
    YaRN with the default attention factor are written; dynamic needs --static; the rest are refused."""
    from ropeconvert.errors import UnsupportedError
    from ropeconvert.formats.gguf_rope import gguf_rope

    spec = gemma_spec(case)
    r = rule("llama.cpp", spec)
    try:
        gguf_rope(spec, "gemma3")
        writes = spec.kind != "dynamic"
    except UnsupportedError:
        writes = False
    assert (r.status == "flags") == writes, r
    assert writes == (case in ("linear", "ntk", "yarn")), case  # custom betas or mscale: refused
    if spec.kind == "dynamic":
        gguf_rope(spec, "gemma3", static=True)  # `--static` bakes it
        assert "--static" in r.note


# mistral.rs runs whole models: a tiny random Gemma 3 (6 layers, 5 sliding + 1 global, window 32, original context
# 256, sliding base 20000) with its weights sharpened so that log-probs depend on the rope
GEMMA_WHOLE = ("ntk", "linear", "yarn", "llama3", "dynamic", "longrope", "per-pair")


@pytest.fixture(scope="module")
def sharp_gemma(work, small_tokenizer) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    out = work / "gemma"
    make_tiny_model(out, small_tokenizer, model_type="gemma3_text", original_context=256, rope_theta=1000000.0,
                    layers=6, sliding_window=32, rope_local_base_freq=20000.0, query_pre_attn_scalar=16,
                    pad_token_id=0, architectures=["Gemma3ForCausalLM"])
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p *= 5.0
            elif name.endswith(("q_norm.weight", "k_norm.weight")):  # Gemma's norms multiply by 1 + w: Q, K × 5
                p += 4.0
    model.save_pretrained(out)
    return out


def _mistralrs_gemma(export: Path, prompts, reference) -> dict:
    """mistral.rs's Gemma 3 loader (Which.Plain refuses Gemma3ForCausalLM), float32, prefix cache off: per length, the
    max |Δ| of its top-10 next log-probs against transformers'."""
    import os
    import tempfile

    os.environ.setdefault("MISTRALRS_CPU_KV_F32", "1")
    from mistralrs import ChatCompletionRequest, ModelDType, MultimodalArchitecture, Runner, Which

    with tempfile.TemporaryDirectory(prefix="ropeconvert-test-") as tmp:
        (Path(tmp) / "raw.jinja").write_text(runtime_check.RAW_TEMPLATE)
        try:
            runner = Runner(Which.MultimodalPlain(model_id=str(export), arch=MultimodalArchitecture.Gemma3,
                                                  dtype=ModelDType.F32), jinja_explicit=f"{tmp}/raw.jinja",
                            prefix_cache_n=0)
        except Exception as e:
            return {"loads": runtime_check._why(e)}
        row = {"loads": True, "max_sequence_length": int(runner.max_sequence_length())}
        for key, (text, ids) in prompts.items():
            row[key] = runtime_check._max_diff(lambda: runtime_check._top(runner, ChatCompletionRequest(
                messages=text, model="export", logprobs=True, top_logprobs=10, max_tokens=1, temperature=0.0),
                len(ids), reference[key][1]))
    return row


@pytest.mark.parametrize("case", GEMMA_WHOLE)
def test_gemma3_mistralrs_equals_transformers_or_is_declared(sharp_gemma, case):
    """The export loaded by mistral.rs's Gemma 3 model: ntk and linear run as in transformers below, just past and at
    the target length, which is its limit (max_position_embeddings = the target for both); every other rope_scaling
    type is refused by its config parser."""
    spec = gemma_spec(case, read_config(sharp_gemma))
    export, _ = write_hf_export(sharp_gemma, spec, sharp_gemma.with_name(f"gemma-{case}"), progress=False, link=True)
    L = spec.original_context
    prompts = runtime_check._prompts(export, {"short": L // 2, "edge": L + 1, "long": spec.target_context})
    reference = runtime_check._reference(export, prompts)
    row, expected = _mistralrs_gemma(export, prompts, reference), rule("mistral.rs", spec)
    tol = runtime_check.LOGPROB_TOLERANCE["mistral.rs"]
    if expected.status == "unsupported":
        assert "did not match any variant of untagged enum Gemma3Config" in row["loads"], row
        return
    assert expected.status == "flags" and expected.flags.startswith("Which.MultimodalPlain"), expected
    assert row["max_sequence_length"] == spec.target_context, row
    assert all(isinstance(row[k], float) and row[k] <= tol for k in prompts), row  # both layer types as transformers
    base = runtime_check._reference(sharp_gemma, prompts)  # the unextended model: far from the export at every length
    assert all(np.max(np.abs(np.asarray(reference[k][1]) - np.asarray(base[k][1]))) > 100 * tol for k in prompts)
    assert not any(w.startswith("RUNTIME: mistral.rs") for w in export_warnings(spec))


def test_gemma3_mistralrs_needs_its_gemma3_loader_and_sliding_layers_stay_unscaled(sharp_gemma):
    """Which.Plain (what check-runtimes uses) refuses the text-only Gemma 3 class, and mistral.rs's sliding layers
    read rope_local_base_freq (20000) unscaled: transformers with the sliding layers scaled too, or at 10000, is far
    from it where the export itself is within tolerance (test above)."""
    import shutil

    from mistralrs import ModelDType, Runner, Which

    spec = gemma_spec("linear", read_config(sharp_gemma))
    export = sharp_gemma.with_name("gemma-linear-keys")
    write_hf_export(sharp_gemma, spec, export, progress=False, link=True)
    with pytest.raises(Exception, match="Gemma3ForCausalLM"):
        Runner(Which.Plain(model_id=str(export), dtype=ModelDType.F32))
    manifest = json.loads((export / "ropeconvert.json").read_text())  # the export records the Gemma 3 rules
    assert {name: row["status"] for name, row in manifest["runtimes"].items()} == {
        "transformers": "exact", "vllm": "exact", "sglang": "exact", "mlx-lm": "exact", "mistral.rs": "flags",
        "llama.cpp": "flags"}
    assert manifest["runtimes"]["mistral.rs"]["flags"].startswith("Which.MultimodalPlain")
    prompts = runtime_check._prompts(export, {"short": spec.original_context // 2})
    config = json.loads((export / "config.json").read_text())
    wrong = {"scaled": {"rope_type": "linear", "factor": 4.0, "rope_theta": 20000.0},
             "10000": {"rope_type": "default", "rope_theta": 10000.0}}
    for name, sliding in wrong.items():
        other = export.with_name(f"gemma-linear-sliding-{name}")
        shutil.copytree(export, other)
        (other / "config.json").write_text(json.dumps({**config, "rope_local_base_freq": sliding["rope_theta"],
                                                       "rope_parameters": {**config["rope_parameters"],
                                                                           "sliding_attention": sliding}}))
        row = _mistralrs_gemma(export, prompts, runtime_check._reference(other, prompts))
        assert row["short"] > 100 * runtime_check.LOGPROB_TOLERANCE["mistral.rs"], (name, row)


def test_gemma3_rules_say_what_was_measured():
    """The matrix for Gemma 3 as found above, kind by kind; other archs keep their own rules (the tests above)."""
    table = {case: {name: rule(name, gemma_spec(case)).status for name in RUNTIMES} for case in GEMMA_CASES}
    E, F, P, U = "exact", "flags", "partial", "unsupported"
    want = {  # transformers, vLLM, SGLang, mlx-lm, mistral.rs, llama.cpp
        "ntk": (E, E, E, E, F, F), "linear": (E, E, E, E, F, F), "dynamic": (E, U, F, E, U, U),
        "yarn": (E, E, E, E, U, F), "yarn-betas-mscale": (E, E, E, E, U, U), "yarn-attention-1.5": (E, E, E, E, U, U),
        "yarn-attention-as-factor": (E, E, E, P, U, U), "llama3": (E, E, E, E, U, U),
        "longrope": (E, P, P, P, U, U), "longrope-attention-1.3": (E, P, P, P, U, U),
        "per-pair": (E, F, E, P, U, U), "per-pair-attention-1.25": (E, F, E, P, U, U)}
    assert table == {case: dict(zip(RUNTIMES, row)) for case, row in want.items()}
    llama = rule("mistral.rs", spec_for("llama3"))  # the llama arch's rules are untouched
    assert llama.status == "exact" and rule("vllm", spec_for("linear")).status == "exact"
    assert "--method yarn or ntk" in rule("vllm", gemma_spec("dynamic")).note
    assert all(rule("mistral.rs", gemma_spec(c)).flags.startswith("Which.MultimodalPlain") for c in ("ntk", "linear"))
    assert export_warnings(gemma_spec("linear")) == []  # every runtime runs it to the target
    assert all(w.startswith("RUNTIME: ") for w in export_warnings(gemma_spec("dynamic")))


def test_llamacpp_rule_follows_what_to_gguf_writes_for_the_arch():
    """qwen2's llama.cpp graph takes no per-pair factors: llama3 there is `--to gguf`'s refusal, not "flags"."""
    from ropeconvert.convert.methods import build_spec
    from ropeconvert.convert.spec import BaseRope
    from ropeconvert.formats.runtimes import rule

    for arch, status in (("qwen2", "unsupported"), ("llama", "flags"), ("phi3", "flags")):
        spec = build_spec("llama3", BaseRope(64, 64, 1e6, 4096, arch), factor=4.0)
        r = rule("llama.cpp", spec)
        assert r.status == status, (arch, r)
    assert "cannot express llama3" in rule("llama.cpp", build_spec("llama3", BaseRope(64, 64, 1e6, 4096, "qwen2"),
                                                                     factor=4.0)).note
