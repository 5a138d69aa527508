"""report.json (schema: validators/report_schema.json), PNG plots and report.md — the evidence the model card reuses.

An HF export keeps its report inside its directory; a GGUF export gets `<name>.report/` beside the file. The report
is validated against the schema before anything is written, and written under temporary names then renamed, so a
reader never sees a half-written report.
"""
from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ropeconvert.errors import InputError

SCHEMA_ID = "ropeconvert.report/1"
SHORT_CONTEXT_TOLERANCE = 1.5  # extended ppl within the original context may be at most this × the base's
PARITY_RATIO = (0.95, 1.05)
PARITY_TOP1 = 0.90


def schema() -> dict[str, Any]:
    return json.loads(resources.files("ropeconvert.validators").joinpath("report_schema.json").read_text())


def check_schema(report: dict[str, Any]) -> None:
    import jsonschema

    try:
        jsonschema.validate(report, schema())
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise InputError(f"report does not follow {SCHEMA_ID} at {where}: {e.message[:160]}") from None


def report_dir_for(export: Path) -> Path:
    export = Path(export)
    return export if export.is_dir() else export.with_name(export.stem + ".report")


def now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# ---- checks -----------------------------------------------------------------------------------------------------
def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "detail": detail}


def checks(tasks: dict[str, Any], original: int | None) -> list[dict[str, Any]]:
    """The pass/fail rules documented in report_schema.json."""
    out = []
    orig = original or 0
    if (t := tasks.get("ppl")) is not None:
        ext = [(n, e) for n, e in zip(t["lengths"], t["extended"]) if e is not None]
        bad = [n for n, e in ext if not math.isfinite(e)]
        out.append(_check("ppl_finite", ext and not bad, f"non-finite at {bad}" if bad else
                          (f"{len(ext)} lengths finite" if ext else "no length could be measured")))
        pairs = [(n, b, e) for n, b, e in zip(t["lengths"], t["base"], t["extended"]) if b is not None and e is not None]
        far = [(n, b, e) for n, b, e in pairs if n > orig]
        if far:
            worse = [n for n, b, e in far if not e < b]
            out.append(_check("ppl_extended_below_base", not worse, "; ".join(
                f"{n}: {e:.3g} vs base {b:.3g}" for n, b, e in far)))
        near = [(n, b, e) for n, b, e in pairs if n <= orig]
        if near:
            worse = [n for n, b, e in near if not e <= SHORT_CONTEXT_TOLERANCE * b]
            out.append(_check("ppl_short_context_kept", not worse, "; ".join(
                f"{n}: {e:.3g} vs base {b:.3g} (limit ×{SHORT_CONTEXT_TOLERANCE:g})" for n, b, e in near)))
    if (t := tasks.get("passkey")) is not None:
        rows = [(n, float(np.mean(b)), float(np.mean(e))) for n, b, e in zip(t["lengths"], t["base"], t["extended"])]
        out += _not_worse("passkey_not_worse", [r for r in rows if r[0] > orig])
    if (t := tasks.get("niah")) is not None:
        rows = [(n, b, e) for n, b, e in zip(t["lengths"], t["base"], t["extended"]) if b is not None and e is not None]
        out += _not_worse("niah_not_worse", [r for r in rows if r[0] > orig])
    if (p := tasks.get("parity")) is not None:
        lo, hi = PARITY_RATIO
        out.append(_check("parity_ppl_ratio", lo <= p["ratio"] <= hi,
                          f"llama.cpp/transformers perplexity {p['ratio']:.4f} (allowed {lo}–{hi})"))
        out.append(_check("parity_top1", p["top1_agreement"] >= PARITY_TOP1,
                          f"top-1 agreement {p['top1_agreement']:.3f} over {p['tokens']} tokens (≥ {PARITY_TOP1})"))
    return out


def _not_worse(name: str, rows: list[tuple[int, float, float]]) -> list[dict[str, Any]]:
    if not rows:
        return []
    worse = [n for n, b, e in rows if e < b]
    gained = any(e > b for _, b, e in rows) or all(e == 1.0 for _, _, e in rows)
    detail = "; ".join(f"{n}: {e:.0%} vs base {b:.0%}" for n, b, e in rows)
    if not worse and not gained:
        detail += " (no length improves on the base)"
    return [_check(name, not worse and gained, detail)]


# ---- plots ------------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_ppl(t: dict[str, Any], original: int | None, target: int | None = None):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for key, style in (("base", "o--"), ("extended", "s-")):
        xs = [n for n, v in zip(t["lengths"], t[key]) if v is not None]
        ys = [v for v in t[key] if v is not None]
        if ys:
            ax.plot(xs, ys, style, label=key)
    if original:
        ax.axvline(original, color="grey", linestyle=":", label=f"original context ({original})")
    if target:
        ax.axvline(target, color="tab:green", linestyle="-.", alpha=0.6, label=f"target context ({target})")
    finite = [v for k in ("base", "extended") for v in t[k] if v is not None and math.isfinite(v)]
    if finite and max(finite) / max(min(finite), 1e-9) > 20:
        ax.set_yscale("log")  # an unscaled model's blow-up would otherwise flatten the extended curve
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title("Perplexity vs length")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_passkey(t: dict[str, Any], original: int | None):
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.2 + 0.25 * len(t["lengths"])), dpi=110, sharey=True)
    for ax, key in zip(axes, ("base", "extended")):
        grid = np.asarray(t[key], dtype=float)
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(t["depths"])), [f"{d:g}" for d in t["depths"]])
        ax.set_yticks(range(len(t["lengths"])), [str(n) for n in t["lengths"]])
        ax.set_xlabel("passkey depth (fraction of the context)")
        ax.set_title(f"{key} ({t['trials']} trial{'s' if t['trials'] != 1 else ''} per cell)")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=8)
        if original:
            # rows past the original context begin below this line
            k = sum(n <= original for n in t["lengths"])
            ax.axhline(k - 0.5, color="black", linewidth=2, label=f"original context ({original})")
    axes[0].set_ylabel("context length (tokens)")
    axes[1].legend(loc="upper right", fontsize=7)
    fig.colorbar(im, ax=axes, label="accuracy")
    return fig


def plot_niah(t: dict[str, Any], original: int | None):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for key, style in (("base", "o--"), ("extended", "s-")):
        ax.plot(t["lengths"], t[key], style, label=key)
    if original:
        ax.axvline(original, color="grey", linestyle=":", label=f"original context ({original})")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needles recalled (fraction of 4)")
    ax.set_title("4-needle retrieval")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def figures(tasks: dict[str, Any], original: int | None, target: int | None) -> dict[str, Any]:
    out = {}
    if "ppl" in tasks:
        out["ppl"] = plot_ppl(tasks["ppl"], original, target)
    if "passkey" in tasks:
        out["passkey"] = plot_passkey(tasks["passkey"], original)
    if "niah" in tasks:
        out["niah"] = plot_niah(tasks["niah"], original)
    return out


# ---- markdown ---------------------------------------------------------------------------------------------------
def table_rows(tasks: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(task, length, base, extended) rows: the side-by-side table printed by the CLI and written to report.md."""
    rows = []
    if (t := tasks.get("ppl")) is not None:
        rows += [("perplexity", str(n), _f(b), _f(e)) for n, b, e in zip(t["lengths"], t["base"], t["extended"])]
    if (t := tasks.get("passkey")) is not None:
        rows += [("passkey", str(n), f"{np.mean(b):.0%}", f"{np.mean(e):.0%}")
                 for n, b, e in zip(t["lengths"], t["base"], t["extended"])]
    if (t := tasks.get("niah")) is not None:
        rows += [("4-needle", str(n), _pct(b), _pct(e)) for n, b, e in zip(t["lengths"], t["base"], t["extended"])]
    if (p := tasks.get("parity")) is not None:
        rows += [("parity ppl (HF | GGUF)", str(p["tokens"]), _f(p["ppl_hf"]), _f(p["ppl_gguf"])),
                 ("parity top-1 agreement", str(p["tokens"]), "", f"{p['top1_agreement']:.1%}")]
    return rows


def markdown(report: dict[str, Any]) -> str:
    rt = report["runtime"]
    lines = ["## Validation (ropeconvert)", "",
             f"Base `{report['base']}` vs extended `{Path(report['export']).name}`, measured on "
             f"{rt.get('engine', 'transformers')} ({rt['device']}, {rt['dtype']}) with the {report['corpus']['name']} "
             f"corpus ({len(report['corpus']['documents'])} documents), {report['created']}.", "",
             "| task | length | base | extended |", "|---|---:|---:|---:|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in table_rows(report["tasks"])]
    lines += ["", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {c['name']} | {'pass' if c['passed'] else '**FAIL**'} | {c['detail']} |" for c in report["checks"]]
    lines += ["", f"Overall: **{'passed' if report['passed'] else 'failed'}**."]
    for name, file in report["plots"].items():
        lines += ["", f"![{name}]({file})"]
    return "\n".join(lines) + "\n"


def _f(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}" if v < 1000 else f"{v:.4g}"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.0%}"


# ---- writing ----------------------------------------------------------------------------------------------------
def write(report: dict[str, Any], out_dir: Path, figs: dict[str, Any]) -> Path:
    """Validate, then write the plots, report.md and report.json (last, so its presence means complete)."""
    report = dict(report, plots={name: f"{name}.png" for name in figs}, markdown="report.md")
    report["tasks"] = _finite(report["tasks"])  # JSON has no NaN/inf: null, and the ppl_finite check says why
    report["checks"] = report.get("checks") or []
    report["passed"] = bool(report["checks"]) and all(c["passed"] for c in report["checks"])
    check_schema(report)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    for name, fig in figs.items():
        tmp = out_dir / f".{name}.png.tmp"
        fig.savefig(tmp, format="png")
        plt.close(fig)
        os.replace(tmp, out_dir / f"{name}.png")
    _atomic_text(out_dir / "report.md", markdown(report))
    _atomic_text(out_dir / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    return out_dir / "report.json"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
