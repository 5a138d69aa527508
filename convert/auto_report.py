"""--method auto's leaderboard beside the export: selection.json and selection.png in the export's report directory
(inside an HF export, `<name>.report/` beside a GGUF), the table validate's report.md and the model card show.

selection.json is not part of the export's manifest (formats/manifest.py REPORT_FILES): the model files are the
winner's export byte for byte. validate copies it into report.json as `selection`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ropeconvert.validators.task_registry import card_pct

FILE, PLOT = "selection.json", "selection.png"


def write(board: dict[str, Any], export: Path) -> Path:
    """selection.json and selection.png into the export's report directory, each written to a temporary name and
    renamed (they are report files, not exports: a rerun replaces them like validate replaces report.json)."""
    import io

    import matplotlib.pyplot as plt

    from ropeconvert.formats.export import report_dir_for

    out_dir = report_dir_for(export)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = figure(board)
    png = io.BytesIO()
    fig.savefig(png, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    for name, data in ((PLOT, png.getvalue()), (FILE, (json.dumps(board, indent=2, allow_nan=False) + "\n").encode())):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, out_dir / name)
    return out_dir / FILE


def read(report_dir: Path) -> dict[str, Any] | None:
    """The leaderboard an auto run left in `report_dir`, or None."""
    from ropeconvert.formats.safe_io import read_json

    path = Path(report_dir) / FILE
    if not path.exists():
        return None
    data = read_json(path, "auto leaderboard", f"delete {path} or re-run --method auto")
    return data if isinstance(data, dict) and isinstance(data.get("candidates"), list) else None


def rows(board: dict[str, Any]) -> list[list[str]]:
    """One row per candidate (and the base first): method, ppl at target, ppl at original, passkey, guard, note."""
    out = [["base (no extension)", _f(board["base"].get("ppl_target")), _f(board["base"].get("ppl_original")),
            card_pct(board["base"].get("passkey_target")), "—", ""]]
    for c in board["candidates"]:
        name = f"**{c['method']}** (winner)" if c["method"] == board["winner"] else c["method"]
        if "error" in c:
            out.append([name, "—", "—", "—", "—", f"not measured: {c['error']}"])
            continue
        guard = {True: "kept", False: "out", None: "—"}[c.get("short_guard")]
        out.append([name, _f(c["ppl_target"]), _f(c["ppl_original"]), card_pct(c["passkey_target"]), guard,
                    c.get("origin", "")])
    return out


def markdown(board: dict[str, Any]) -> str:
    s = board["settings"]
    head = ["candidate", f"ppl @ {s['target_context']}", f"ppl @ {s['original_context']}",
            f"passkey @ {s['target_context']}", "short guard", "knobs from"]
    lines = [f"Chosen by `--method auto`: **{board['winner']}** — {board['reason']}.", "",
             f"Rule: {board['rule']}", "",
             f"Measured on {len(board['documents'])} selection document(s) ({', '.join(board['documents'])}; never "
             f"the search's fitness document) and {s['selection_prompts']} passkey prompt(s) at the target "
             f"(seeded apart from validation's).", "",
             "| " + " | ".join(head) + " |", "|---|---:|---:|---:|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows(board)]
    if board.get("not_candidates"):
        lines += ["", "Not candidates for this export: " + "; ".join(board["not_candidates"]) + "."]
    return "\n".join(lines) + "\n"


def figure(board: dict[str, Any]):
    """Perplexity at the target (bars) and passkey accuracy (dots) per candidate, the winner highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [c for c in board["candidates"] if "error" not in c]
    names = ["base"] + [c["method"] for c in measured]
    ppl = [board["base"].get("ppl_target")] + [c["ppl_target"] for c in measured]
    acc = [board["base"].get("passkey_target")] + [c["passkey_target"] for c in measured]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.6))
    colors = ["#999999"] + ["#d62728" if c["method"] == board["winner"] else "#1f77b4" for c in measured]
    ax.bar(names, [p if p is not None else 0 for p in ppl], color=colors)
    ax.set_yscale("log")
    ax.set_ylabel(f"perplexity @ {board['settings']['target_context']} (log)")
    twin = ax.twinx()
    twin.plot(names, [a if a is not None else float("nan") for a in acc], "ko")
    twin.set_ylim(-0.05, 1.05)
    twin.set_ylabel("passkey accuracy")
    ax.set_title(f"--method auto: {board['winner']} chosen")
    fig.tight_layout()
    return fig


def _f(v) -> str:
    return "—" if v is None else f"{v:.4g}"

