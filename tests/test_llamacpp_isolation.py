"""llama.cpp runs in a child process: a crash there (the natively built llama-cpp-python segfaults on quantized
GGUFs on AVX-512/AMX CPUs) is one line naming the runtime, the file and the known issue, exit 2, and the transformers
half of a validate or parity run is kept in its report.

The crash is real: ROPECONVERT_TEST_LLAMACPP_CRASH=1 makes the worker send itself SIGSEGV at its first evaluation
(validators/llamacpp_child.py documents the hook), so the parent sees exactly what the upstream bug produces."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jsonschema
import pytest

from ropeconvert.convert.methods import build_spec
from ropeconvert.formats.gguf import write_gguf_export
from ropeconvert.formats.hf import write_hf_export
from ropeconvert.formats.hf_config import base_rope_from_config
from ropeconvert.formats.source import read_config
from ropeconvert.validators import report as R
from ropeconvert.validators.gguf_runtime import GgufRuntime
from ropeconvert.validators.llamacpp import KNOWN_ISSUE, LlamaCpp, LlamaCppCrash, gguf_eval
from ropeconvert.validators.llamacpp_child import CRASH_HOOK

from test_malformed_inputs import run_main

pytestmark = pytest.mark.llamacpp
import llama_cpp  # noqa: E402,F401  (make installs it: a missing llama.cpp is a failure, not a skip)
IDS = list(range(100, 400))


@pytest.fixture(scope="module")
def exported(tiny_llama_49k, tmp_path_factory):
    """A linear ×2 export of the tiny model (original 256 → 512) as GGUF and as an HF directory. The 49k-token one:
    its 49,152-wide output makes a 4,000-token eval last seconds, long enough to interrupt mid-request (the
    512-token model finishes it in ~0.1 s)."""
    root = tmp_path_factory.mktemp("iso")
    spec = build_spec("linear", base_rope_from_config(read_config(tiny_llama_49k)), factor=2.0)
    gguf, _ = write_gguf_export(tiny_llama_49k, spec, root / "tiny-linear.gguf", outtype="f32", progress=False)
    hf, _ = write_hf_export(tiny_llama_49k, spec, root / "tiny-linear", link=True, progress=False)
    return gguf, hf


def _gone(pid: int) -> bool:
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_a_segfault_in_llamacpp_is_an_error_naming_runtime_file_and_known_issue(exported, monkeypatch):
    gguf, _ = exported
    monkeypatch.setenv(CRASH_HOOK, "1")
    llm = LlamaCpp(gguf)
    assert llm.info().n_ctx_train == 512  # loading and metadata still work: the hook fires on evaluation
    with pytest.raises(LlamaCppCrash) as e:
        llm.eval(IDS)
    assert e.value.one_line() == f"llama.cpp crashed (SIGSEGV) evaluating tiny-linear.gguf — {KNOWN_ISSUE}"
    assert "AVX-512/AMX" in KNOWN_ISSUE and "README, Known issues" in KNOWN_ISSUE
    with pytest.raises(LlamaCppCrash):  # the dead worker stays dead, with the same line, and nothing is left
        llm.tokenize("hello")
    assert _gone(llm._proc.pid) and not llm._scratch.exists()


def test_a_worker_killed_from_outside_is_the_same_error(exported):
    gguf, _ = exported
    with LlamaCpp(gguf) as llm:
        llm.info()
        os.kill(llm._proc.pid, signal.SIGKILL)  # e.g. the kernel's OOM killer
        with pytest.raises(LlamaCppCrash, match=r"^llama.cpp crashed \(SIGKILL\) evaluating tiny-linear.gguf$"):
            llm.eval(IDS)


def test_an_interrupt_during_an_evaluation_stops_the_worker_at_once(exported):
    """Ctrl-C (or SIGTERM, which the CLI turns into the same exception) reaches this process, not the worker
    (it ignores SIGINT); leaving the `with` block mid-request kills it instead of waiting for the answer."""
    gguf, _ = exported

    def interrupt(*_):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            with LlamaCpp(gguf) as llm:
                llm.info()
                started = time.monotonic()
                signal.setitimer(signal.ITIMER_REAL, 0.3)
                llm.eval(list(range(100, 4100)), n_ctx=4096)  # ~5 s of work here: interrupted long before the end
        assert _gone(llm._proc.pid) and not llm._scratch.exists()
        assert time.monotonic() - started < 2.5  # not waited for: killed
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_one_worker_serves_every_evaluation_of_a_runtime(exported):
    """validate makes dozens of calls on one model: one process and one load for all of them."""
    gguf, _ = exported
    rt = GgufRuntime(gguf)
    pid = rt._llm._proc.pid
    first = rt.token_nll(IDS, 100)
    assert rt.token_nll(IDS, 100).tolist() == first.tolist() and first.shape == (100,)
    new = rt.greedy(IDS[:50], 5)
    text = rt.tokenizer.decode(new)
    assert len(new) <= 5 and isinstance(text, str) and rt.tokenizer("hello world").input_ids
    assert rt._llm._proc.pid == pid and rt._llm._proc.poll() is None
    assert (gguf_eval(gguf, IDS).nll[-100:] == first).all()  # a fresh worker: the same numbers
    rt.close()
    assert _gone(pid) and not rt._llm._scratch.exists()


def test_greedy_and_tokenizer_match_llama_cpp_python(exported):
    """The worker's own greedy loop and (de)tokenizer against llama-cpp-python's Llama (itself run in a child),
    with the same batch and no rope override that differs for a linear export."""
    gguf, _ = exported
    text = "It is a truth universally acknowledged, that a single man"
    script = (
        "import json, sys\nfrom llama_cpp import Llama\n"
        "llm = Llama(model_path=sys.argv[1], n_ctx=512, n_batch=256, n_ubatch=256, n_threads=2, verbose=False)\n"
        "ids = llm.tokenize(sys.argv[2].encode(), add_bos=True, special=False)\n"
        "out = []\n"
        "for t in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):\n"
        "    if t == llm.token_eos() or len(out) >= 12: break\n"
        "    out.append(t)\n"
        "print(json.dumps({'ids': ids, 'new': out, 'text': llm.detokenize(out).decode('utf-8', 'replace')}))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(gguf), text], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    want = json.loads(proc.stdout.splitlines()[-1])
    with LlamaCpp(gguf, threads=2) as llm:
        ids = llm.tokenize(text, add_special=True, parse_special=False)
        new = llm.greedy(ids, 12, 512)
        assert (ids, new, llm.detokenize(new)) == (want["ids"], want["new"], want["text"])


def test_validate_keeps_the_transformers_half_when_llamacpp_crashes(exported, tiny_llama_49k, capsys, monkeypatch):
    gguf, _ = exported
    monkeypatch.setenv(CRASH_HOOK, "1")
    code, err = run_main(["validate", gguf, "--base", tiny_llama_49k, "--tasks", "ppl,passkey", "--lengths", "128,512",
                          "--passkey-lengths", "512", "--depths", "0.5", "--trials", "1", "--documents", "1", "-q"],
                         capsys, monkeypatch)
    report_path = gguf.with_name("tiny-linear.report") / "report.json"
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0] == (f"error: llama.cpp crashed (SIGSEGV) evaluating tiny-linear.gguf — {KNOWN_ISSUE} — "
                        f"the transformers results are kept in {report_path}")
    report = json.loads(report_path.read_text())
    jsonschema.validate(report, R.schema())
    ppl, passkey = report["tasks"]["ppl"], report["tasks"]["passkey"]
    assert all(v is not None and v > 1 for v in ppl["base"]) and ppl["extended"] == [None, None]
    assert passkey["base"][0][0] is not None and passkey["extended"] == [[None]]
    assert any("llama.cpp crashed (SIGSEGV)" in n and "extended results are missing" in n for n in report["notes"])
    assert not report["passed"]
    assert {c["name"]: c["passed"] for c in report["checks"]}["ppl_finite"] is False
    assert "—" in (report_path.parent / "report.md").read_text()  # the table shows "not measured", no crash


def test_parity_keeps_the_transformers_half_when_llamacpp_crashes(exported, capsys, monkeypatch):
    gguf, hf = exported
    report_path = gguf.with_name("tiny-linear.report") / "report.json"
    if report_path.exists():  # the validate test above may have written one: parity merges into it
        report_path.unlink()
    monkeypatch.setenv(CRASH_HOOK, "1")
    code, err = run_main(["validate", "--parity", hf, gguf, "--tokens", "300", "-q"], capsys, monkeypatch)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: llama.cpp crashed (SIGSEGV) evaluating tiny-linear.gguf — ")
    assert lines[0].endswith(f"the transformers results (HF perplexity) are kept in {report_path}")
    report = json.loads(report_path.read_text())
    jsonschema.validate(report, R.schema())
    p = report["tasks"]["parity"]
    assert p["ppl_hf"] > 1 and p["tokens"] == 300 and p["ppl_gguf"] is None and p["ratio"] is None
    assert p["crashed"] == "llama.cpp crashed (SIGSEGV) evaluating tiny-linear.gguf"
    assert (p["hf"], p["gguf"]) == ("tiny-linear", "tiny-linear.gguf")  # names, never machine paths
    assert [(c["name"], c["passed"]) for c in report["checks"]] == [("parity_ppl_ratio", False), ("parity_top1", False)]
    monkeypatch.delenv(CRASH_HOOK)  # and without the crash the same parity runs and replaces the crashed result
    code, err = run_main(["validate", "--parity", hf, gguf, "--tokens", "300", "-q"], capsys, monkeypatch)
    assert code in (0, None), err
    p = json.loads(report_path.read_text())["tasks"]["parity"]
    assert "crashed" not in p and 0.98 < p["ratio"] < 1.02 and p["top1_agreement"] > 0.9
