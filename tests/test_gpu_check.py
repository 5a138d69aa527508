"""The CPU smoke of bench/gpu_check.py (issue #22): the device check's own code path on tiny shapes, in seconds, so
a broken section is found here and not on the rented GPU. Timings are checked to exist, never compared."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "RESULTS.md"


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _check_run(m: dict, where: str) -> None:
    assert m["status"] == "ok", f"{where}: {m}"
    for key in ("seconds", "tokens_per_s", "peak_mem_mb"):
        assert _positive(m[key]), f"{where}: {key} = {m.get(key)!r}"


def test_gpu_check_smoke(tmp_path):
    before = (RESULTS.read_bytes(), RESULTS.stat().st_mtime_ns)
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--smoke", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (RESULTS.read_bytes(), RESULTS.stat().st_mtime_ns) == before, "--smoke must not touch bench/RESULTS.md"
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (tmp_path / "gpu_check.md").read_text().count("| length |") == 2

    sections = res["sections"]
    assert set(sections) == {"build", "ppl", "dpe", "generation", "pytest"}
    assert not {name: s["error"] for name, s in sections.items() if "error" in s}
    assert res["smoke"] is True and _positive(res["weights_mb"]) and _positive(res["total_seconds"])

    ppl = sections["ppl"]["rows"]
    assert [r["length"] for r in ppl] == [256, 512, 1024]
    for r in ppl:
        for side in ("chunked", "bare"):
            _check_run(r[side], f"ppl {side} @ {r['length']}")
        assert _positive(r["throughput_ratio"]) and _positive(r["memory_ratio"])
        # same model, same tokens, f32: the chunked head must give the bare forward's loss
        assert math.isclose(r["chunked"]["nll"], r["bare"]["nll"], rel_tol=1e-4)

    dpe = sections["dpe"]["rows"]
    assert [r["length"] for r in dpe] == [256, 512]
    for r in dpe:
        for side in ("sdpa", "dpe"):
            _check_run(r[side], f"{side} @ {r['length']}")
        assert _positive(r["throughput_ratio"]) and _positive(r["memory_ratio"])

    gen = sections["generation"]
    _check_run(gen, "generation")
    assert _positive(gen["new_tokens_per_s"])
    assert gen["new_tokens"] == gen["batch"] * gen["max_new_tokens"]  # no EOS: every row decodes every token

    assert sections["pytest"] == {"status": "not run (--smoke)"}
