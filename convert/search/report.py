"""What a search leaves in --out: factors.json (the main command's --factors input), search_log.json (every
evaluation) and search.png (best fitness vs evaluations, with the PI/NTK/YaRN lines evaluated in the same run)."""
from __future__ import annotations

import errno
import math
import os
from pathlib import Path

from ropeconvert.convert.search.checkpoint import write_json
from ropeconvert.convert.search.evolution import best_record
from ropeconvert.errors import OutputError

FACTORS, LOG, PLOT = "factors.json", "search_log.json", "search.png"


def phase_summary(pdata: dict) -> dict:
    st = pdata["state"]
    best = best_record(st)
    return {"evaluations": len(st["evaluations"]), "generations": st["generation"], "done": st["done"],
            "stop_reason": st["stop_reason"], "best_fitness": None if best is None else best["fitness"],
            "best_factors": None if best is None else best["factors"],
            "references": {k: v["fitness"] for k, v in pdata["references"].items()},
            "search_seconds": round(sum(r["seconds"] for r in st["evaluations"]), 3)}


def write_log(out: Path, data: dict, meta: dict) -> Path:
    """Every evaluation of every phase, in order, with its factors, fitness, time and generation."""
    phases = {}
    for name, pdata in data["phases"].items():
        evaluations = [{"index": i, **r} for i, r in enumerate(pdata["state"]["evaluations"])]
        phases[name] = {**meta.get("phases", {}).get(name, {}), "summary": phase_summary(pdata),
                        "references": pdata["references"], "best_history": pdata["state"]["best_history"],
                        "evaluations": evaluations}
    path = out / LOG
    write_json(path, {"settings": data["settings"], **{k: v for k, v in meta.items() if k != "phases"},
                      "phases": phases})
    return path


def write_factors(out: Path, data: dict, meta: dict) -> Path:
    """long_factor/short_factor plus what convert/factor_files.py reads (original/target context)."""
    settings = data["settings"]
    long_ = phase_summary(data["phases"]["long"])
    short = phase_summary(data["phases"]["short"]) if "short" in data["phases"] else None
    doc = {
        "long_factor": long_["best_factors"],
        "short_factor": None if short is None else short["best_factors"],
        "original_context": settings["original_context"],
        "target_context": settings["target_context"],
        "method": settings["method"],
        "fitness": long_["best_fitness"],
        "fitness_kind": meta["phases"]["long"]["fitness"],
        "short_fitness": None if short is None else short["best_fitness"],
        "attention_factor": meta.get("attention_factor"),
        "references": long_["references"],
        "evaluations": long_["evaluations"] + (0 if short is None else short["evaluations"]),
        "model": settings["model"],
        "seed": settings["seed"],
        "documents": meta.get("documents"),
        **{k: v for k, v in meta["phases"]["long"].items() if k in ("critical_dim", "search_range", "max_factor")},
    }
    path = out / FACTORS
    write_json(path, doc)
    return path


def plot(out: Path, data: dict, meta: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = list(data["phases"])
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        pdata = data["phases"][name]
        values = [r["fitness"] if r["fitness"] is not None else math.inf for r in pdata["state"]["evaluations"]]
        xs = list(range(1, len(values) + 1))
        best, run = [], math.inf
        for v in values:
            run = min(run, v)
            best.append(run)
        finite = [(x, v) for x, v in zip(xs, values) if math.isfinite(v)]
        if finite:
            ax.scatter(*zip(*finite), s=8, color="0.7", label="candidate", zorder=1)
        ax.step(xs, [b if math.isfinite(b) else float("nan") for b in best], where="post", color="C0", lw=2,
                label="best so far", zorder=3)
        for i, (ref, rec) in enumerate(pdata["references"].items()):
            if rec["fitness"] is not None:
                ax.axhline(rec["fitness"], ls="--", color=f"C{i + 1}", label=f"{ref} {rec['fitness']:.3f}")
        ref_values = [r["fitness"] for r in pdata["references"].values() if r["fitness"] is not None]
        shown = [v for v in values if math.isfinite(v)] + ref_values
        if shown and max(shown) / max(min(shown), 1e-9) > 20:
            ax.set_yscale("log")
        info = meta["phases"][name]
        kind = "needle perplexity" if info["fitness"] == "needle_ppl" else "perplexity"
        ax.set_xlabel("evaluations")
        ax.set_ylabel(f"{kind} @ {info['length']} tokens")
        ax.set_title(f"{data['settings']['method']} {name} factors")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / PLOT
    tmp = path.with_name(f".search.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        tmp.replace(path)
    except OSError as e:  # a full disk: the checkpoint and the other files are complete, the plot is not written
        tmp.unlink(missing_ok=True)
        raise OutputError(f"ran out of space writing {path}" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
                          else f"cannot write {path} ({e.strerror or type(e).__name__})",
                          "free some space or make --out writable, then continue with --resume") from None
    finally:
        plt.close(fig)
    return path
