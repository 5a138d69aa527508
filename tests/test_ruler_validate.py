"""`ropeconvert validate --tasks ruler` end to end on a tiny model (original context 1024, YaRN ×2 export): every
offline RULER task generates and scores (0–100), the report follows schema /2, the heatmap is a PNG, report.md and
the model card carry the table and the effective lengths; the GGUF export runs the very same prompts in llama.cpp;
batched left-padded greedy decoding equals one prompt at a time; bad input is one line and exit 2."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import jsonschema
import matplotlib.image as mpimg
import pytest

from ropeconvert.validators.ruler import OFFLINE_TASKS

from conftest import make_tiny_model

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "validators" / "report_schema.json").read_text())
ORIGINAL, TARGET = 1024, 2048


def cli(*args) -> tuple[int, str, str]:
    """The real CLI in this process (much faster than a subprocess): (exit code, stdout, stderr)."""
    import contextlib
    import io

    from ropeconvert.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["ropeconvert", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
            main()
    finally:
        sys.argv = argv
    return e.value.code, out.getvalue(), err.getvalue()


def one_line_error(code: int, err: str, *needles: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory, smollm2_hf):
    """A tiny model trained (nominally) to 1024 tokens, and its YaRN ×2 export as HF and GGUF."""
    root = tmp_path_factory.mktemp("ruler")
    base = make_tiny_model(root / "tiny-1k", smollm2_hf, original_context=ORIGINAL)
    code, _, err = cli(base, "--method", "yarn", "--factor", "2", "--to", "both", "--out", root / "tiny-yarn", "-q")
    assert code == 0, err
    return base, root / "tiny-yarn", root / "tiny-yarn.gguf"


@pytest.fixture(scope="module")
def hf_run(models):
    base, hf, _ = models
    code, out, err = cli("validate", hf, "--base", base, "--tasks", "ruler", "--lengths", TARGET, "--samples", 1, "-q")
    assert code == 0, err
    return json.loads((hf / "report.json").read_text()), out, hf


def test_every_offline_task_runs_end_to_end(hf_run):
    report, out, hf = hf_run
    jsonschema.validate(report, SCHEMA)
    assert report["schema"] == "ropeconvert.report/2"
    t = report["tasks"]["ruler"]
    assert t["tasks"] == list(OFFLINE_TASKS) and t["lengths"] == [TARGET] and t["samples_per_task"] == 1
    assert set(t["not_run"]) == {"qa_1", "qa_2"} and "--qa-file" in t["not_run"]["qa_1"]
    assert "Austen in place of Paul Graham's essays" in t["haystack"]
    for side in ("base", "extended"):
        assert set(t["scores"][side]) == set(OFFLINE_TASKS)
        assert all(0 <= v[0] <= 100 for v in t["scores"][side].values())
        lo, hi = t["intervals"][side]["vt"][0]
        assert 0 <= lo <= t["scores"][side]["vt"][0] <= hi <= 100
        assert 0 <= t["average"][side][0] <= 100
        assert len(t["samples"][side]) == len(OFFLINE_TASKS)  # one per task and length
        assert all(s["tokens"] <= TARGET and isinstance(s["prediction"], str) for s in t["samples"][side])
    # base and extended saw the same prompts
    assert [s["prompt_sha256"] for s in t["samples"]["base"]] == [s["prompt_sha256"] for s in t["samples"]["extended"]]
    eff = t["effective_length"]
    assert eff["mode"] == "absolute" and eff["threshold"] == 85.6 and eff["base"]["label"]
    names = [c["name"] for c in report["checks"]]
    assert "ruler_not_worse" in names and "extension_measured" in names
    assert report["plots"] == {"ruler": "ruler.png"}
    image = mpimg.imread(hf / "ruler.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
    md = (hf / "report.md").read_text()
    assert "RULER effective length (threshold 85.6)" in md and "| RULER vt | 2048 |" in md
    assert "| RULER average | 2048 |" in md and "![ruler](ruler.png)" in md
    assert re.search(r"RULER niah_multiquery +2048 ", out) and "RULER effective length (threshold 85.6)" in out


def test_gguf_runs_the_same_prompts_in_llamacpp(models, hf_run):
    base, _, gguf = models
    tasks = ["niah_single_1", "vt", "cwe"]
    code, _, err = cli("validate", gguf, "--base", base, "--tasks", ",".join(tasks), "--lengths", TARGET,
                       "--samples", 1, "-q")
    assert code == 0, err
    report = json.loads((gguf.with_name(gguf.stem + ".report") / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    assert report["runtime"]["engine"] == "llama.cpp"
    t = report["tasks"]["ruler"]
    assert t["tasks"] == tasks and t["not_run"] == {}
    assert all(0 <= t["scores"]["extended"][n][0] <= 100 for n in tasks)
    hf_prompts = {(s["task"], s["length"], s["seed"]): s["prompt_sha256"] for s in hf_run[0]["tasks"]["ruler"]
                  ["samples"]["extended"]}
    gguf_prompts = {(s["task"], s["length"], s["seed"]): s["prompt_sha256"] for s in t["samples"]["extended"]}
    assert gguf_prompts == {k: hf_prompts[k] for k in gguf_prompts}  # llama.cpp sized them the same way


def test_relative_threshold_and_card(models):
    from ropeconvert.formats.model_card import _validation

    base, hf, _ = models
    code, _, err = cli("validate", hf, "--base", base, "--tasks", "niah_single_1", "--lengths", f"{ORIGINAL},{TARGET}",
                       "--samples", 2, "--threshold", "base", "-q")
    assert code == 0, err
    report = json.loads((hf / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    t = report["tasks"]["ruler"]
    eff = t["effective_length"]
    assert eff["mode"] == "relative" and eff["threshold_at"] == ORIGINAL
    assert eff["threshold"] == t["average"]["base"][0]
    assert t["samples_per_task"] == 2 and len(t["samples"]["base"]) == 4
    card = _validation(report)
    assert "### RULER (score 0–100, base / extended)" in card
    assert "**RULER effective length (threshold" in card and "= the base's average at 1024" in card
    assert card.index("**RULER effective length") < card.index("### RULER") and "2 samples per task and length" in card
    assert "| niah_single_1 |" in card and "| **average** |" in card and "(ruler.png)" in card


def test_batched_greedy_equals_one_prompt_at_a_time(tiny_llama):
    from ropeconvert.validators import runtime
    from ropeconvert.validators.generate import greedy, greedy_batch

    rt = runtime.load(tiny_llama)
    prompts = [list(range(300, 340)), list(range(50, 57)), list(range(400, 460))]  # inside the tiny 512-token vocab
    alone = [greedy(rt.model, p, 6, set()) for p in prompts]
    assert greedy_batch(rt.model, prompts, 6, set(), pad_id=0) == alone
    # a stop rule ends its row only
    stopped = greedy_batch(rt.model, prompts, 6, set(), pad_id=0, stop=lambda ids: len(ids) >= 2)
    assert stopped == [a[:2] for a in alone]


def test_first_line_cut():
    from ropeconvert.validators.generate import first_line

    assert first_line(" 123\n456") == " 123"
    assert first_line("\n\n 42\nmore") == "\n\n 42"
    assert first_line("no newline") == "no newline"


@pytest.mark.parametrize("args, needles", [
    (["--tasks", "niah_singel_1"], ["unknown validation task 'niah_singel_1'", "did you mean 'niah_single_1'"]),
    (["--tasks", "ruler", "--samples", "0"], ["--samples must be ≥ 1"]),
    (["--tasks", "qa_1"], ["qa_1 needs a SQuAD file", "--qa-file"]),
    (["--tasks", "ruler", "--threshold", "150"], ["--threshold must be a RULER score"]),
    (["--tasks", "ruler", "--lengths", "4096"], ["--lengths 4096 is longer than the export's target context"]),
    (["--tasks", "cwe", "--lengths", "256"], ["cwe at 256 tokens", "choose a RULER length of at least"]),
    (["--tasks", "ruler", "--lengths", f"{TARGET}", "--threshold", "base"], ["--threshold base", "add 1024"]),
])
def test_bad_input_is_one_line(models, args, needles):
    base, hf, _ = models
    before = (hf / "report.json").read_bytes() if (hf / "report.json").exists() else None
    code, _, err = cli("validate", hf, "--base", base, *args, "-q")
    one_line_error(code, err, *needles)
    after = (hf / "report.json").read_bytes() if (hf / "report.json").exists() else None
    assert after == before  # refused before anything was measured or written


def test_qa_file_runs_qa(models, tmp_path):
    base, hf, _ = models
    squad = {"data": [{"title": "t", "paragraphs": [{"context": "The capital of Freedonia is Fredville.", "qas": [
        {"question": "What is the capital of Freedonia?", "id": "q1", "answers": [{"text": "Fredville"}],
         "is_impossible": False}]}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad))
    code, _, err = cli("validate", hf, "--base", base, "--tasks", "qa_1", "--qa-file", path, "--lengths", TARGET,
                       "--samples", 1, "-q")
    assert code == 0, err
    t = json.loads((hf / "report.json").read_text())["tasks"]["ruler"]
    assert t["tasks"] == ["qa_1"] and t["samples"]["extended"][0]["outputs"] == ["Fredville"]


def test_reports_of_schema_1_and_2_are_read(tmp_path):
    from ropeconvert.errors import InputError
    from ropeconvert.formats.export import read_report

    for schema in ("ropeconvert.report/1", "ropeconvert.report/2"):
        (tmp_path / "report.json").write_text(json.dumps({"schema": schema, "passed": True}))
        assert read_report(tmp_path)["schema"] == schema
    (tmp_path / "report.json").write_text(json.dumps({"schema": "ropeconvert.report/3", "passed": True}))
    with pytest.raises(InputError, match="not a ropeconvert validation report"):
        read_report(tmp_path)


def test_task_registry_rejects_duplicates_and_finds_ruler():
    from ropeconvert.validators import task_registry as T

    assert T.by_name("ruler") is T.TASKS.get("vt") is T.TASKS.get("ruler")
    assert T.by_name("ppl") is T.TASKS.get("ppl") and T.by_name("rouge") is None
    with pytest.raises((ValueError, RuntimeError)):
        T.register(T.TASKS.get("ruler"))
    chosen = T.chosen(("ppl", "vt", "cwe", "vt"))
    assert list(chosen) == ["ppl", "ruler"] and chosen["ruler"][1] == ("vt", "cwe")


def test_llamacpp_crash_keeps_the_transformers_side(models, monkeypatch):
    base, _, gguf = models
    monkeypatch.setenv("ROPECONVERT_TEST_LLAMACPP_CRASH", "1")  # the worker segfaults at its first evaluation
    code, _, err = cli("validate", gguf, "--base", base, "--tasks", "vt", "--lengths", TARGET, "--samples", 1, "-q")
    one_line_error(code, err, "llama.cpp crashed", "kept in")
    report = json.loads((gguf.with_name(gguf.stem + ".report") / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    t = report["tasks"]["ruler"]
    assert t["scores"]["extended"]["vt"] == [None] and t["average"]["extended"] == [None]
    assert 0 <= t["scores"]["base"]["vt"][0] <= 100 and t["effective_length"]["extended"]["label"] == "not measured"
