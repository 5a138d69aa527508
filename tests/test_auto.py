"""--method auto and the searched methods without a file (convert/auto.py, auto_plan.py, default_search.py), on a
tiny random llama trained at 64 tokens extended to 128 (every forward is milliseconds), with four short documents:
one fitness document for the default search, two selection documents, one left over."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_tiny_model
from helpers import assert_clean_refusal, run_cli, tree_digest

ORIGINAL, TARGET = 64, 128
GGUF_CANDIDATES = ["linear", "ntk", "yarn", "longrope", "llama3"]  # what a llama GGUF carries exactly


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory, small_tokenizer) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("auto") / "tiny64", small_tokenizer, original_context=ORIGINAL)


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    from ropeconvert.validators import corpus

    root = tmp_path_factory.mktemp("texts")
    for doc in corpus.load("austen")[:4]:
        (root / f"{doc.name}.txt").write_text(doc.text[:6000], encoding="utf-8")
    return root


def options(model: Path, out: Path, texts: Path, method: str = "auto", **kw):
    from ropeconvert.convert.options import ConvertOptions

    knobs = kw.pop("knobs", {"target_context": TARGET})
    return ConvertOptions(str(model), method, out=out, knobs=knobs, text=str(texts), progress=False, **kw)


def convert(opts, lines: list[str] | None = None):
    from ropeconvert.convert.pipeline import convert as run

    return run(opts, say=(lines.append if lines is not None else None))


@pytest.fixture(scope="module")
def auto_gguf(tmp_path_factory, tiny64, texts):
    out = tmp_path_factory.mktemp("auto-gguf") / "auto.gguf"
    lines: list[str] = []
    result = convert(options(tiny64, out, texts, to="gguf"), lines)
    return out, result, lines


def board_of(export: Path) -> dict:
    from ropeconvert.formats.export import report_dir_for

    return json.loads((report_dir_for(export) / "selection.json").read_text())


def test_gguf_auto_measures_every_exact_candidate_and_exports_the_winner_byte_for_byte(auto_gguf, tiny64, texts,
                                                                                     tmp_path):
    from ropeconvert.convert.auto import decide

    out, result, lines = auto_gguf
    board = board_of(out)
    assert [c["method"] for c in board["candidates"]] == GGUF_CANDIDATES  # never dpe, selfextend or dynamic
    assert {s.split(" ")[0] for s in board["not_candidates"]} == {"dynamic", "selfextend", "dpe"}
    scores = {"base": board["base"], **{c["method"]: c for c in board["candidates"]}}
    assert all(c["ppl_target"] and c["ppl_original"] and 0 <= c["passkey_target"] <= 1 for c in board["candidates"])
    assert decide(scores, GGUF_CANDIDATES)[0] == board["winner"] == result.spec.method  # the rule, re-applied
    # the plan is printed before the run (candidates, protocol, rule, an estimate from the first forward), then
    # each candidate k of n
    assert lines[0].startswith("auto: 5 candidates (linear, ntk, yarn, longrope, llama3) for --to gguf")
    assert "rule: 1. short-context guard" in lines[1] and lines[2].startswith("auto: first forward of 128 tokens")
    assert any(line.startswith("auto: candidate 5 of 5: llama3") for line in lines)
    named = tmp_path / "named.gguf"
    knobs = {"target_context": TARGET}
    if board["winner"] == "longrope":
        knobs["factors"] = Path(str(out) + ".auto") / "longrope" / "factors.json"
    convert(options(tiny64, named, texts, method=board["winner"], to="gguf", knobs=knobs))
    assert named.read_bytes() == out.read_bytes()
    import dataclasses  # a rerun over the export (--force --resume: nothing measured again) replaces the leaderboard

    again = convert(dataclasses.replace(options(tiny64, out, texts, to="gguf"), force=True, resume=True))
    assert again.spec.method == board["winner"] and board_of(out) == board


def test_the_longrope_candidate_is_the_default_search_export(auto_gguf, tiny64, texts, tmp_path):
    """`--method longrope` with no factors runs the same default search auto ran for its candidate: same bytes."""
    out, _, _ = auto_gguf
    lines: list[str] = []
    by_name = tmp_path / "lr.gguf"
    result = convert(options(tiny64, by_name, texts, method="longrope", to="gguf"), lines)
    assert (tmp_path / "lr.gguf.search" / "factors.json").is_file()
    assert any(line.startswith("longrope search: first evaluation took") for line in lines)
    assert any(n.startswith("factors from the default search (16 evaluations") for n in result.notes)
    only = tmp_path / "only-lr.gguf"
    convert(options(tiny64, only, texts, to="gguf", candidates="longrope"))
    assert only.read_bytes() == by_name.read_bytes()
    spec = json.loads(json.dumps(result.spec.to_dict()))
    assert spec["params"]["factors"] == "factors.json"  # a file name, never a machine path
    assert str(tmp_path) not in by_name.read_bytes().decode("latin-1")


def test_hf_auto_leaderboard_in_report_and_card(tiny64, texts, tmp_path):
    from ropeconvert.formats.hub_export import load_export
    from ropeconvert.formats.model_card import render_card

    out = tmp_path / "auto-hf"
    result = convert(options(tiny64, out, texts, to="hf", candidates="yarn,ntk,dynamic,selfextend", validate=True))
    report = json.loads((out / "report.json").read_text())
    board = report["selection"]
    assert [c["method"] for c in board["candidates"]] == ["ntk", "dynamic", "yarn", "selfextend"]
    assert board["winner"] == result.spec.method and "selection" in report["plots"]
    assert (out / "selection.png").stat().st_size > 1000
    from ropeconvert.formats.inspect import verify

    problems, _ = verify(out, None)
    assert not problems  # the leaderboard files are not part of the export's manifest
    card = render_card(load_export(out), repo_id="acme/x", base_id=None, license_fields={"license": "other"},
                       license_note=None)
    assert "### How the method was chosen (`--method auto`)" in card
    assert f"Chosen by `--method auto`: **{board['winner']}**" in card and "| selfextend |" in card.replace(
        "**selfextend** (winner)", "selfextend")


def test_rule_guard_then_retrieval_then_perplexity():
    from ropeconvert.convert.auto import decide

    base = {"ppl_target": 50.0, "ppl_original": 10.0, "passkey_target": 0.0}
    scores = {"base": base,
              "a": {"ppl_target": 12.0, "ppl_original": 10.5, "passkey_target": 0.5},
              "b": {"ppl_target": 11.0, "ppl_original": 10.9, "passkey_target": 0.5},  # ties a, lower ppl: wins
              "c": {"ppl_target": 9.0, "ppl_original": 12.0, "passkey_target": 1.0},  # best, but hurts short context
              "d": {"error": "could not run"}}
    winner, reason, notes = decide(scores, ["a", "b", "c", "d"])
    assert winner == "b" and "lowest perplexity" in reason and not notes
    assert scores["c"]["short_guard"] is False and scores["d"]["short_guard"] is None
    winner, _, notes = decide({"base": base, "c": scores["c"]}, ["c"])
    assert winner == "c" and "guard was void" in notes[0]


def test_interrupted_auto_resumes_without_measuring_again(tiny64, texts, tmp_path, monkeypatch):
    from ropeconvert.convert import auto

    calls = []
    real = auto._Scorer.__call__

    def counting(self, spec):
        calls.append(None if spec is None else spec.method)
        if len(calls) == 3 and not resumed:
            raise KeyboardInterrupt
        return real(self, spec)

    monkeypatch.setattr(auto._Scorer, "__call__", counting)
    out, resumed = tmp_path / "resume.gguf", False
    opts = options(tiny64, out, texts, to="gguf", candidates="linear,ntk,yarn")
    with pytest.raises(KeyboardInterrupt):
        convert(opts)
    assert not out.exists() and calls == [None, "linear", "ntk"]
    from ropeconvert.errors import OutputError

    with pytest.raises(OutputError, match="holds an earlier --method auto run"):
        convert(opts)
    resumed = True
    calls.clear()
    import dataclasses

    result = convert(dataclasses.replace(opts, resume=True))
    assert calls == ["ntk", "yarn"] and out.is_file()  # linear and the base came from the checkpoint
    assert [c["method"] for c in board_of(out)["candidates"]] == ["linear", "ntk", "yarn"]
    assert result.spec.method in ("linear", "ntk", "yarn")


def test_dpe_without_a_map_runs_the_default_detection(tiny64, texts, tmp_path):
    out = tmp_path / "dpe"
    lines: list[str] = []
    result = convert(options(tiny64, out, texts, method="dpe"), lines)
    made = tmp_path / "dpe.search" / "dpe_map.json"
    assert made.is_file() and any(line.startswith("dpe: no --scales or --dpe-map: running") for line in lines)
    again = tmp_path / "again"
    convert(options(tiny64, again, texts, method="dpe", knobs={"dpe_map": made}))
    assert json.loads((out / "config.json").read_text()) == json.loads((again / "config.json").read_text())
    assert result.spec.position_map is not None


@pytest.mark.parametrize("args, needles", [
    (["--method", "auto", "--to", "gguf"], ["--method auto needs the length", "--target-context N"]),
    (["--method", "auto", "--target-context", str(TARGET), "--candidates", "dpe", "--to", "gguf"],
     ["--candidates dpe", "approximation", "candidates for --to gguf here: linear, ntk, yarn, longrope, llama3"]),
    (["--method", "auto", "--target-context", str(TARGET), "--candidates", "yarn,bogus"], ["unknown method 'bogus'"]),
    (["--method", "auto", "--target-context", str(TARGET), "--beta-fast", "16"], ["--beta-fast does not apply"]),
    (["--method", "longrope", "--target-context", str(TARGET), "--no-search"],
     ["longrope needs factors", "--factors FILE", "drop --no-search"]),
    (["--method", "dpe", "--target-context", str(TARGET), "--no-search"], ["dpe needs group scales", "--dpe-map"]),
    (["--method", "yarn", "--target-context", str(TARGET), "--candidates", "yarn"], ["--candidates applies to"]),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny64, texts, tmp_path, args, needles):
    out = tmp_path / "never"
    before = tree_digest(tiny64)
    proc = run_cli(str(tiny64), *args, "--out", str(out), "--text", str(texts), "--quiet")
    assert_clean_refusal(proc, out, tiny64, before, *needles)
    assert not list(tmp_path.iterdir())  # no work directory either


def test_candidates_follow_the_writers(tiny64, tiny_qwen2, tmp_path):
    """HF carries every method; qwen2's GGUF graph takes no per-pair factors; Phi-3's HF config only longrope."""
    from ropeconvert.convert.auto_plan import plan
    from ropeconvert.formats.source import resolve

    def names(model, to, **kw):
        source = resolve(str(model), progress=False)
        base = source.base_rope()
        opts = options(model, tmp_path / "x", tmp_path, to=to, knobs={"target_context": 2 * base.original_context},
                       **kw)
        return [c.method for c in plan(opts, source, base, 2 * base.original_context)[0]]

    assert names(tiny64, "hf") == ["linear", "ntk", "dynamic", "yarn", "longrope", "llama3", "selfextend", "dpe"]
    assert names(tiny64, "both") == GGUF_CANDIDATES
    assert names(tiny_qwen2, "gguf") == ["linear", "ntk", "yarn"]
    assert names(tiny64, "gguf", no_search=True) == ["linear", "ntk", "yarn", "llama3"]  # no search, no catalog
    phi3 = make_tiny_model(tmp_path / "phi3", Path(tiny64), model_type="phi3", original_context=ORIGINAL,
                           pad_token_id=0)
    assert names(phi3, "hf") == ["ntk", "longrope"]
    gemma = make_tiny_model(tmp_path / "gemma3", Path(tiny64), model_type="gemma3_text", original_context=ORIGINAL,
                            layers=2, layer_types=["sliding_attention", "full_attention"], sliding_window=32,
                            query_pre_attn_scalar=16, pad_token_id=0)
    # Gemma 3: llama.cpp's gemma3 graph takes no per-pair factors; the DPE attention does not run it
    assert names(gemma, "gguf") == ["linear", "ntk", "yarn"]
    assert names(gemma, "hf") == ["linear", "ntk", "dynamic", "yarn", "longrope", "llama3"]
