"""`ropeconvert search` refuses an option the chosen search would ignore, naming it (LongRoPE's evolution knobs
given to the DPE detection, DPE's window/groups given to LongRoPE), before any model is loaded."""
from __future__ import annotations

import pytest

from helpers import assert_one_line_error, run_cli


@pytest.mark.parametrize("method,args,flags", [
    ("dpe", ["--population", "8"], "--population does not apply to search --method dpe"),
    ("dpe", ["--generations", "3", "--short"], "--generations, --short do not apply"),
    ("longrope", ["--window", "64", "--topk", "3"], "--window, --topk do not apply to search --method longrope"),
    ("longrope2", ["--groups", "4"], "--groups does not apply to search --method longrope2"),
], ids=["dpe-population", "dpe-two", "longrope-window-topk", "longrope2-groups"])
def test_foreign_options_refused(method, args, flags, tmp_path):
    out = tmp_path / "search"
    proc = run_cli("search", "./missing-model", "--method", method, "-t", "1024", "--out", out, *args, cwd=tmp_path)
    assert_one_line_error(proc, flags)  # refused before the (missing) model is even looked up
    assert not out.exists()


def test_unknown_search_method(tmp_path):
    assert_one_line_error(run_cli("search", "smollm2-135m", "--method", "yarn", "-t", "1024", cwd=tmp_path),
                          "unknown search method 'yarn'", "longrope, longrope2, dpe")
