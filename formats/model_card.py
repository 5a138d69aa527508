"""The model card (README.md) published with an export: YAML front matter for the Hub, and a body that shows the
evidence — what was done, the exact rope written, base vs extended measurements and plots, how to run it, and the
one command that rebuilds it.

Every number and plot in the validation section comes from the export's report.json (the validators' output); the
card never measures, rounds away or invents anything. Rendering is deterministic (no clock, no host names), so an
unchanged export renders the same bytes and re-publishing it makes no commit.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ropeconvert import __version__
from ropeconvert.formats.hub_base import snapshot_revision
from ropeconvert.formats.hub_export import Publication

WARNINGS = {
    "missing": "**Not validated.** No perplexity, passkey or parity measurements were made on this export; it was "
               "published with `--skip-validation`. Treat it as untested.",
    "stale": "**Not validated.** The validation report on disk was made for a different rope than this export "
             "carries, so it is not shown; the export was published with `--skip-validation`. Treat it as untested.",
    "unextended": "**Not validated for the extension.** Every measurement was made within the base's original "
                  "context, so nothing here shows the extended context works; it was published with "
                  "`--skip-validation`. Treat it as untested past the original length.",
    "failed": "**Validation failed** ({detail}). This export was published anyway with `--skip-validation`; the "
              "measurements below show where it falls short.",
}


def render_card(export: Publication, *, repo_id: str, base_id: str | None, license_fields: dict[str, str],
                license_note: str | None) -> str:
    spec = export.spec or {}
    meta: dict[str, Any] = {}
    if base_id:
        meta["base_model"] = base_id
    meta.update(license_fields)
    meta["library_name"] = "gguf" if export.kind == "gguf" else "transformers"
    meta["pipeline_tag"] = "text-generation"
    method = spec.get("method")
    meta["tags"] = ["context-extension", "rope", *([method] if method else []), "ropeconvert",
                    *(["gguf"] if export.kind == "gguf" else [])]
    parts = ["---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---", f"# {repo_id.split('/')[-1]}"]
    parts.append(_intro(export, spec, base_id))
    if export.status != "passed":
        parts.append("> [!WARNING]\n> " + WARNINGS[export.status].format(detail=export.status_detail))
    if license_note:
        parts.append(f"> [!NOTE]\n> {license_note}")
    parts += [_what_was_done(export, spec), _rope_written(export), _runs_in(export)]
    if export.report is not None and export.status in ("passed", "failed", "unextended"):
        parts.append(_validation(export.report))
    parts += [_how_to_run(export, spec, repo_id), _reproduce(export, spec, base_id)]
    return "\n\n".join(p for p in parts if p) + "\n"


def base_label(export: Publication, base_id: str | None) -> str:
    """How the card names the base: its Hub id, else what the export recorded — never a machine path (exports
    written before paths were dropped may still hold one: only its last component is shown)."""
    if base_id:
        return base_id
    source = export.provenance.get("source")
    if not isinstance(source, str) or not source:
        return "a local model"
    if source.startswith(("/", "~", ".")) or "\\" in source or Path(source).is_absolute():
        return f"a local model ({Path(source.rstrip('/')).name})"
    return source


def _intro(export: Publication, spec: dict[str, Any], base_id: str | None) -> str:
    base = base_label(export, base_id)
    version = export.provenance.get("ropeconvert_version", __version__)
    if not spec:
        return f"A context-extended version of **{base}**, written by ropeconvert {version}."
    info = _method_info(spec["method"])
    link = f"[{spec['method']}]({info.paper})" if info else spec["method"]
    return (f"**{base}** with its context extended from **{_n(_orig(spec))}** to **{_n(spec['target_context'])}** "
            f"tokens ({_num(spec['target_context'] / _orig(spec))}×) using {link}, written by ropeconvert {version}.")


def _what_was_done(export: Publication, spec: dict[str, Any]) -> str:
    rows = []
    if spec:
        info = _method_info(spec["method"])
        rows.append(("method", f"`{spec['method']}`" + (f" — {info.summary} ([paper]({info.paper}))" if info else "")))
        params = spec.get("params") or {}
        if "factor" in params:
            rows.append(("factor s", _num(params["factor"])))
        rows.append(("context", f"{_n(_orig(spec))} → {_n(spec['target_context'])} tokens"))
        base_theta = (spec.get("base") or {}).get("rope_theta")
        theta = _num(spec["rope_theta"]) if base_theta in (None, spec["rope_theta"]) else \
            f"{_num(base_theta)} → {_num(spec['rope_theta'])}"
        rows.append(("rope_theta", theta))
        rows.append(("attention factor", _num(spec.get("attention_factor", 1.0))))
        on = params.get("stacked_on")
        if isinstance(on, dict):  # --stack: the source's own scaling, kept underneath (convert/stack.py)
            rows.append(("stacked on", f"the source's `{on.get('method')}` scaling ({_n(on.get('original_context'))} → "
                                       f"{_n(on.get('target_context'))} tokens); per-pair divisors multiplied"))
        knobs = {k: v for k, v in params.items() if k not in ("factor", "stacked_on")}
        if knobs:
            rows.append(("method settings", ", ".join(f"{k}={_num(v)}" for k, v in knobs.items())))
    rows.append(("weights", export.provenance.get("weights_origin") or (
        "copied from the source unchanged; only the rope configuration differs" if export.kind == "hf" else
        "converted from the source by ropeconvert")))
    for note in export.provenance.get("notes") or []:
        rows.append(("note", str(note)))
    return "## What was done\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _rope_written(export: Publication) -> str:
    if export.kind == "hf":
        body = json.dumps(export.rope_config, indent=2)
        return f"## Rope configuration written\n\nFrom `config.json`, exactly as runtimes read it:\n\n```json\n{body}\n```"
    lines = [f"{k} = {json.dumps(v)}" for k, v in export.rope_config.items()]
    return ("## Rope configuration written\n\nGGUF metadata keys and rope tensors in the file, exactly as llama.cpp "
            "reads them:\n\n```text\n" + "\n".join(lines) + "\n```")


def _runs_in(export: Publication) -> str:
    from ropeconvert.formats.runtimes import runs_in_section

    return runs_in_section(export.spec, export.provenance.get("runtimes"), export.kind)


def _validation(report: dict[str, Any]) -> str:
    rt, corpus = report.get("runtime") or {}, report.get("corpus") or {}
    docs = corpus.get("documents")
    engine = rt.get("engine", "transformers")
    if engine == "llama.cpp" and rt.get("llama_cpp_python"):
        engine += f" (llama-cpp-python {rt['llama_cpp_python']})"
    out = ["## Validation: base vs extended",
           f"Measured by ropeconvert with {engine} on {rt.get('device', '?')} ({rt.get('dtype', '?')}), torch "
           f"{rt.get('torch', '?')}, transformers {rt.get('transformers', '?')}, on the {corpus.get('name', '?')} corpus "
           f"({len(docs) if isinstance(docs, list) else docs} documents); base `{report.get('base')}`; report created "
           f"{report.get('created', '?')}. All numbers below are from [report.json](report.json)."]
    registered = _registered(report.get("tasks") or {})
    for task, record in reversed(registered):  # the headlines first (RULER's effective lengths), in task order
        out[1:1] = [f"**{line}**" for line in task.summary(record)[:1]]
    out += [section for task, record in registered if (section := task.card(record))]
    if isinstance(report.get("selection"), dict):  # --method auto: every candidate's scores, the rule, the winner
        from ropeconvert.convert.auto_report import markdown as selection

        out.append("### How the method was chosen (`--method auto`)\n\n" + selection(report["selection"]).strip())
    if report.get("checks"):
        out.append("### Checks\n\n" + _table(["check", "result", "detail"], [
            [str(c.get("name")), "pass" if c.get("passed") else "**FAIL**", str(c.get("detail", ""))]
            for c in report["checks"]]))
    from ropeconvert.validators.task_registry import all_tasks

    titles = {task.name: task.title for task in all_tasks()}
    for name, file in (report.get("plots") or {}).items():
        out.append(f"![{titles.get(name, name)}]({file})")
    return "\n\n".join(out)


def _registered(tasks: dict[str, Any]) -> list:
    """(task, record) for the validation tasks in the report (validators/task_registry.py); a record that does not
    have the shape its task renders is left out rather than breaking the card (the report was schema-checked when
    written)."""
    from ropeconvert.validators.task_registry import in_report

    out = []
    for task, record in in_report(tasks):
        try:
            task.summary(record), task.card(record)
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        out.append((task, record))
    return out


def _how_to_run(export: Publication, spec: dict[str, Any], repo_id: str) -> str:
    target = spec.get("target_context") or export.rope_config.get("max_position_embeddings")
    dpe = spec.get("kind") == "position_map" or spec.get("position_map") is not None
    if export.kind == "gguf":
        text = ("## How to run\n\nllama.cpp reads the rope scaling from the GGUF metadata; only the context size is "
                f"yours to set:\n\n```sh\nllama-cli -hf {repo_id} -c {target}\n"
                f"llama-server -m {export.path.name} -c {target}   # a downloaded copy\n```")
        if dpe:
            text += ("\n\n> [!WARNING]\n> llama.cpp cannot run DPE exactly: this GGUF carries a `rope_freqs` "
                     "*approximation* of it. Use the HF export with transformers for the real method.")
        return text
    lines = ["import ropeconvert  # registers the DPE attention this export needs (ropeconvert from its source tree)"] \
        if dpe else []
    lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
              f'model = AutoModelForCausalLM.from_pretrained("{repo_id}", dtype="auto", device_map="auto")',
              f"# the rope scaling is in config.json: prompts up to {target} tokens need no extra flags"]
    text = "## How to run\n\n```python\n" + "\n".join(lines) + "\n```"
    if not dpe:
        text += f"\n\nvLLM reads the same config:\n\n```sh\nvllm serve {repo_id} --max-model-len {target}\n```"
    return text


def _reproduce(export: Publication, spec: dict[str, Any], base_id: str | None) -> str:
    if not spec:
        return ""
    prov = export.provenance
    name, revision = prov.get("source_name"), prov.get("source_revision")
    from ropeconvert.formats.source import is_public_name

    local = None
    if is_public_name(name):
        source = name  # an alias or Hub id, as typed: readers get the same model
    elif base_id:  # a local copy of a Hub model (its cache snapshot names the commit): readers fetch the same
        source, revision = base_id, revision or snapshot_revision(prov.get("source"))
    else:  # a local model readers do not have: say which, by name only
        local = Path(str(name or "BASE_MODEL").rstrip("/")).name
        source = f"./{local}"
    args = ["ropeconvert", _quote(str(source)), "--method", spec["method"]]
    params = dict(spec.get("params") or {})
    if isinstance(params.get("stacked_on"), dict):
        args.append("--stack")
    info = _method_info(spec["method"])
    for key in (info.params if info else []):
        value = params.get(key)
        if key in ("factors", "short_factors"):
            if key == "factors":  # files are not in the export; its own config carries the exact factors
                args += ["--factors", "config.json" if export.kind == "hf" else "FACTORS.json"]
        elif isinstance(value, bool):
            args += [f"--{key.replace('_', '-')}"] if value else []
        elif value is not None:
            args += [f"--{key.replace('_', '-')}", _num(value)]
    args += ["--original-context", str(_orig(spec))]
    if revision:
        args += ["--revision", str(revision)]
    args += ["--to", export.kind, "--out", _quote(export.path.name)]
    version = prov.get("ropeconvert_version", __version__)
    text = (f"## Reproduce\n\nWith ropeconvert {version} (installed from its source tree: `pip install .`; it is not "
            f"published on PyPI):\n\n```sh\n" + " ".join(args) + "\n```")
    if local:
        text += f"\n\n`./{local}` stands for the local model this export was made from; it is not on the Hub."
    if spec.get("kind", spec["method"]) == "longrope":
        text += "\n\n`--factors` reads the long/short factors from this repository's rope configuration above."
    return text


def _method_info(method: str):
    from ropeconvert.convert.methods import METHODS

    return METHODS.get(method) if method in METHODS else None


def _orig(spec: dict[str, Any]) -> int:
    return int((spec.get("base") or {}).get("original_context") or spec.get("original_context"))


def _table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(r) + " |" for r in rows])


def _n(v) -> str:
    return "—" if v is None else f"{int(v):,}"


def _num(v: Any) -> str:
    """A float exactly as given (repr round-trips), without a trailing .0."""
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    return str(v)


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)
