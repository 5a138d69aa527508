"""The parity validation task: the GGUF export in llama.cpp vs the HF export in transformers (validators/parity.py).

It is measured by `ropeconvert validate --parity HF_DIR GGUF`, which merges its record into the GGUF's report;
a later `validate` of the same export carries that record over (it is `carried`), so its checks, rows and card
section come from here like every other task's.
"""
from __future__ import annotations

from typing import Any

from ropeconvert.errors import InputError
from ropeconvert.validators import task_registry as T

PARITY_RATIO = (0.95, 1.05)  # llama.cpp / transformers perplexity on the same tokens
PARITY_TOP1 = 0.90


class ParityTask(T.TaskDefaults):
    name = "parity"
    title = "Parity: llama.cpp vs transformers"
    higher_is_better = True
    selectors = ("parity",)
    carried = True

    def check(self, options: Any, selectors: tuple[str, ...]) -> None:
        raise InputError("parity compares an HF export with its GGUF and runs on its own, not as one of --tasks",
                         "ropeconvert validate --parity HF_DIR GGUF")

    def prepare(self, ctx):
        raise NotImplementedError("parity is measured by validators/parity.py, not by validate")

    run = blank = record = prepare

    def checks(self, record: dict[str, Any], original: int) -> list[dict[str, Any]]:
        if record.get("ratio") is None:  # llama.cpp crashed: nothing to compare
            why = f"not measured: {record.get('crashed') or 'no llama.cpp result'}"
            return [T.check("parity_ppl_ratio", False, why), T.check("parity_top1", False, why)]
        lo, hi = PARITY_RATIO
        return [T.check("parity_ppl_ratio", lo <= record["ratio"] <= hi,
                        f"llama.cpp/transformers perplexity {record['ratio']:.4f} (allowed {lo}–{hi})"),
                T.check("parity_top1", record["top1_agreement"] >= PARITY_TOP1,
                        f"top-1 agreement {record['top1_agreement']:.3f} over {record['tokens']} tokens "
                        f"(≥ {PARITY_TOP1})")]

    def rows(self, record: dict[str, Any]) -> list[tuple[str, str, str, str]]:
        from ropeconvert.validators.ppl_task import _f

        p = record
        return [("parity ppl (HF | GGUF)", str(p["tokens"]), _f(p["ppl_hf"]), _f(p["ppl_gguf"])),
                ("parity top-1 agreement", str(p["tokens"]), "",
                 "—" if p["top1_agreement"] is None else f"{p['top1_agreement']:.1%}")]

    def card(self, record: dict[str, Any]) -> str:
        p = record
        return "### Parity: llama.cpp (GGUF) vs transformers (HF)\n\n" + T.table(
            ["perplexity HF", "perplexity GGUF", "ratio", "top-1 agreement", "tokens"],
            [[T.card_float(p.get("ppl_hf")), T.card_float(p.get("ppl_gguf")), T.card_float(p.get("ratio"), 4),
              T.card_pct(p.get("top1_agreement")), T.count(p.get("tokens"))]])


T.register(ParityTask())
