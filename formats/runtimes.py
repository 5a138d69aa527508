"""Which runtimes compute an export's rope exactly as transformers does, which need flags, which cannot.

One rule per (runtime, method kind), read from each runtime's own rope and config code at the versions pinned in
README "Tested versions" (the `source` of each rule names the file and function); tests/test_runtimes.py runs the
installed ones against transformers on the same positions. Used for the export-time warnings (formats/hf.py), the
`runtimes` section of ropeconvert.json, the model card's "Runs in" table and `ropeconvert check-runtimes`.

status: "exact" (no flags), "flags" (exact with `flags`), "partial" (runs, differs as `note` says),
"unsupported" (cannot express it: `note` says what would work there).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ropeconvert.convert.spec import DYNAMIC, LINEAR, LLAMA3, LONGROPE, PER_PAIR, POSITION_MAP, THETA, YARN, RopeSpec
from ropeconvert.formats.archs import MODEL_TYPES, keeps_local_rope

RUNTIMES = ("transformers", "vllm", "sglang", "mlx-lm", "mistral.rs", "llama.cpp")
LABELS = {"transformers": "transformers", "vllm": "vLLM", "sglang": "SGLang", "mlx-lm": "mlx-lm",
          "mistral.rs": "mistral.rs", "llama.cpp": "llama.cpp"}

_VLLM = "vllm/model_executor/layers/rotary_embedding/__init__.py get_rope"
_VLLM_LEN = "vllm/config/model.py _get_and_verify_max_len"
_SGL = "sglang/srt/layers/rotary_embedding/factory.py get_rope"
_SGL_LEN = "sglang/srt/utils/hf_transformers/common.py get_context_length"
_MLX = "mlx_lm/models/rope_utils.py initialize_rope"
# its config parser accepts rope_scaling types `llama3`, `linear`, `default` only (its own error message) and
# takes max_position_embeddings as the longest sequence (Runner.max_sequence_length)
_MRS = "mistral.rs 0.9.5 llama config deserialisation (the rope_scaling enum), measured by loading exports"
_MRS_PHI3 = "mistral.rs 0.9.5 phi3 model (its own longrope), measured by log-probs against transformers"
_LCPP = "llama.cpp convert_hf_to_gguf.py (measured in issue 18); ropeconvert --to gguf: formats/gguf_rope.py"
# Gemma 3 (archs whose sliding layers keep their own rope): each runtime's own model file, read at the pinned version
_VLLM_G3 = ("vllm/model_executor/models/gemma3.py Gemma3Attention.__init__ "
            "(get_rope(config.rope_parameters[layer_type]))")
_VLLM_G3_LEN = "vllm/config/model.py _get_and_verify_max_len (gemma3: max_position_embeddings, factor not applied)"
_VLLM_G3_TABLE = "models/gemma3.py get_rope(max_position=config.max_position_embeddings): both layer types' tables"
_SGL_G3 = ("sglang/srt/models/gemma3_causal.py Gemma3TextModel.__init__ → Gemma3RotaryEmbedding (transformers' "
           "ROPE_INIT_FUNCTIONS on rope_parameters['full_attention'], default rope at ['sliding_attention'])")
_SGL_G3_LEN = ("sglang/srt/utils/hf_transformers/common.py get_context_length (max_position_embeddings: a nested "
               "rope_scaling has no factor)")
_MLX_G3 = ("mlx_lm/models/gemma3_text.py Attention.__init__ (rope_theta + rope_scaling, rope_local_base_freq; global "
           "layers by sliding_window_pattern, not layer_types) → rope_utils.py initialize_rope")
_MRS_G3 = ("mistral.rs 0.9.5 Gemma3 (Which.MultimodalPlain, arch Gemma3): Gemma3TextConfig deserialisation (reads "
           "rope_theta, rope_scaling, rope_local_base_freq; max_position_embeddings is its limit, "
           "Runner.max_sequence_length), measured by loading exports")
_MRS_G3_FLAGS = "Which.MultimodalPlain(arch=MultimodalArchitecture.Gemma3), prefix_cache_n=0"
_MRS_G3_NOTE = ("Which.Plain refuses Gemma3ForCausalLM; its prefix cache gives NaN logits for a prompt extending a "
                "cached one (measured on CPU, the base model too)")


@dataclass(frozen=True)
class Rule:
    status: str
    note: str
    source: str
    flags: str = ""


def rule(runtime: str, spec: RopeSpec) -> Rule:
    """The rules switch on the spec's kind (convert/spec.py KINDS), never on the method's name."""
    k, custom_attention = spec.kind, "attention_factor" in spec.params
    L, N = spec.original_context, spec.target_context
    if runtime == "transformers":
        if k == POSITION_MAP:
            return Rule("flags", "runs through ropeconvert's registered attention", "validators/dpe_register.py",
                        "import ropeconvert")
        return Rule("exact", "", "transformers/modeling_rope_utils.py ROPE_INIT_FUNCTIONS")
    if k == POSITION_MAP:
        return Rule("unsupported", "DPE / Self-Extend needs ropeconvert's attention: use transformers", "")
    if keeps_local_rope(spec.base.arch):
        return _local_rope_rule(runtime, spec, MODEL_TYPES[spec.base.arch].gguf)
    if runtime == "vllm":
        if k == DYNAMIC:
            return Rule("unsupported", f"DynamicNTKScalingRotaryEmbedding bakes one {L}-row table at the original "
                        "base (IndexError past it): use --method ntk or yarn",
                        _VLLM + " → dynamic_ntk_scaling_rope.py")
        if k in (LONGROPE, PER_PAIR):
            same = spec.short_factors is None or tuple(spec.short_factors) == tuple(spec.factors or ())
            note = "" if same else "uses the long factors at every length (transformers: short ones up to " \
                                   f"{L} tokens)"
            return Rule("flags" if same else "partial", note, _VLLM_LEN + "; phi3_long_rope_scaled_rope.py",
                        f"--max-model-len {N}")
        return Rule("exact", "", _VLLM + (" + " + _VLLM_LEN if k == LINEAR else ""))
    if runtime == "sglang":
        if k == DYNAMIC:
            return Rule("unsupported", "DynamicNTKScalingRotaryEmbedding uses one fixed NTK base (the target "
                        "length's) at every length: use --method ntk or yarn", _SGL)
        if k in (LONGROPE, PER_PAIR):
            return Rule("partial", "switches to the long factors one token later than transformers",
                        _SGL + " → Phi3LongRoPEScaledRotaryEmbedding")
        if k == YARN and custom_attention and "mscale" not in _yarn_written(spec):
            return Rule("partial", "ignores this attention factor (it has no mscale form; SGLang reads attn_factor)",
                        _SGL + " → YaRNScalingRotaryEmbedding")
        return Rule("exact", "", _SGL + (" + " + _SGL_LEN if k == LINEAR else ""))
    if runtime == "mlx-lm":
        if k in (LONGROPE, PER_PAIR):
            note = f"SuScaledRoPE uses the long factors at every length (transformers: short ones up to {L} tokens)"
            if custom_attention:
                note += " and ignores the custom attention factor"
            return Rule("partial", note, _MLX + " → SuScaledRoPE")
        if k == YARN and custom_attention and "mscale" not in _yarn_written(spec):
            return Rule("partial", "ignores this attention factor (it has no mscale form)", _MLX + " → YarnRoPE")
        return Rule("exact", "", _MLX)
    if runtime == "mistral.rs":
        if k == LONGROPE and spec.base.arch == "phi3":  # its phi3 model has its own longrope (measured)
            return Rule("partial", f"its phi3 model loads longrope but differs from transformers past {L} tokens",
                        _MRS_PHI3)
        if k in (YARN, LONGROPE, PER_PAIR, DYNAMIC):
            alt = "ntk or llama3" if k != DYNAMIC else "ntk"
            return Rule("unsupported", f"refuses rope_scaling type {_hf_type(k)!r} (knows default, linear, llama3): "
                        f"use --method {alt}", _MRS)
        if k == LINEAR:
            return Rule("partial", f"reads max_position_embeddings ({L}) as its limit: prompts past it are refused",
                        _MRS)
        return Rule("exact", "", _MRS)
    if runtime == "llama.cpp":
        if k == DYNAMIC:
            return Rule("unsupported", "llama.cpp has no dynamic NTK: `--to gguf --static` bakes NTK at the target",
                        "formats/gguf_rope.py")
        refused = _gguf_refusal(spec)
        if refused:  # e.g. llama3 on qwen2, whose graph takes no per-pair factors
            return Rule("unsupported", f"`--to gguf` refuses it: {refused}", "formats/gguf_rope.py gguf_rope")
        hf_converter_ok = k in (LINEAR, THETA, LLAMA3) or (k == YARN and not _yarn_custom(spec))
        note = "" if hf_converter_ok else "llama.cpp's own converter mis-writes this rope from the HF export"
        return Rule("flags", note, _LCPP, "ropeconvert ... --to gguf")
    raise KeyError(runtime)


def _gguf_refusal(spec: RopeSpec) -> str | None:
    """Why `--to gguf` cannot write this spec for its architecture (formats/gguf_rope.py), or None."""
    from ropeconvert.errors import UnsupportedError
    from ropeconvert.formats.gguf_rope import gguf_rope

    arch = MODEL_TYPES.get(spec.base.arch)
    try:
        gguf_rope(spec, arch.gguf if arch is not None else "llama")
    except UnsupportedError as e:
        return e.problem
    return None


def _local_rope_rule(runtime: str, spec: RopeSpec, gguf_arch: str) -> Rule:
    """Gemma 3: only the global layers carry the extension; the sliding ones must keep rope_local_base_freq unscaled.
    vLLM, SGLang, mlx-lm and mistral.rs all build the sliding layers' rope that way (tests/test_runtimes.py measures
    both layer types); they differ in how they build the global rope and how long a prompt they allow. None of them
    multiplies max_position_embeddings by the factor for Gemma 3, so a linear export carries the target there
    (formats/hf_config.py) and runs to it unflagged; a dynamic one keeps the original, transformers' NTK threshold."""
    k, custom_attention = spec.kind, "attention_factor" in spec.params
    L, N = spec.original_context, spec.target_context
    same = spec.short_factors is None or tuple(spec.short_factors) == tuple(spec.factors or ())
    amx = "; on SGLang's CPU backend with AMX (Gemma3Attention.forward_cpu) the global layers run unscaled"
    if runtime == "vllm":
        if k == DYNAMIC:  # max_position_embeddings stays the original length here (formats/hf_config.py)
            return Rule("unsupported", f"DynamicNTKScalingRotaryEmbedding bakes one {L}-row table at the original "
                        f"base; vLLM's gemma3 takes max_position_embeddings ({L}) as max_model_len without the factor, "
                        f"and its sliding layers' rope table has {L} rows (IndexError past it): use --method yarn or "
                        "ntk", _VLLM_G3 + "; " + _VLLM_G3_LEN)
        if k in (LONGROPE, PER_PAIR):  # as for other archs: max_model_len defaults to the original length
            return Rule("flags" if same else "partial", "" if same else "uses the long factors at every length "
                        f"(transformers: short ones up to {L} tokens)", _VLLM_G3 + "; phi3_long_rope_scaled_rope.py",
                        f"--max-model-len {N}")
        return Rule("exact", "", _VLLM_G3 + "; " + _VLLM_G3_LEN + ("; " + _VLLM_G3_TABLE if k == LINEAR else ""))
    if runtime == "sglang":
        scaled = amx[2:] if k != THETA else ""
        if k == DYNAMIC:  # the base is recomputed in Python, which a replayed CUDA graph does not run
            return Rule("flags", f"derives a context length of {L} (max_position_embeddings, the original: "
                        "transformers' dynamic threshold); its rope recomputes the base in Python "
                        "(_dynamic_frequency_update), which CUDA-graph decode would not rerun (read, not measured)"
                        + amx, _SGL_G3 + "; " + _SGL_G3_LEN,
                        f"SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1 --context-length {N} --disable-cuda-graph")
        if k in (LONGROPE, PER_PAIR) and not same:
            return Rule("partial", f"uses the short factors at every length (no long/short switch; transformers: "
                        f"long ones past {L} tokens){amx}", _SGL_G3)
        return Rule("exact", scaled, _SGL_G3 + ("; " + _SGL_G3_LEN if k == LINEAR else ""))
    if runtime == "mlx-lm":  # the global layers run the same initialize_rope as the other archs
        if k in (LONGROPE, PER_PAIR):
            from ropeconvert.convert.methods.longrope import su_attention_factor

            why = [] if same else [f"uses the long factors at every length (transformers: short ones up to {L} "
                                   "tokens)"]
            if abs(spec.attention_factor - su_attention_factor(spec.scale, L)) > 1e-9:
                why.append(f"applies its own attention factor √(1 + ln s/ln L), not {spec.attention_factor:g}")
            if why:
                return Rule("partial", "SuScaledRoPE " + " and ".join(why), _MLX_G3 + " → SuScaledRoPE")
            return Rule("exact", "", _MLX_G3 + " → SuScaledRoPE")
        if k == YARN and custom_attention and "mscale" not in _yarn_written(spec):
            return Rule("partial", "ignores this attention factor (it has no mscale form)", _MLX_G3 + " → YarnRoPE")
        return Rule("exact", "", _MLX_G3)
    if runtime == "mistral.rs":
        if k in (THETA, LINEAR):  # its limit is max_position_embeddings: the target for both (formats/hf_config.py)
            return Rule("flags", _MRS_G3_NOTE, _MRS_G3, _MRS_G3_FLAGS)
        return Rule("unsupported", f"its Gemma 3 config takes rope_scaling type linear only (refuses "
                    f"{_hf_type(k)!r}): use --method ntk", _MRS_G3)
    if runtime == "llama.cpp":  # what `--to gguf` writes for this arch, or its refusal (formats/gguf_rope.py)
        from ropeconvert.errors import UnsupportedError
        from ropeconvert.formats.gguf_rope import gguf_rope

        if k == DYNAMIC:
            return Rule("unsupported", "llama.cpp has no dynamic NTK: `--to gguf --static` bakes NTK at the target",
                        "formats/gguf_rope.py")
        try:
            gguf_rope(spec, gguf_arch)
        except UnsupportedError as e:
            return Rule("unsupported", f"`--to gguf` refuses it: {e.problem}", "formats/gguf_rope.py gguf_rope")
        return Rule("flags", "", "formats/gguf_rope.py; formats/gemma3.py", "ropeconvert ... --to gguf")
    raise KeyError(runtime)


def _hf_type(k: str) -> str:
    return "longrope" if k == PER_PAIR else k  # the generic per-pair HF form is a longrope dict


def _yarn_custom(spec: RopeSpec) -> bool:
    p = spec.params
    return any(k in p for k in ("attention_factor", "mscale")) or (p.get("beta_fast"), p.get("beta_slow")) != (32.0, 1.0)


def _yarn_written(spec: RopeSpec) -> dict[str, Any]:
    from ropeconvert.convert.methods.yarn import attention_as_mscale

    return attention_as_mscale(float(spec.params["attention_factor"]), float(spec.params["factor"]))


def runtime_rows(spec: RopeSpec) -> dict[str, dict[str, str]]:
    """The `runtimes` section of ropeconvert.json."""
    return {name: asdict(rule(name, spec)) for name in RUNTIMES}


def export_warnings(spec: RopeSpec) -> list[str]:
    """One line per runtime that cannot run this export exactly, naming what would work there (the CLI prints
    lines starting RUNTIME as warnings)."""
    out = []
    for name in RUNTIMES:
        r = rule(name, spec)
        if r.status in ("partial", "unsupported"):
            what = f"cannot run {spec.method}" if r.status == "unsupported" else f"runs {spec.method} differently"
            out.append(f"RUNTIME: {LABELS[name]} {what} — {r.note}")
    return out


def cell(r: Rule) -> str:
    """One cell of the model card's and check-runtimes' table."""
    text = {"exact": "✔ exact", "flags": "✔ with flags", "partial": "≈ differs", "unsupported": "✘ not supported"}
    out = text[r.status]
    if r.flags:
        out += f" `{r.flags}`"
    return out + (f": {r.note}" if r.note else "")


def runs_in_section(spec: dict[str, Any] | None, recorded: dict[str, Any] | None, kind_of_export: str) -> str:
    """The model card's "Runs in" table: the export's own row of the tested matrix (README "Runtime
    compatibility"), from the manifest's `runtimes` section when it has one."""
    if not spec:
        return ""
    if kind_of_export == "gguf":
        rows = [("llama.cpp", "✔ exact: the rope is in the GGUF metadata" if spec.get("position_map") is None
                 else "≈ a `rope_freqs` approximation of the position map")]
    else:
        if not isinstance(recorded, dict) or set(recorded) != set(RUNTIMES):
            recorded = runtime_rows(RopeSpec.from_dict(spec))
        rows = [(LABELS[n], cell(Rule(**{k: str(recorded[n].get(k, "")) for k in ("status", "note", "source", "flags")})))
                for n in RUNTIMES]
    body = "\n".join(f"| {name} | {text} |" for name, text in rows)
    return ("## Runs in\n\nWhether each runtime computes this export's rope exactly as transformers does (ropeconvert's "
            "per-runtime rules, tested against each runtime's own rope code; `ropeconvert check-runtimes DIR` "
            "measures the ones installed):\n\n"
            "| runtime | this export |\n|---|---|\n" + body)
