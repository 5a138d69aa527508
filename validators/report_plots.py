"""The report's PNG plots: perplexity, passkey and 4-needle accuracy against length, base vs extended, with the
original (and target) context marked; the RULER heatmap (tasks × lengths). Each task's `figure` picks its plot."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _finish_curve(fig, ax, ylabel: str, title: str):
    """The shared frame of a metric-vs-length curve: axis labels, title, legend, light grid."""
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


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
    return _finish_curve(fig, ax, "perplexity (lower is better)", "Perplexity vs length")


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
            ax.text(j, i, f"{v:.0%}" if v == v else "—", ha="center", va="center", fontsize=8)  # NaN: not measured
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
    return _finish_curve(fig, ax, "needles recalled (fraction of 4)", "4-needle retrieval")


def figures(tasks: dict[str, Any], original: int | None, target: int | None) -> dict[str, Any]:
    """{plot name: figure}: each registered task in the report draws its own (or none)."""
    from ropeconvert.validators.task_registry import in_report

    out = {}
    for task, record in in_report(tasks):
        if (fig := task.figure(record, original, target)) is not None:
            out[task.name] = fig
    return out


def plot_ruler(t: dict[str, Any], original: int | None):
    """RULER heatmap: tasks (and the average) × lengths, base and extended side by side, scores 0–100."""
    plt = _pyplot()
    names = [*t["tasks"], "average"]
    fig, axes = plt.subplots(1, 2, figsize=(5.0 + 1.6 * len(t["lengths"]), 2.0 + 0.32 * len(names)), dpi=110,
                             sharey=True, constrained_layout=True)  # room for the task names and the colour bar
    for ax, key in zip(axes, ("base", "extended")):
        rows = [t["scores"][key][n] for n in t["tasks"]] + [t["average"][key]]
        grid = np.asarray([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
        im = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(t["lengths"])), [str(n) for n in t["lengths"]])
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("context length (tokens)")
        ax.set_title(f"{key} ({t['samples_per_task']} sample{'s' if t['samples_per_task'] != 1 else ''} per cell)")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.0f}" if v == v else "—", ha="center", va="center", fontsize=7)  # NaN: not measured
        ax.axhline(len(t["tasks"]) - 0.5, color="black", linewidth=1)  # the average row below the line
        if original:
            k = sum(n <= original for n in t["lengths"])  # columns past the original context begin right of it
            ax.axvline(k - 0.5, color="black", linewidth=2, linestyle=":")
    if original:  # said in the title rather than a legend, which would cover a cell
        fig.suptitle(f"RULER scores (dotted line: original context, {original} tokens)", fontsize=9)
    fig.colorbar(im, ax=axes, label="RULER score")
    return fig
