"""`ropeconvert search` end to end on a tiny random model (original context 64, so each evaluation is quick):
factor files the main command exports and transformers loads, resume = uninterrupted, LongRoPE2's structure,
needle-only loss, and one-line errors for bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import make_tiny_model
from helpers import assert_one_line_error, run_cli

ORIGINAL, TARGET = 64, 128
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny matmuls: a second thread only adds barrier waits on a busy CPU


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory, smollm2_hf):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama-64", smollm2_hf, original_context=ORIGINAL)


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """Three short real-text documents (the start of three Austen novels): no corpus parse per run."""
    from ropeconvert.validators import corpus

    root = tmp_path_factory.mktemp("texts")
    for doc in corpus.load("austen")[:3]:
        (root / f"{doc.name}.txt").write_text(doc.text[:4000], encoding="utf-8")
    return root


def fast(texts):
    return ["--target-context", str(TARGET), "--documents", "2", "--quiet", "--text", str(texts)]


def search(model, out, texts, *extra):
    proc = run_cli("search", model, "--out", out, *fast(texts), *extra, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    return proc


def search_here(model, out, texts, **kw):
    """The same search in this process (no interpreter start-up per run)."""
    from ropeconvert.convert.search.run import SearchOptions, search as run

    return run(SearchOptions(str(model), **{"target_context": TARGET, "documents": 2, "text": str(texts), "out": out,
                                            "progress": False, **kw}))


def monotone(v) -> bool:
    return all(a <= b for a, b in zip(v, v[1:]))


def test_longrope_search_exports_and_loads(tiny64, texts, tmp_path):
    out = tmp_path / "search"
    proc = search(tiny64, out, texts, "--budget", "14", "--population", "6", "--seed", "3")
    assert "budget of 14 evaluations reached" in proc.stdout
    factors = json.loads((out / "factors.json").read_text())
    long = factors["long_factor"]
    assert len(long) == 8 and monotone(long) and all(1.0 <= f <= 2.5 for f in long)  # [1, 1.25·s], s = 2
    assert all(abs(f * 100 - round(f * 100)) < 1e-9 for f in long)  # the 0.01 grid
    assert factors["short_factor"] is None and factors["original_context"] == ORIGINAL
    assert factors["target_context"] == TARGET and factors["evaluations"] == 14
    assert set(factors["references"]) == {"PI", "NTK", "YaRN"}

    log = json.loads((out / "search_log.json").read_text())
    evals = log["phases"]["long"]["evaluations"]
    assert len(evals) == 14 and len({tuple(e["genes"]) for e in evals}) == 14  # each candidate once
    assert all(e["seconds"] >= 0 and "generation" in e and len(e["factors"]) == 8 for e in evals)
    assert min(e["fitness"] for e in evals) == factors["fitness"]
    best = min(evals, key=lambda e: e["fitness"])
    assert best["factors"] == long
    assert log["phases"]["long"]["references"]["YaRN"]["attention_factor"] == pytest.approx(0.1 * math.log(2) + 1)
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    export = tmp_path / "export"
    proc = run_cli(tiny64, "--method", "longrope", "--factors", out / "factors.json", "--out", export, "--quiet", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(export)
    rope = model.config.rope_parameters if hasattr(model.config, "rope_parameters") else model.config.rope_scaling
    assert rope["rope_type"] == "longrope" and list(rope["long_factor"]) == pytest.approx(long)
    assert model.config.max_position_embeddings == TARGET


def test_resume_after_interruption_gives_the_same_result(tiny64, texts, tmp_path):
    kw = dict(budget=16, population=6, seed=5)
    search_here(tiny64, tmp_path / "full", texts, **kw)
    first = search_here(tiny64, tmp_path / "cut", texts, stop_after=2, **kw)
    assert not first.complete and not (tmp_path / "cut" / "factors.json").exists()
    state = json.loads((tmp_path / "cut" / "checkpoint.json").read_text())["phases"]["long"]["state"]
    assert state["generation"] == 2 and not state["done"] and len(state["evaluations"]) == 8
    proc = run_cli("search", tiny64, "--out", tmp_path / "cut", *fast(texts), "--budget", "16", "--population", "6",
                   "--seed", "5", "--resume", env=ONE_THREAD)  # the CLI path of a resume
    assert proc.returncode == 0, proc.stderr
    full = json.loads((tmp_path / "full" / "factors.json").read_text())
    cut = json.loads((tmp_path / "cut" / "factors.json").read_text())
    assert cut["long_factor"] == full["long_factor"] and cut["fitness"] == full["fitness"]
    trail = lambda p: [(e["genes"], e["fitness"], e["kind"], e["generation"])  # noqa: E731
                       for e in json.loads((p / "search_log.json").read_text())["phases"]["long"]["evaluations"]]
    assert trail(tmp_path / "cut") == trail(tmp_path / "full") and len(trail(tmp_path / "full")) == 16


def test_longrope2_structure_and_short_factors(tiny64, texts, tmp_path):
    out = tmp_path / "lr2"
    search_here(tiny64, out, texts, method="longrope2", budget=10, population=5, short=True)
    f = json.loads((out / "factors.json").read_text())
    from ropeconvert.convert.search.longrope2 import critical_dim
    from ropeconvert.convert.spec import BaseRope

    cd = critical_dim(BaseRope(16, 16, 10000.0, ORIGINAL))
    assert f["critical_dim"] == cd and f["fitness_kind"] == "needle_ppl" and 0 < cd < 8
    long = f["long_factor"]
    assert monotone(long) and all(2.0 <= x <= 4.0 for x in long[cd:])  # searched part in [s, 2s]
    np.testing.assert_allclose(long[:cd], [long[cd] ** (i / cd) for i in range(cd)])  # NTK below cd
    short = f["short_factor"]
    assert len(short) == 8 and monotone(short) and all(1.0 <= x <= round(2 ** (1 / 3), 2) for x in short)
    log = json.loads((out / "search_log.json").read_text())
    assert log["phases"]["short"]["length"] == ORIGINAL and len(log["phases"]["short"]["evaluations"]) == 10
    assert log["phases"]["short"]["evaluations"][0]["kind"] == "seed:identity"
    proc = run_cli(tiny64, "--method", "longrope", "--factors", out / "factors.json", "--out", tmp_path / "e", "-q", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads((tmp_path / "e" / "config.json").read_text())
    rope = cfg.get("rope_scaling") or cfg["rope_parameters"]
    assert rope["short_factor"] == pytest.approx(short)


def test_needle_fitness_counts_only_needle_tokens(tiny64):
    from ropeconvert.convert.search.fitness import Sample, sample_nll, text_sample
    from ropeconvert.convert.search.needle import needle_sample
    from ropeconvert.validators.perplexity import document_ppl, token_nll
    from ropeconvert.validators.runtime import load

    rt = load(tiny64, device="cpu")
    hay = rt.tokenizer("It was a truth universally acknowledged.\nAnd so on.\n" * 30, add_special_tokens=False).input_ids
    s = needle_sample(rt.tokenizer, "d", hay, TARGET, 0.5, "6716097", rt.bos_id)
    full, _ = token_nll(rt.model, list(s.ids))  # NLL of tokens 1..n-1
    mask = np.asarray(s.scored[1:])
    assert rt.tokenizer.decode([t for t, m in zip(s.ids, s.scored) if m]) == "6716097"
    (needle,) = sample_nll(rt.model, [s])
    assert needle == pytest.approx(full[mask].mean(), rel=1e-5)
    assert abs(needle - full.mean()) > 1e-3  # the reference's cus_labels bug would give this one
    # a mask over other positions gives another value: the loss really follows the mask
    other = Sample("o", s.ids, (False,) * 10 + (True,) * 7 + (False,) * (len(s.ids) - 17))
    assert sample_nll(rt.model, [other])[0] == pytest.approx(full[9:16].mean(), rel=1e-5)
    # plain samples are the validators' one-window perplexity; a batch of two gives the same numbers
    t1, t2 = text_sample("a", hay, TARGET, rt.bos_id), text_sample("b", hay[5:], TARGET, rt.bos_id)
    assert math.exp(sample_nll(rt.model, [t1])[0]) == pytest.approx(
        document_ppl(rt.model, hay, TARGET, bos_id=rt.bos_id, truncate=True), rel=1e-5)
    np.testing.assert_allclose(sample_nll(rt.model, [t1, t2], batch_size=2), sample_nll(rt.model, [t1, t2]), rtol=1e-4)


@pytest.mark.parametrize("args,needles", [
    (["--budget", "4", "--population", "6"], ["--budget 4 is smaller than the population 6"]),
    (["--target-context", "64"], ["target context 64 must be larger than the original context 64"]),
    (["--method", "longrope2", "--critical-dim", "9"], ["--critical-dim 9 is outside"]),
])
def test_bad_input_is_one_line(tiny64, texts, tmp_path, args, needles):
    proc = run_cli("search", tiny64, "--out", tmp_path / "x", *fast(texts), *args)
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "x").exists()  # refused before anything was written


@pytest.mark.parametrize("kw,needle", [
    (dict(method="yarn"), "search method 'yarn'"),
    (dict(population=1), "--population must be at least 2"),
    (dict(short=True, short_max=1.001), "--short-max"),
    (dict(critical_dim=3), "--critical-dim applies to --method longrope2"),
    (dict(documents=9), "only 3 document(s)"),
])
def test_more_refusals(tiny64, texts, tmp_path, kw, needle):
    from ropeconvert.errors import RopeConvertError

    with pytest.raises(RopeConvertError) as e:
        search_here(tiny64, tmp_path / "y", texts, **kw)
    assert needle in e.value.one_line()


def test_resume_refusals(tiny64, texts, tmp_path):
    out = tmp_path / "s"
    common = [*fast(texts), "--budget", "6", "--population", "6"]
    assert_one_line_error(run_cli("search", tiny64, "--out", out, *common, "--resume"), "no search checkpoint")
    search_here(tiny64, out, texts, budget=6, population=6)
    assert_one_line_error(run_cli("search", tiny64, "--out", out, *common), "already holds a search", "--resume")
    from ropeconvert.errors import InputError

    with pytest.raises(InputError, match="other settings .*seed"):
        search_here(tiny64, out, texts, budget=6, population=6, seed=9, resume=True)
    ckpt = out / "checkpoint.json"
    ckpt.write_text(ckpt.read_text()[:-40])  # a torn write
    assert_one_line_error(run_cli("search", tiny64, "--out", out, *common, "--resume"), "corrupt")
    search_here(tiny64, out, texts, budget=6, population=6, force=True)  # --force starts over
    assert json.loads(ckpt.read_text())["phases"]["long"]["state"]["done"]
