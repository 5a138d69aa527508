"""Parity: the GGUF export run by llama.cpp vs the HF export run by transformers, on the same token ids.

Both score every next token of one sequence ([BOS] + corpus text) in a single window; we report the perplexity
of each, their ratio (GGUF / HF), top-1 agreement and the largest per-token NLL difference. By default the sequence
runs 1024 tokens past the original context (capped at the target), where a rope written wrongly for one runtime
shows up. The result is merged into the GGUF's report (`<name>.report/report.json`), so the model card shows it;
its checks, table rows and card section are the registered parity task's (parity_task.py).

transformers runs first. When llama.cpp then crashes (validators/llamacpp.py runs it in a child process), the
transformers half is still written — the GGUF's numbers null and `crashed` saying why — before the crash is
raised as the one-line error (exit 2) naming that report.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ropeconvert.errors import InputError
from ropeconvert.validators import report as R

PAST_ORIGINAL = 1024


def measure(hf_dir: Path, gguf: Path, ids: list[int], device: str | None = None):
    """(parity dict, None), or (the transformers half with the llama.cpp half null, the LlamaCppCrash)."""
    from ropeconvert.validators import llamacpp, runtime
    from ropeconvert.validators.perplexity import token_nll

    rt = runtime.load(hf_dir, device=device)
    try:
        nll_hf, top_hf = token_nll(rt.model, ids, want_top1=True)
    finally:
        rt.close()
    ppl_hf = float(np.exp(nll_hf.mean()))
    names = {"hf": Path(hf_dir).name, "gguf": Path(gguf).name}  # reports are published: no machine paths
    try:
        result = llamacpp.gguf_eval(Path(gguf), ids)
    except llamacpp.LlamaCppCrash as crash:
        return {"ppl_hf": ppl_hf, "ppl_gguf": None, "ratio": None, "top1_agreement": None, "tokens": len(ids),
                "max_abs_nll_diff": None, **names, "crashed": crash.problem}, crash
    nll_gg, top_gg = result.nll, result.top1
    ppl_gg = float(np.exp(nll_gg.mean()))
    return {"ppl_hf": ppl_hf, "ppl_gguf": ppl_gg, "ratio": ppl_gg / ppl_hf,
            "top1_agreement": float((top_hf == top_gg).mean()), "tokens": len(ids),
            "max_abs_nll_diff": float(np.abs(nll_hf - nll_gg).max()), **names}, None


def parity(hf_dir: Path, gguf: Path, *, tokens: int | None = None, corpus: str = "austen",
           device: str | None = None) -> tuple[dict[str, Any], Path]:
    """Measure, merge into the GGUF's report (creating one if needed), return (parity, report path)."""
    from transformers import AutoTokenizer

    from ropeconvert.validators import corpus as C
    from ropeconvert.validators.export_info import export_info

    hf_dir, gguf = Path(hf_dir).expanduser().absolute(), Path(gguf).expanduser().absolute()
    kind_hf, spec_hf, _ = export_info(hf_dir)
    kind_gg, spec_gg, _ = export_info(gguf)
    if kind_hf != "hf" or kind_gg != "gguf":
        raise InputError("--parity takes an HF export directory then a .gguf file", "ropeconvert validate --parity HF_DIR GGUF")
    spec = spec_gg or spec_hf
    if tokens is None:
        from ropeconvert.formats.hf_config import base_rope_from_config
        from ropeconvert.formats.source import read_config

        original = base_rope_from_config(read_config(hf_dir)).original_context
        tokens = original + PAST_ORIGINAL if not spec else min(spec["target_context"], original + PAST_ORIGINAL)
    if tokens < 2:
        raise InputError(f"--tokens must be ≥ 2, got {tokens}")
    tok = AutoTokenizer.from_pretrained(hf_dir)
    doc = max(C.load(corpus), key=lambda d: len(d.text))
    ids = tok(doc.text[:tokens * 12], add_special_tokens=False).input_ids[:tokens - 1]
    ids = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + ids
    if len(ids) < tokens:
        raise InputError(f"the {corpus} corpus has only {len(ids)} tokens in its longest document", "lower --tokens")
    result, crash = measure(hf_dir, gguf, ids, device)
    path = _merge(gguf, spec_gg, result, corpus, doc.name, device)
    if crash is not None:
        raise crash.kept(path, "the transformers results (HF perplexity)")
    return result, path


def _merge(gguf: Path, spec: dict[str, Any] | None, result: dict[str, Any], corpus: str, doc: str,
           device: str | None) -> Path:
    from ropeconvert.validators.runtime import pick_device
    from ropeconvert.validators.validate import _runtime_info

    out_dir = R.report_dir_for(gguf)
    existing = out_dir / "report.json"
    if existing.is_file():
        report = json.loads(existing.read_text())
        R.check_schema(report)
    else:
        dev, dtype = pick_device(device)
        report = {"schema": R.SCHEMA_ID, "export": gguf.name, "base": None, "spec": spec,
                  "runtime": _runtime_info({"device": str(dev), "dtype": str(dtype).replace("torch.", ""),
                                            "engine": "llama.cpp"}),
                  "corpus": {"name": corpus, "documents": [doc]}, "tasks": {}, "checks": []}
    report["created"] = R.now()
    report["tasks"]["parity"] = result
    original = report.get("original_context") or (spec or {}).get("base", {}).get("original_context")
    report["checks"] = R.checks(report["tasks"], original)
    return R.write(report, out_dir, R.figures(report["tasks"], original, report.get("target_context")))
