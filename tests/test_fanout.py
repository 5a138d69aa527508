"""Fan-out on Ray (ropeconvert/fanout.py): a local cluster (`ray.init(num_cpus=2)`, two actors, each holding a tiny
model) runs a LongRoPE search, DPE's detection, a --method auto run and a RULER validation, and each result equals the serial run's
with the same seed; an actor killed mid-search (the test hook) has its job re-queued and the search ends the same;
the pool keeps submission order and re-raises a job's own error; --workers without Ray is one line and exit 2."""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from conftest import make_tiny_model

import ray  # noqa: E402 — the ray extra, which make install always installs: missing, these tests fail, not skip

ORIGINAL, TARGET = 64, 128


@pytest.fixture(scope="module", autouse=True)
def cluster():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the serial runs measure with one thread, as each of the two actors does
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory, small_tokenizer) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("fanout") / "tiny64", small_tokenizer, original_context=ORIGINAL)


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    from ropeconvert.validators import corpus

    root = tmp_path_factory.mktemp("texts")
    for doc in corpus.load("austen")[:4]:
        (root / f"{doc.name}.txt").write_text(doc.text[:6000], encoding="utf-8")
    return root


def search(model, out: Path, texts: Path, workers=None):
    from ropeconvert.convert.search.run import SearchOptions, search as run

    return run(SearchOptions(str(model), target_context=TARGET, documents=2, text=str(texts), out=out, population=4,
                             generations=2, seed=3, progress=workers is not None, workers=workers))


def trajectory(out: Path) -> list:
    state = json.loads((out / "checkpoint.json").read_text())["phases"]["long"]
    refs = {k: v["fitness"] for k, v in state["references"].items()}
    return [refs] + [(r["generation"], r["kind"], r["genes"], r["fitness"]) for r in state["state"]["evaluations"]]


@pytest.fixture(scope="module")
def serial_search(tmp_path_factory, tiny64, texts):
    out = tmp_path_factory.mktemp("serial") / "search"
    search(tiny64, out, texts)
    return out


def test_search_on_two_workers_equals_the_serial_search(serial_search, tiny64, texts, tmp_path):
    out = tmp_path / "two"
    result = search(tiny64, out, texts, workers=2)
    assert result.complete and trajectory(out) == trajectory(serial_search)  # same order, RNG and fitness values
    assert (out / "factors.json").read_bytes() == (serial_search / "factors.json").read_bytes()


def test_a_worker_killed_mid_search_is_replaced_and_the_search_ends_the_same(serial_search, tiny64, texts, tmp_path,
                                                                            monkeypatch, capsys):
    from ropeconvert import fanout

    marker = tmp_path / "killed"
    monkeypatch.setenv(fanout.KILL_HOOK, str(marker))  # a worker's third job: the worker exits
    out = tmp_path / "killed-search"
    result = search(tiny64, out, texts, workers=2)
    assert marker.exists() and re.search(r"worker \d died; job \d+ re-queued on a fresh worker", capsys.readouterr().err)
    assert result.complete and trajectory(out) == trajectory(serial_search)
    assert (out / "factors.json").read_bytes() == (serial_search / "factors.json").read_bytes()


def test_auto_on_two_workers_equals_the_serial_run(tiny64, texts, tmp_path):
    from ropeconvert.convert.options import ConvertOptions
    from ropeconvert.convert.pipeline import convert
    from ropeconvert.formats.export import report_dir_for

    boards, lines = {}, []
    for workers in (None, 2):
        out = tmp_path / f"auto-{workers}.gguf"
        convert(ConvertOptions(str(tiny64), "auto", out=out, to="gguf", knobs={"target_context": TARGET},
                               text=str(texts), progress=False, candidates="ntk,yarn,longrope", search_budget=4,
                               workers=workers), say=lines.append)
        board = json.loads((report_dir_for(out) / "selection.json").read_text())
        boards[workers] = [(c["method"], c["ppl_target"], c["ppl_original"], c["passkey_target"])
                           for c in [board["base"] | {"method": "base"}, *board["candidates"]]], board["winner"]
    assert boards[2] == boards[None]
    assert (tmp_path / "auto-2.gguf").read_bytes() == (tmp_path / "auto-None.gguf").read_bytes()
    assert any(line.startswith("fan-out: 2 Ray worker(s)") for line in lines)
    assert any("on 2 workers" in line for line in lines)  # the estimate divides by the workers


def test_dpe_detection_on_two_workers_equals_the_serial_one(tiny_llama_49k, tmp_path):
    from ropeconvert.convert.search.dpe import search as detect
    from ropeconvert.convert.search.run import SearchOptions

    runs = {}
    for workers in (None, 2):
        result = detect(SearchOptions(str(tiny_llama_49k), method="dpe", target_context=512, window=32, groups=2,
                                      topk=6, lengths=(512, 256, 128), samples=1, out=tmp_path / f"dpe-{workers}",
                                      progress=False, workers=workers))
        log = json.loads(result.log.read_text())
        runs[workers] = ([(e["scales"], e["retrieved"], e["nll"]) for e in log["evaluations"]], log["selected"],
                         json.loads(result.map.read_text()))
    assert runs[2] == runs[None]  # the same selection, sweep order, scores and map


def _without_seconds(x):
    if isinstance(x, dict):
        return {k: _without_seconds(v) for k, v in x.items() if k != "seconds"}
    return [_without_seconds(v) for v in x] if isinstance(x, list) else x


def test_ruler_validation_on_two_workers_equals_the_serial_one(tmp_path_factory, smollm2_hf):
    from ropeconvert.convert.options import ConvertOptions
    from ropeconvert.convert.pipeline import convert
    from ropeconvert.validators.validate import Options, validate

    root = tmp_path_factory.mktemp("ruler-fanout")
    base = make_tiny_model(root / "tiny-1k", smollm2_hf, original_context=1024)
    convert(ConvertOptions(str(base), "yarn", out=root / "yarn", knobs={"factor": 2.0}, progress=False))
    reports = {}
    for workers in (None, 2):
        report, _ = validate(root / "yarn", str(base), Options(tasks=("niah_single_1", "niah_multiquery", "vt"),
                                                               lengths=(1024, 2048), samples=2, progress=False,
                                                               workers=workers))
        reports[workers] = report
    ruler = reports[2]["tasks"]["ruler"]
    assert set(ruler["tasks"]) == {"niah_single_1", "niah_multiquery", "vt"} and ruler["lengths"] == [1024, 2048]
    assert _without_seconds(reports[2]["tasks"]) == _without_seconds(reports[None]["tasks"])
    assert all(v is not None for v in ruler["seconds"]["extended"]["vt"])  # every cell measured on a worker


def _slow_echo(worker, value: int, delay: float) -> int:
    time.sleep(delay)
    return value


def _refuse(worker, value: int) -> int:
    from ropeconvert.errors import InputError

    raise InputError(f"job {value} refused", "fix it")


def test_the_pool_yields_in_submission_order_and_reraises_a_jobs_own_error():
    from ropeconvert import fanout
    from ropeconvert.errors import InputError

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    pool = fanout.pool(fanout.Workers(workers=2), say=lambda line: None)
    try:
        # the first job is the slowest: the second worker finishes the others first, the order stays
        assert list(pool.imap(_slow_echo, [(0, 1.0), (1, 0.0), (2, 0.0), (3, 0.0)])) == [0, 1, 2, 3]
        with pytest.raises(InputError, match="job 7 refused"):
            list(pool.imap(_refuse, [(7,)]))
        assert list(pool.imap(_slow_echo, [(5, 0.0)])) == [5]  # the pool still works after a job's error
    finally:
        pool.close()


@pytest.mark.parametrize("argv", [
    ["search", "MODEL", "--target-context", "128", "--workers", "2"],
    ["validate", "MODEL", "--workers", "2"],
    ["MODEL", "--method", "auto", "--target-context", "128", "--to", "gguf", "--workers", "2"],
], ids=["search", "validate", "auto"])
def test_workers_without_ray_installed_is_one_line(argv, tiny64, tmp_path, monkeypatch):
    from test_ruler_validate import cli, one_line_error

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as it does without the extra
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(*[str(tiny64) if a == "MODEL" else a for a in argv], "--out" if argv[0] != "validate" else
                       "--quiet", *([tmp_path / "out"] if argv[0] != "validate" else []))
    one_line_error(code, err, "--workers/--ray need Ray", "pip install 'ropeconvert[ray]'")
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("argv,needle", [
    (["MODEL", "--method", "yarn", "--factor", "2", "--workers", "2"], "--method yarn here runs none of them"),
    (["search", "MODEL", "--target-context", "128", "--workers", "0"], "--workers must be at least 1"),
], ids=["nothing-to-fan-out", "zero"])
def test_workers_where_they_do_nothing_is_one_line(argv, needle, tiny64, tmp_path, monkeypatch):
    from test_ruler_validate import cli, one_line_error

    monkeypatch.chdir(tmp_path)
    code, _, err = cli(*[str(tiny64) if a == "MODEL" else a for a in argv], "--out", tmp_path / "out")
    one_line_error(code, err, needle)
    assert list(tmp_path.iterdir()) == []  # nothing written
