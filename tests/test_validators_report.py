"""`ropeconvert validate` end to end on a tiny model: report.json follows the documented schema, the plots are PNGs
with axis labels and the original-context marker, report.md carries the table, bad input is one line + exit 2."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import matplotlib.image as mpimg
import pytest

from ropeconvert.validators import report as R

from helpers import assert_one_line_error, run_cli

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "validators" / "report_schema.json").read_text())
ORIGINAL = 256


@pytest.fixture(scope="module")
def validated(validated_export):
    """A YaRN×2 export of the tiny model, validated on every task through the real CLI: the session's one
    (conftest `validated_export`, with these tasks, lengths, depths and documents). Read only."""
    return validated_export


def test_report_follows_schema(validated):
    out, _ = validated
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    assert report["schema"] == "ropeconvert.report/2" and report["created"].endswith("Z")
    assert report["export"] == out.name and report["spec"]["method"] == "yarn"
    assert report["corpus"] == {"name": "austen", "documents": ["emma", "mansfieldpark"]}
    assert set(report["runtime"]) >= {"device", "dtype", "torch", "transformers"}
    t = report["tasks"]
    assert t["ppl"]["lengths"] == [128, 256, 400] and len(t["ppl"]["base"]) == len(t["ppl"]["extended"]) == 3
    assert set(t["ppl"]["per_document"]["extended"]) == {"emma", "mansfieldpark"}
    assert t["passkey"]["depths"] == [0.2, 0.8] and len(t["passkey"]["extended"]) == 2
    assert all(len(row) == 2 for row in t["passkey"]["base"])
    assert t["niah"]["lengths"] == [400]
    names = {c["name"] for c in report["checks"]}
    assert {"ppl_finite", "ppl_extended_below_base", "ppl_short_context_kept", "passkey_not_worse",
            "niah_not_worse"} <= names
    assert report["passed"] == all(c["passed"] for c in report["checks"])
    assert report["plots"] == {"ppl": "ppl.png", "passkey": "passkey.png", "niah": "niah.png"}
    assert report["markdown"] == "report.md"


@pytest.mark.parametrize("mutate", [
    lambda r: r.pop("checks"),
    lambda r: r.update(schema="ropeconvert.report/3"),
    lambda r: r["tasks"]["ppl"].pop("per_document"),
    lambda r: r["tasks"]["passkey"].update(trials=0),
    lambda r: r["tasks"].update(rouge={}),
    lambda r: r["plots"].update(ppl="../escape.png"),
    lambda r: r["runtime"].pop("torch"),
    lambda r: r.update(created="yesterday"),
])
def test_schema_rejects_malformed_reports(validated, mutate):
    report = json.loads((validated[0] / "report.json").read_text())
    bad = copy.deepcopy(report)
    mutate(bad)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)
    with pytest.raises(Exception, match="does not follow ropeconvert.report/2"):
        R.check_schema(bad)


def test_plots_are_pngs_with_labels_and_original_marker(validated):
    out, _ = validated
    report = json.loads((out / "report.json").read_text())
    for name in report["plots"].values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = mpimg.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
        assert image[..., :3].std() > 0.05  # not a blank canvas
    # the same figures, inspected as matplotlib objects
    figs = R.figures(report["tasks"], ORIGINAL, 512)
    ax = figs["ppl"].axes[0]
    assert ax.get_xlabel() == "context length (tokens)" and "perplexity" in ax.get_ylabel()
    markers = [line for line in ax.get_lines() if line.get_label().startswith("original context")]
    assert len(markers) == 1 and list(markers[0].get_xdata()) == [ORIGINAL, ORIGINAL]
    assert {"base", "extended"} <= {line.get_label() for line in ax.get_lines()}
    heat = figs["passkey"].axes[:2]
    assert [a.get_title().split()[0] for a in heat] == ["base", "extended"]
    assert all(a.get_xlabel().startswith("passkey depth") for a in heat)
    assert heat[0].get_ylabel() == "context length (tokens)"
    rows = [line for line in heat[1].get_lines() if line.get_label().startswith("original context")]
    assert len(rows) == 1 and rows[0].get_ydata()[0] == pytest.approx(0.5)  # between the 200 and 400 rows
    assert [t.get_text() for t in heat[0].get_yticklabels()] == ["200", "400"]
    niah = figs["niah"].axes[0]
    assert niah.get_xlabel() == "context length (tokens)" and niah.get_ylabel().startswith("needles")


def test_markdown_and_printed_table(validated):
    out, proc = validated
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert md.startswith("## Validation (ropeconvert)") and "| task | length | base | extended |" in md
    for name in report["plots"].values():
        assert f"]({name})" in md
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["task", "length", "base", "extended"]
    ppl_rows = [line.split() for line in lines if line.startswith("perplexity")]
    assert [r[1] for r in ppl_rows] == ["128", "256", "400"]
    assert float(ppl_rows[-1][3]) == pytest.approx(report["tasks"]["ppl"]["extended"][-1], rel=1e-3)
    assert lines[-1].startswith(("passed: wrote", "FAILED: wrote"))


def test_checks_rules():
    ppl = {"lengths": [4, 8, 16], "base": [10.0, 11.0, 50.0], "extended": [10.5, 11.5, 20.0],
           "per_document": {"base": {}, "extended": {}}}
    got = {c["name"]: c["passed"] for c in R.checks({"ppl": ppl}, 8)}
    assert got == {"ppl_finite": True, "ppl_extended_below_base": True, "ppl_short_context_kept": True,
                   "extension_measured": True}
    worse = dict(ppl, extended=[10.5, 30.0, 60.0])
    got = {c["name"]: c["passed"] for c in R.checks({"ppl": worse}, 8)}
    assert got == {"ppl_finite": True, "ppl_extended_below_base": False, "ppl_short_context_kept": False,
                   "extension_measured": True}
    short = {c["name"]: c for c in R.checks({"ppl": dict(ppl, lengths=[2, 4, 8])}, 8)}  # nothing past 8 measured
    assert not short["extension_measured"]["passed"] and "the extension is untested" in short["extension_measured"]["detail"]
    assert R.state({"passed": False, "checks": list(short.values())}) == "not validated for the extension"
    bad_short = R.checks({"ppl": dict(worse, lengths=[2, 4, 8])}, 8)  # a failing check outranks the missing lengths
    assert R.state({"passed": False, "checks": bad_short}) == "failed"
    nan = dict(ppl, extended=[10.5, 11.0, float("nan")])
    assert not {c["name"]: c["passed"] for c in R.checks({"ppl": nan}, 8)}["ppl_finite"]
    pk = {"lengths": [8, 16], "depths": [0.5], "trials": 1, "base": [[1.0], [0.0]], "extended": [[1.0], [1.0]]}
    assert R.checks({"passkey": pk}, 8)[0] == {"name": "passkey_not_worse", "passed": True, "detail": "16: 100% vs base 0%"}
    same = dict(pk, extended=[[1.0], [0.0]])
    assert not R.checks({"passkey": same}, 8)[0]["passed"]  # no gain past the original length is no evidence
    parity = {"ppl_hf": 10.0, "ppl_gguf": 10.2, "ratio": 1.02, "top1_agreement": 0.95, "tokens": 100}
    assert all(c["passed"] for c in R.checks({"parity": parity}, 8))
    assert not all(c["passed"] for c in R.checks({"parity": dict(parity, ratio=1.2, top1_agreement=0.5)}, 8))


def test_convert_with_validate_writes_report(tiny_llama, tmp_path):
    out = tmp_path / "tiny-linear"
    proc = run_cli(tiny_llama, "--method", "linear", "--factor", "2", "--to", "hf", "--out", out, "--validate", "-q")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    assert report["base"] == tiny_llama.name and report["spec"]["method"] == "linear"
    assert "validation of the HF export:" in proc.stdout
    assert set(report["tasks"]) == {"ppl", "passkey"}


@pytest.mark.parametrize("args,needles", [
    (["validate", "/nonexistent/export"], ["does not exist"]),
    (["validate", "{export}", "--tasks", "ppl,passkee"], ["unknown validation task 'passkee'", "did you mean 'passkey'"]),
    (["validate", "{export}", "--lengths", "0,128"], ["--lengths", "positive"]),
    (["validate", "{export}", "--lengths", "12x"], ["--lengths", "'12x'"]),
    (["validate", "{export}", "--depths", "0.5,1.5"], ["--depths", "[0, 1]"]),
    (["validate", "{export}", "--trials", "0"], ["--trials must be ≥ 1"]),
    (["validate", "{export}", "--text", "/nonexistent/books"], ["--text", "does not exist"]),
    (["validate", "{export}", "--dataset", "pg19"], ["not in the local Hub cache"]),
    (["validate", "{export}", "{export}"], ["--parity"]),
    (["validate", "--parity", "{export}"], ["--parity"]),
    (["validate", "{export}", "--device", "cuda"], ["CUDA is not available"]),
])
def test_bad_input_is_one_line(validated, tiny_llama, args, needles):
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA present")
    out, _ = validated
    proc = run_cli(*[a.replace("{export}", str(out)) for a in args], "--base", tiny_llama, "-q",
                   env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(proc, *needles)


def test_write_turns_non_finite_into_null_and_fails(tmp_path):
    tasks = {"ppl": {"lengths": [4, 8], "base": [10.0, 12.0], "extended": [10.5, float("nan")],
                     "per_document": {"base": {"d": [10.0, 12.0]}, "extended": {"d": [10.5, float("inf")]}}}}
    report = {"schema": R.SCHEMA_ID, "created": R.now(), "export": str(tmp_path), "base": "b", "spec": None,
              "runtime": {"device": "cpu", "dtype": "float32", "torch": "x", "transformers": "y"},
              "corpus": {"name": "t", "documents": ["d"]}, "tasks": tasks, "checks": R.checks(tasks, 4)}
    path = R.write(report, tmp_path / "r", R.figures(tasks, 4, 8))
    written = json.loads(path.read_text())  # strict JSON: no NaN
    jsonschema.validate(written, SCHEMA)
    assert written["tasks"]["ppl"]["extended"] == [10.5, None]
    assert written["tasks"]["ppl"]["per_document"]["extended"]["d"] == [10.5, None]
    assert not written["passed"] and {c["name"]: c["passed"] for c in written["checks"]}["ppl_finite"] is False
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["ppl.png", "report.json", "report.md"]


class ConstantTask:
    """A made-up task, defined only here: it records the extended tokenizer's vocabulary size per length (the
    same for both sides) and a check of its own — validate, report.json, report.md, the plots and the card must
    take it with no other file changed."""

    name, title, higher_is_better, selectors, carried = "constant", "Constant per length", True, ("constant",), False
    schema = {"type": "object", "required": ["lengths", "base", "extended"]}

    def check(self, options, selectors):
        pass

    def prepare(self, ctx):
        return {"lengths": list(ctx.lengths), "value": float(len(ctx.tokenizer))}

    def run(self, runtime, prepared, label, progress):
        return [prepared["value"]] * len(prepared["lengths"])

    def blank(self, result):
        return [None] * len(result)

    def record(self, prepared, base, extended):
        return {"lengths": prepared["lengths"], "base": base, "extended": extended}

    def checks(self, record, original):
        same = record["base"] == record["extended"]
        return [{"name": "constant_same", "passed": same, "detail": f"{len(record['lengths'])} lengths"}]

    def figure(self, record, original, target):
        plt = R._pyplot()
        fig, ax = plt.subplots()
        ax.plot(record["lengths"], record["extended"])
        return fig

    def rows(self, record):
        return [("constant", str(n), f"{b:g}", f"{e:g}") for n, b, e in
                zip(record["lengths"], record["base"], record["extended"])]

    def summary(self, record):
        return [f"constant: {record['extended'][0]:g} at every length"]

    def card(self, record):
        return "### Constant\n\n" + "\n".join(f"- {n}: {e:g}" for n, e in zip(record["lengths"], record["extended"]))


def test_a_task_registered_in_a_test_runs_through_validate(validated, tiny_llama, tmp_path):
    import shutil

    from ropeconvert.formats.model_card import _validation
    from ropeconvert.validators import task_registry as T
    from ropeconvert.validators.validate import Options, validate

    export = tmp_path / "copy"
    shutil.copytree(validated[0], export)
    with T.registered(ConstantTask()):
        report, path = validate(export, str(tiny_llama), Options(tasks=("constant",), lengths=(128, 400),
                                                                  progress=False))
        card = _validation(report)
    vocab = float(report["tasks"]["constant"]["base"][0])
    assert set(report["tasks"]) == {"constant"} and vocab > 0
    assert report["tasks"]["constant"] == {"lengths": [128, 400], "base": [vocab] * 2, "extended": [vocab] * 2}
    assert [c["name"] for c in report["checks"]] == ["constant_same", "extension_measured"] and report["passed"]
    assert report["plots"] == {"constant": "constant.png"}
    assert (export / "constant.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (export / "report.md").read_text()
    assert f"| constant | 400 | {vocab:g} | {vocab:g} |" in md and f"constant: {vocab:g} at every length" in md
    assert "| constant_same | pass | 2 lengths |" in md
    assert "### Constant" in card and f"**constant: {vocab:g} at every length**" in card
    assert "![Constant per length](constant.png)" in card
    # unregistered again: the name is unknown, and a report holding it no longer follows the schema
    assert T.by_name("constant") is None and "constant" not in T.selectors()
    with pytest.raises(Exception, match="unknown validation task 'constant'"):
        Options(tasks=("constant",)).check()
    with pytest.raises(Exception, match="does not follow ropeconvert.report/2"):
        R.check_schema(report)
