"""The upload path, end to end through the real CLI and huggingface_hub, against a local HTTP stand-in for the Hub
(tests/hub_stub.py; tests cannot reach the Hub). The stub records every request."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from helpers import assert_one_line_error, run_cli
from hub_fixtures import (FAKE_TOKEN, export_spec, hf_export, hub_base, hub_env, scan_for,  # noqa: F401
                          write_gguf_export, write_report)
from hub_stub import HubStub

REPO = "acme/tiny-llama-yarn-512"


@pytest.fixture
def stub():
    with HubStub(FAKE_TOKEN) as s:
        yield s


def publish(stub, tmp_path, export, *extra, repo=REPO, **env):
    return run_cli("publish", export, "--repo", repo, *extra, env=hub_env(stub, tmp_path, **env))


def run_cli_env(env: dict, *args):
    """The CLI with os.environ overlaid by `env`, where a None value removes the variable (HF_TOKEN)."""
    full = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run([sys.executable, "-m", "ropeconvert", *map(str, args)], capture_output=True, text=True,
                          env=full, timeout=600)


def local_files(export):
    return {p.name: p.read_bytes() for p in export.iterdir() if p.is_file()}


def test_first_publish_is_one_commit_with_every_file_and_no_token_anywhere(stub, tmp_path, hf_export):
    # HF_DEBUG=1 makes huggingface_hub log every request it sends: the token must not be in that log either.
    proc = publish(stub, tmp_path, hf_export, "--private", HF_DEBUG="1")
    assert proc.returncode == 0, proc.stderr
    assert [r.path for r in stub.requests if r.path == "/api/repos/create"] == ["/api/repos/create"]
    assert stub.repos[REPO]["private"] is True
    assert len(stub.commits) == 1
    files = local_files(hf_export)  # README.md (the card) included: publish wrote it into the export
    assert set(stub.commits[0].added) == set(files) and "README.md" in files and "ppl.png" in files
    assert stub.files(REPO) == {**files, ".gitattributes": stub.files(REPO)[".gitattributes"]}  # byte-identical
    assert "model.safetensors" in {p for p, (_, oid, _) in stub.repos[REPO]["branches"]["main"].items() if oid}
    assert all(r.authorized for r in stub.requests if r.method == "POST")  # the token was sent to the Hub…
    assert f"committed {len(files)} file(s)" in proc.stdout and f"{stub.url}/{REPO}/commit/" in proc.stdout
    assert "Send: curl" in proc.stderr  # (the debug log really was on)
    for text in (proc.stdout, proc.stderr):  # …and nowhere else: not printed, logged or written to any file
        assert FAKE_TOKEN not in text
    assert scan_for(FAKE_TOKEN, tmp_path) == []


def test_republishing_unchanged_sends_nothing(stub, tmp_path, hf_export):
    assert publish(stub, tmp_path, hf_export).returncode == 0
    first = len(stub.requests)
    proc = publish(stub, tmp_path, hf_export)
    assert proc.returncode == 0, proc.stderr
    again = stub.requests[first:]
    assert [(r.method, r.path) for r in again if r.method != "GET"] == []  # only the tree was read
    assert len(stub.commits) == 1 and f"{REPO}@main is up to date: no commit made" in proc.stdout


def test_a_changed_export_sends_only_the_changes(stub, tmp_path, hf_export):
    assert publish(stub, tmp_path, hf_export).returncode == 0
    write_report(hf_export, export_spec(hf_export), scale=1.5)  # re-validated: report.json and the card change
    (hf_export / "generation_config.json").unlink()  # a file the export no longer has leaves the repo too
    proc = publish(stub, tmp_path, hf_export)
    assert proc.returncode == 0, proc.stderr
    second = stub.commits[1]
    # the numbers moved, so the card, report.json and the perplexity plot changed; the passkey plot did not
    assert sorted(second.added) == ["README.md", "ppl.png", "report.json"]
    assert second.deleted == ["generation_config.json"]
    assert stub.files(REPO)["README.md"] == (hf_export / "README.md").read_bytes()
    assert f"{87.3456 * 1.5:.2f}".encode() in stub.files(REPO)["README.md"]


def test_transient_5xx_is_retried(stub, tmp_path, hf_export):
    stub.fail("POST", r"^/api/repos/create$", 502)
    stub.fail("POST", r"/commit/main$", 503)
    proc = publish(stub, tmp_path, hf_export)
    assert proc.returncode == 0, proc.stderr
    assert [r.status for r in stub.requests if r.path == "/api/repos/create"] == [502, 200]
    assert [r.status for r in stub.requests if r.path.endswith("/commit/main")] == [503, 200]
    assert len(stub.commits) == 1 and set(stub.commits[0].added) == set(local_files(hf_export))
    assert "note: the Hub answered 502; retrying" in proc.stderr and "note: the Hub answered 503; retrying" in proc.stderr


def test_a_commit_whose_reply_was_lost_is_not_made_twice(stub, tmp_path, hf_export):
    stub.fail("POST", r"/commit/main$", 504, after=True)  # the Hub applies the commit, the gateway loses the reply
    proc = publish(stub, tmp_path, hf_export)
    assert proc.returncode == 0, proc.stderr
    assert len(stub.commits) == 1 and "note: the Hub answered 504; retrying" in proc.stderr
    assert "reply was lost" in proc.stdout and f"committed {len(local_files(hf_export))} file(s)" in proc.stdout


def bounded_failure(proc, budget: float, wall: float, *needles: str) -> int:
    """A publish that gave up: exit 2, one note and one error line (no huggingface_hub warnings), the retries
    within the budget; returns the number of tries the error line reports."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 2, proc.stderr
    assert lines[0].startswith("note: ") and "retrying for up to" in lines[0], lines
    assert lines[1].startswith("error: ") and all(n in lines[1] for n in needles), lines
    tries, seconds = re.search(r" after (\d+) tries in (\d+) s — ", lines[1]).groups()
    assert int(tries) >= 2 and int(seconds) <= budget
    assert wall < budget + 60  # the retries plus the CLI's imports; it was 98 s before the budget
    return int(tries)


def test_persistent_5xx_is_one_line(stub, tmp_path, hf_export):
    stub.fail("POST", r"/commit/main$", 503, times=100)
    start = time.monotonic()
    proc = publish(stub, tmp_path, hf_export, "--quiet", ROPECONVERT_HUB_RETRY_SECONDS="3")
    tries = bounded_failure(proc, 3, time.monotonic() - start,
                            "error: the Hub refused the upload to acme/tiny-llama-yarn-512 (503")
    assert len([r for r in stub.requests if r.path.endswith("/commit/main")]) == tries  # no hidden inner retries
    assert stub.commits == []


def test_an_endpoint_that_answers_503_to_everything_gives_up_within_the_budget(stub, tmp_path, hf_export):
    for method in ("GET", "POST", "PUT", "HEAD"):
        stub.fail(method, r".", 503, times=10 ** 6)
    start = time.monotonic()
    proc = publish(stub, tmp_path, hf_export, "-q", ROPECONVERT_HUB_RETRY_SECONDS="4")
    tries = bounded_failure(proc, 4, time.monotonic() - start, "the Hub refused the upload to", "(503")
    assert len([r for r in stub.requests if "/tree/" in r.path]) == tries and stub.commits == []


def test_an_endpoint_that_refuses_connections_gives_up_within_the_budget(tmp_path, hf_export):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**hub_env(type("Dead", (), {"url": f"http://127.0.0.1:{port}"}), tmp_path), "ROPECONVERT_HUB_RETRY_SECONDS": "3"}
    start = time.monotonic()
    proc = run_cli("publish", hf_export, "--repo", REPO, "-q", env=env)
    bounded_failure(proc, 3, time.monotonic() - start, f"cannot reach the Hub at http://127.0.0.1:{port} (ConnectError)",
                    "check the network")


def test_the_retry_budget_and_the_library_settings(monkeypatch):
    from huggingface_hub.utils import _http, logging as hf_logging

    from ropeconvert.formats import hub_retry as hub

    monkeypatch.delenv(hub.RETRY_ENV, raising=False)
    assert hub.retry_budget() == hub.RETRY_BUDGET_S == 20
    monkeypatch.setenv(hub.RETRY_ENV, "0")
    assert hub.retry_budget() == 0
    for bad in ("soon", "-1", "inf", "nan"):
        monkeypatch.setenv(hub.RETRY_ENV, bad)
        with pytest.raises(hub.InputError, match="ROPECONVERT_HUB_RETRY_SECONDS"):
            hub.retry_budget()
    before, level = dict(_http.http_backoff.__kwdefaults__), hf_logging.get_logger().level
    with hub.quiet_hub():  # huggingface_hub's own retries and warnings off while publishing…
        assert _http.http_backoff.__kwdefaults__["max_retries"] == 0
        assert hf_logging.get_logger().getEffectiveLevel() == hf_logging.ERROR
    assert _http.http_backoff.__kwdefaults__ == before and hf_logging.get_logger().level == level  # …then restored


@pytest.mark.parametrize("case", ["missing token", "invalid repo id", "no slash", "no report", "offline"])
def test_bad_input_is_one_line_and_sends_nothing(stub, tmp_path, hf_export, case):
    env, repo = hub_env(stub, tmp_path), REPO
    if case == "missing token":
        env, needles = {**env, "HF_TOKEN": None}, ("no Hugging Face token found", "HF_TOKEN")  # HF_HOME: no login
    elif case == "invalid repo id":
        repo, needles = "acme/bad--name", ("invalid Hub repo id 'acme/bad--name'",)
    elif case == "no slash":
        repo, needles = "tiny-llama", ("must be ORG/NAME",)
    elif case == "no report":
        (hf_export / "report.json").unlink()
        needles = ("no validation report", "ropeconvert validate")
    else:
        env, needles = {**env, "HF_HUB_OFFLINE": "1"}, ("HF_HUB_OFFLINE",)
    assert_one_line_error(run_cli_env(env, "publish", hf_export, "--repo", repo), *needles)
    assert stub.requests == []


def test_rejected_token_is_one_line(tmp_path, hf_export):
    with HubStub("hf_theRealOneIsDifferent") as stub:
        proc = publish(stub, tmp_path, hf_export)
    assert_one_line_error(proc, "rejected the token (401")
    assert FAKE_TOKEN not in proc.stdout + proc.stderr and stub.commits == []


def test_revision_commits_to_a_new_branch(stub, tmp_path, hf_export):
    proc = publish(stub, tmp_path, hf_export, "--revision", "long-context")
    assert proc.returncode == 0, proc.stderr
    assert [c.branch for c in stub.commits] == ["long-context"]
    assert set(stub.repos[REPO]["branches"]["main"]) == {".gitattributes"}
    assert "README.md" in stub.files(REPO, "long-context")


def test_gguf_export_publishes_file_report_and_card(stub, tmp_path):
    from ropeconvert.convert.methods import build_spec
    from ropeconvert.convert.spec import BaseRope

    gguf_path = write_gguf_export(tmp_path / "smol-yarn-16k.gguf")
    write_report(tmp_path / "smol-yarn-16k.report", build_spec("yarn", BaseRope(64, 64, 1e5, 8192), factor=2.0).to_dict())
    proc = publish(stub, tmp_path, gguf_path, repo="acme/smol-yarn-16k-GGUF")
    assert proc.returncode == 0, proc.stderr
    files = stub.files("acme/smol-yarn-16k-GGUF")
    assert files["smol-yarn-16k.gguf"] == gguf_path.read_bytes()
    assert set(files) == {".gitattributes", "smol-yarn-16k.gguf", "README.md", "report.json", "report.md", "ppl.png",
                          "passkey.png"}
    assert b"library_name: gguf" in files["README.md"]


def test_push_validates_and_refuses_a_failed_export_after_writing_it(stub, tmp_path, hub_base):
    # --push implies --validate; a random tiny model cannot find a passkey, so validation fails and nothing is sent
    out = tmp_path / "pushed"
    proc = run_cli(hub_base, "--method", "yarn", "--factor", "2", "--out", out, "--push", REPO, "--quiet",
                   env=hub_env(stub, tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "refusing to publish" in errors[0] and "validation failed (" in errors[0]
    assert "passkey_not_worse" in errors[0] and "--skip-validation" in errors[0]
    report = json.loads((out / "report.json").read_text())  # written by the validators, kept for the user
    assert report["passed"] is False and "validation of the HF export:" in proc.stdout
    assert stub.requests == []


def test_push_with_a_bad_repo_id_fails_before_converting(stub, tmp_path, hub_base):
    out = tmp_path / "never"
    proc = run_cli(hub_base, "--method", "yarn", "--factor", "2", "--out", out, "--push", "not a repo",
                   env=hub_env(stub, tmp_path))
    assert_one_line_error(proc, "invalid Hub repo id")
    assert not out.exists() and stub.requests == []


def test_dry_run_online_sends_nothing(stub, tmp_path, hf_export):
    proc = publish(stub, tmp_path, hf_export, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert stub.writes() == [] and stub.repos == {} and "dry run: nothing was uploaded" in proc.stdout


def test_licence_from_the_hub_when_the_base_files_do_not_say(tmp_path, smollm2_hf):
    from hub_fixtures import BASE_ID, cached_base, make_export

    source = cached_base(tmp_path / "cache", smollm2_hf)
    (source / "README.md").unlink()  # as after a Hub download (README is not fetched): the licence is not local
    export = make_export(tmp_path, source)
    write_report(export, export_spec(export))
    with HubStub(FAKE_TOKEN, base_models={BASE_ID: {"license": "llama3.1"}}) as stub:
        proc = publish(stub, tmp_path, export)
    assert proc.returncode == 0, proc.stderr
    assert ("GET", f"/api/models/{BASE_ID}") in [(r.method, r.path) for r in stub.requests]
    card = stub.files(REPO)["README.md"].decode()
    assert "\nlicense: llama3.1\n" in card and "could not be determined" not in card
