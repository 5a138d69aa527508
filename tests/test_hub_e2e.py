"""End to end: a report that validators/report.py really wrote (`ropeconvert validate` on a tiny export) becomes the
published card — its numbers, checks and plots — through the local stand-in for the Hub."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from helpers import assert_one_line_error, run_cli
from hub_fixtures import FAKE_TOKEN, hub_env
from hub_stub import HubStub
from test_hub_card import card_of, table_rows

REPO = "acme/tiny-llama-yarn-512"


def test_a_real_validation_report_renders_into_the_published_card(tmp_path, validated_export):
    # the session's export of acme/tiny-llama as `ropeconvert validate` left it (conftest), copied: publish writes into it
    hf_export = Path(shutil.copytree(validated_export[0], tmp_path / validated_export[0].name))
    report = json.loads((hf_export / "report.json").read_text())

    with HubStub(FAKE_TOKEN) as stub:
        env = hub_env(stub, tmp_path)
        if not report["passed"]:  # a random tiny model finds no passkey: refused unless told, and then labelled
            assert_one_line_error(run_cli("publish", hf_export, "--repo", REPO, env=env), "validation failed")
            assert stub.requests == []
        proc = run_cli("publish", hf_export, "--repo", REPO, "--skip-validation", env=env)
        assert proc.returncode == 0, proc.stderr
        uploaded = stub.files(REPO)
    card = hf_export / "README.md"
    assert uploaded["README.md"] == card.read_bytes()
    _, body = card_of(card)
    assert ("**Validation failed**" in body) == (not report["passed"])
    ppl = report["tasks"]["ppl"]
    assert table_rows(body, "### Perplexity") == [
        [f"{n:,}", f"{b:.2f}", f"{e:.2f}"] for n, b, e in zip(ppl["lengths"], ppl["base"], ppl["extended"])]
    pk = report["tasks"]["passkey"]
    assert table_rows(body, "### Passkey") == [
        [f"{n:,}", f"{100 * sum(b) / len(b):.0f}%", f"{100 * sum(e) / len(e):.0f}%"]
        for n, b, e in zip(pk["lengths"], pk["base"], pk["extended"])]
    assert table_rows(body, "### Checks") == [
        [c["name"], "pass" if c["passed"] else "**FAIL**", c["detail"]] for c in report["checks"]]
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", body)
    assert images == list(report["plots"].values()) and images
    for image in images + ["report.json", "report.md"]:  # the evidence is uploaded beside the card, byte for byte
        assert uploaded[image] == (hf_export / image).read_bytes()
    assert f"({len(report['corpus']['documents'])} documents)" in body
