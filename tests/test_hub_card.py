"""`ropeconvert publish --dry-run` and the model card: offline, nothing uploaded, every number from report.json."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

from helpers import assert_one_line_error, run_cli
from hub_fixtures import (BASE_ID, BASE_SHA, export_spec, hf_export, hub_base, write_gguf_export,  # noqa: F401
                          write_report)


def dry_run(export: Path, *extra: str, repo: str = "acme/tiny-llama-yarn-512"):
    return run_cli("publish", export, "--repo", repo, "--dry-run", *extra)


def card_of(path: Path) -> tuple[dict, str]:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def table_rows(body: str, heading: str) -> list[list[str]]:
    """The cells of the markdown table under `heading` (header row excluded)."""
    section = body.split(heading, 1)[1].split("\n\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows]


def test_dry_run_prints_plan_and_writes_card(hf_export):
    proc = dry_run(hf_export)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "dry run: nothing was uploaded" in out and "acme/tiny-llama-yarn-512" in out
    assert "Upload yarn 256 → 512 context extension" in out  # the commit message
    card = hf_export / "README.md"
    assert f"card      {card}" in out
    listed = dict(re.findall(r"^  add\s+(\S+)\s+(\d[\d.]* k?M?G?B)$", out, flags=re.M))
    expected = {p.name for p in hf_export.iterdir() if p.is_file()}
    assert set(listed) == expected  # every file of the export, the card and the report's plots included
    size = (hf_export / "model.safetensors").stat().st_size  # the small-vocabulary tiny model is under 1 MB
    assert listed["model.safetensors"] == (f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB")

    meta, body = card_of(card)
    assert meta["base_model"] == BASE_ID  # recognised from the huggingface_hub cache path of the source
    assert meta["license"] == "mit"  # carried from the base's README front matter
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"context-extension", "yarn"} <= set(meta["tags"])
    assert "[yarn](https://arxiv.org/abs/2309.00071)" in body and "256 → 512 tokens" in body
    config = json.loads((hf_export / "config.json").read_text())
    block = body.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(block)["rope_scaling"] == config["rope_scaling"]  # the exact rope written
    assert 'AutoModelForCausalLM.from_pretrained("acme/tiny-llama-yarn-512"' in body
    assert "import ropeconvert" not in body  # only DPE exports need it
    assert "Not validated" not in body and "Validation failed" not in body


def test_card_numbers_and_plots_come_from_report(hf_export):
    for scale in (1.0, 1.37):  # re-validated with other numbers: the card follows report.json
        report = write_report(hf_export, export_spec(hf_export), scale=scale)
        proc = dry_run(hf_export)
        assert proc.returncode == 0, proc.stderr
        _, body = card_of(hf_export / "README.md")
        ppl = report["tasks"]["ppl"]
        assert table_rows(body, "### Perplexity") == [
            [f"{n:,}", f"{b:.2f}", f"{e:.2f}"] for n, b, e in zip(ppl["lengths"], ppl["base"], ppl["extended"])]
        pk = report["tasks"]["passkey"]
        assert table_rows(body, "### Passkey") == [
            [f"{n:,}", f"{100 * sum(b) / len(b):.0f}%", f"{100 * sum(e) / len(e):.0f}%"]
            for n, b, e in zip(pk["lengths"], pk["base"], pk["extended"])]
        assert [r[0] for r in table_rows(body, "### Checks")] == [c["name"] for c in report["checks"]]
        assert "the austen corpus (4 documents)" in body and "torch 2.13.0" in body
        images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", body)
        assert images == list(report["plots"].values())
        for image in images:  # each plot the card shows is uploaded beside it
            assert re.search(rf"^  add\s+{re.escape(image)}\s", proc.stdout, flags=re.M)
    assert f"{14.8123:.2f}" not in body  # the first report's numbers are gone


def test_unvalidated_exports_are_refused_and_labelled(hf_export):
    (hf_export / "report.json").unlink()
    assert_one_line_error(dry_run(hf_export), "no validation report", "--skip-validation")
    assert not (hf_export / "README.md").exists()
    proc = dry_run(hf_export, "--skip-validation")
    assert proc.returncode == 0, proc.stderr
    _, body = card_of(hf_export / "README.md")
    assert "**Not validated.**" in body and "### Perplexity" not in body

    write_report(hf_export, export_spec(hf_export), passed=False)
    assert_one_line_error(dry_run(hf_export), "validation failed (passkey_at_target)")
    assert dry_run(hf_export, "--skip-validation").returncode == 0
    _, body = card_of(hf_export / "README.md")
    assert "**Validation failed** (validation failed (passkey_at_target))" in body
    assert ["passkey_at_target", "**FAIL**", "mean 40% (needs ≥ 75%)"] in table_rows(body, "### Checks")

    other = dict(export_spec(hf_export), target_context=1024)  # a report made before the export was rewritten
    write_report(hf_export, other)
    assert_one_line_error(dry_run(hf_export), "different rope spec")


def test_bad_report_is_one_line(hf_export):
    (hf_export / "report.json").write_text('{"schema": "something else", "passed": true}')
    assert_one_line_error(dry_run(hf_export), "not a ropeconvert validation report")
    write_report(hf_export, export_spec(hf_export))
    (hf_export / "ppl.png").unlink()
    assert_one_line_error(dry_run(hf_export), "ppl.png")


def test_reproduce_command_rebuilds_the_export(hf_export, hub_base, tmp_path):
    assert dry_run(hf_export).returncode == 0
    _, body = card_of(hf_export / "README.md")
    block = body.split("## Reproduce\n\n", 1)[1].split("```sh\n", 1)[1].split("\n```", 1)[0]
    assert "pip install 'ropeconvert==" not in body  # it is not on PyPI: the card must not say it is
    command = shlex.split(block.splitlines()[-1])
    assert command[:2] == ["ropeconvert", BASE_ID] and command[command.index("--revision") + 1] == BASE_SHA
    # Run it as a reader would, the base fetched through huggingface_hub (its cache stands in for the Hub here).
    work = tmp_path / "again"
    work.mkdir()
    proc = run_cli(*command[1:], cwd=work, env={"HF_HUB_CACHE": str(hub_base.parents[2]), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    again = work / hf_export.name
    assert json.loads((again / "config.json").read_text()) == json.loads((hf_export / "config.json").read_text())
    assert export_spec(again) == export_spec(hf_export)


def test_gguf_export_card(tmp_path):
    from ropeconvert.convert.methods import build_spec
    from ropeconvert.convert.spec import BaseRope

    gguf_path = write_gguf_export(tmp_path / "smol-yarn-16k.gguf")
    spec = build_spec("yarn", BaseRope(64, 64, 100000.0, 8192), factor=2.0).to_dict()
    report_dir = tmp_path / "smol-yarn-16k.report"
    write_report(report_dir, spec, base="HuggingFaceTB/SmolLM2-135M-Instruct")
    proc = dry_run(gguf_path, repo="acme/smol-yarn-16k-GGUF")
    assert proc.returncode == 0, proc.stderr
    listed = set(re.findall(r"^  add\s+(\S+)\s", proc.stdout, flags=re.M))
    assert listed == {"smol-yarn-16k.gguf", "report.json", "report.md", "ppl.png", "passkey.png", "README.md"}
    meta, body = card_of(report_dir / "README.md")
    assert meta["library_name"] == "gguf" and "gguf" in meta["tags"]
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"
    assert 'llama.rope.scaling.type = "yarn"' in body and "llama.rope.scaling.original_context_length = 8192" in body
    assert "llama-cli -hf acme/smol-yarn-16k-GGUF -c 16384" in body
    assert table_rows(body, "### Perplexity")[1] == ["512", "87.35", "16.91"]


def test_dpe_card_imports_ropeconvert(hf_export):
    from ropeconvert.formats.hub_export import load_export
    from ropeconvert.formats.model_card import render_card

    export = load_export(hf_export)
    export.spec = dict(export.spec, method="dpe", kind="position_map")  # DPE runs through ropeconvert's attention
    card = render_card(export, repo_id="acme/x", base_id=None, license_fields={"license": "other"}, license_note=None)
    code = card.split("```python\n", 1)[1].split("\n```", 1)[0].splitlines()
    assert code[0].startswith("import ropeconvert") and code.index(code[0]) < code.index(
        "from transformers import AutoModelForCausalLM, AutoTokenizer")
    assert "vllm serve" not in card


def test_unknown_licence_offline_is_other_with_a_note(tmp_path, smollm2_hf):
    from hub_fixtures import make_export

    from conftest import make_tiny_model

    source = make_tiny_model(tmp_path / "my-local-llama", smollm2_hf)  # a local model: no README, no Hub id
    export = make_export(tmp_path, source)
    write_report(export, export_spec(export), base=str(source))
    proc = dry_run(export)
    assert proc.returncode == 0, proc.stderr
    meta, body = card_of(export / "README.md")
    assert meta["license"] == "other" and "base_model" not in meta
    assert "could not be determined offline" in body and "could not be determined offline" in proc.stdout


def test_gguf_of_to_both_takes_base_and_licence_from_its_hf_sibling(tmp_path, hub_base):
    out = tmp_path / "both"
    proc = run_cli(hub_base, "--method", "yarn", "--factor", "2", "--to", "both", "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    gguf_path = tmp_path / "both.gguf"
    proc = dry_run(gguf_path, "--skip-validation", repo="acme/tiny-llama-yarn-512-GGUF")
    assert proc.returncode == 0, proc.stderr
    meta, body = card_of(tmp_path / "both.README.md")  # no report dir: the card goes beside the file
    assert meta["base_model"] == BASE_ID and meta["license"] == "mit" and meta["library_name"] == "gguf"
    assert 'llama.rope.scaling.type = "yarn"' in body and "ropeconvert.spec" not in body
    command = shlex.split(body.split("## Reproduce\n\n", 1)[1].split("```sh\n", 1)[1].split("\n```", 1)[0].splitlines()[-1])
    assert command[:2] == ["ropeconvert", BASE_ID] and command[command.index("--to") + 1] == "gguf"
