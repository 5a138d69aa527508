"""The search engine without a model: monotone operators, seeds in frequency space, budget, cache, plateau,
crash-and-resume equality, LongRoPE2's structure, checkpoint validation, needle samples."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ropeconvert.convert.methods import build_spec
from ropeconvert.convert.search import checkpoint, longrope, longrope2
from ropeconvert.convert.search.evolution import (Evolution, Settings, Space, best_record, crossover, fresh_state,
                                                  mutate, new_cross)
from ropeconvert.convert.spec import BaseRope
from ropeconvert.errors import InputError, SpecError

SMOLLM2 = BaseRope(head_dim=64, rotary_dim=64, rope_theta=1e5, original_context=8192)
LLAMA2 = BaseRope(head_dim=128, rotary_dim=128, rope_theta=1e4, original_context=4096)
LLAMA3 = BaseRope(head_dim=128, rotary_dim=128, rope_theta=5e5, original_context=8192)
PHI3 = BaseRope(head_dim=96, rotary_dim=96, rope_theta=1e4, original_context=2048)


def monotone(v) -> bool:
    return all(a <= b for a, b in zip(v, v[1:]))


@pytest.mark.parametrize("space", [Space(8, 100, 250), Space(1, 100, 130), Space(32, 125, 250), Space(5, 100, 101)])
def test_mutation_and_crossover_stay_monotone_and_in_range(space):
    rng = np.random.default_rng(0)
    a = space.snap(np.linspace(1.0, space.hi / 100, space.n))
    b = space.snap(np.full(space.n, space.hi / 100))
    changed = 0
    for _ in range(2000):
        m = mutate(rng, a, space, 0.3)
        assert space.contains(m), m
        changed += m != a
        kind, c = new_cross(rng, a, m, space, 0.3, {a, m})
        assert c is None or space.contains(c), c
        x = crossover(rng, a, b, 0.3)
        assert all(xi in (ai, bi) for xi, ai, bi in zip(x, a, b))
    assert changed > 500  # mutation actually moves genes


def test_seeds_are_pi_ntk_yarn_in_frequency_space():
    s = 2.0
    seeds = dict(longrope.seed_factors(SMOLLM2, s))
    # every seed divides θ_i exactly as the method's own spec does (NTK is a new base; compare frequencies)
    for name, method in (("pi", "linear"), ("ntk", "ntk"), ("yarn", "yarn")):
        spec = build_spec(method, SMOLLM2, factor=s)
        np.testing.assert_allclose(seeds[name], spec.freq_factors(16384), rtol=1e-12)
    # pitfall 3: not the reference search.py's factor-space blend s·(1−m)+m, which is far larger in the ramp
    from ropeconvert.convert.methods.yarn import correction_range

    low, high = correction_range(SMOLLM2, 32, 1)
    i = (low + high) // 2
    m = 1 - (i - low) / (high - low)
    assert seeds["yarn"][i] == pytest.approx(1 / ((1 - m) / s + m))
    assert seeds["yarn"][i] < s * (1 - m) + m - 0.1
    assert seeds["ntk"][0] == 1.0 and seeds["ntk"][-1] == pytest.approx(s)


def test_long_phase_range_is_the_papers_and_seeds_fit():
    phase = longrope.long_phase(SMOLLM2, 16384)
    assert (phase.space.lo, phase.space.hi) == (100, 250)  # [1.0, 1.25·s]
    assert [name for name, _ in phase.seeds] == ["pi", "ntk", "yarn"]
    assert all(phase.space.contains(g) for _, g in phase.seeds)
    assert longrope.long_phase(SMOLLM2, 16384, max_factor=3.0).space.hi == 300  # the released code's 1+s
    with pytest.raises(SpecError):
        longrope.long_phase(SMOLLM2, 16384, max_factor=1.5)


@pytest.mark.parametrize("base,expected", [(SMOLLM2, 19), (LLAMA3, 34), (LLAMA2, 45), (PHI3, 30)])
def test_critical_dim_matches_reference_code(base, expected):
    assert longrope2.critical_dim(base) == expected  # reference/methods.md §2.5


def test_longrope2_ntk_below_critical_dim_and_search_in_s_2s():
    phase = longrope2.long_phase(SMOLLM2, 16384)
    cd = phase.info["critical_dim"]
    assert (phase.space.n, phase.space.lo, phase.space.hi) == (32 - cd, 200, 400)
    rng = np.random.default_rng(1)
    genes = phase.seeds[0][1]
    for _ in range(50):
        genes = mutate(rng, genes, phase.space, 0.3)
        f = phase.expand(genes)
        assert len(f) == 32 and monotone(f)
        assert all(2.0 <= x <= 4.0 for x in f[cd:])
        np.testing.assert_allclose(f[:cd], [f[cd] ** (i / cd) for i in range(cd)], rtol=1e-12)
        assert f[0] == 1.0
    with pytest.raises(SpecError):
        longrope2.long_phase(SMOLLM2, 16384, cd=32)


def _run(space, fitness, settings, state, seeds, saves=None, stop_after=None):
    evo = Evolution(space, seeds, settings, fitness, lambda g: [x / 100 for x in g],
                    (lambda st: saves.append(json.loads(json.dumps(st)))) if saves is not None else (lambda st: None),
                    state)
    return evo.run(stop_after)


def _bowl(target):
    calls = []

    def f(genes):
        calls.append(tuple(genes))
        return 10.0 + float(np.sum((np.asarray(genes) - target) ** 2)) / 1e4

    return f, calls


SPACE = Space(6, 100, 300)
SEEDS = [("pi", (200,) * 6), ("ntk", SPACE.snap(2.0 ** (np.arange(6) / 5))), ("flat", (100,) * 6)]
TARGET = np.array([100, 120, 150, 190, 240, 290])


def test_budget_cache_and_progress():
    settings = Settings.for_population(8, budget=40, generations=50, patience=50)
    fitness, calls = _bowl(TARGET)
    st = _run(SPACE, fitness, settings, fresh_state(0), SEEDS)
    assert len(st["evaluations"]) == 40 == len(calls)  # the budget, exactly
    assert len(set(calls)) == len(calls)  # identical candidates never evaluated twice
    assert st["stop_reason"].startswith("budget")
    assert [e["kind"] for e in st["evaluations"][:3]] == ["seed:pi", "seed:ntk", "seed:flat"]
    assert all(SPACE.contains(tuple(e["genes"])) for e in st["evaluations"])
    history = [h for h in st["best_history"]]
    assert all(b <= a for a, b in zip(history, history[1:]))
    assert best_record(st)["fitness"] < min(e["fitness"] for e in st["evaluations"][:3])  # evolution improved


def test_plateau_stops_early():
    settings = Settings.for_population(6, budget=1000, generations=100, patience=3)
    st = _run(SPACE, lambda g: 5.0, settings, fresh_state(0), SEEDS)
    assert st["stop_reason"].startswith("plateau") and st["generation"] == 4


class Crash(Exception):
    pass


@pytest.mark.parametrize("crash_at", [5, 13, 22])
def test_crash_mid_generation_resumes_to_the_same_search(crash_at):
    settings = Settings.for_population(8, budget=40, generations=50, patience=50)
    full = _run(SPACE, _bowl(TARGET)[0], settings, fresh_state(7), SEEDS)

    saves: list = []
    fitness, calls = _bowl(TARGET)

    def crashing(genes):
        if len(calls) == crash_at:
            raise Crash
        return fitness(genes)

    with pytest.raises(Crash):
        _run(SPACE, crashing, settings, fresh_state(7), SEEDS, saves)
    on_disk = saves[-1]  # what the checkpoint file held when the process died
    assert len(on_disk["evaluations"]) == crash_at
    resumed_fitness, resumed_calls = _bowl(TARGET)
    resumed = _run(SPACE, resumed_fitness, settings, on_disk, SEEDS)
    strip = lambda st: [(e["genes"], e["fitness"], e["generation"], e["kind"]) for e in st["evaluations"]]  # noqa
    assert strip(resumed) == strip(full)
    assert resumed["best_history"] == full["best_history"] and resumed["population"] == full["population"]
    assert len(resumed_calls) == 40 - crash_at  # nothing on disk was evaluated again


def test_stop_after_then_resume_equals_uninterrupted():
    settings = Settings.for_population(8, budget=60, generations=50, patience=50)
    full = _run(SPACE, _bowl(TARGET)[0], settings, fresh_state(3), SEEDS)
    part = _run(SPACE, _bowl(TARGET)[0], settings, fresh_state(3), SEEDS, stop_after=2)
    assert not part["done"] and part["generation"] == 2
    resumed = _run(SPACE, _bowl(TARGET)[0], settings, json.loads(json.dumps(part)), SEEDS)
    assert resumed["evaluations"] == [
        {**e, "seconds": r["seconds"]} for e, r in zip(full["evaluations"], resumed["evaluations"])]
    assert len(resumed["evaluations"]) == len(full["evaluations"])


def test_checkpoint_refuses_corrupt_and_foreign(tmp_path):
    path = tmp_path / "checkpoint.json"
    data = checkpoint.new({"seed": 0})
    data["phases"]["long"] = {"references": {}, "state": fresh_state(0)}
    checkpoint.write_json(path, data)
    assert checkpoint.load(path, {"seed": 0})["phases"]["long"]["state"]["generation"] == 0
    with pytest.raises(InputError, match="other settings"):
        checkpoint.load(path, {"seed": 1})
    for bad in ("{not json", json.dumps({"format": "x"}),
                json.dumps({**data, "phases": {"long": {"references": {}, "state": {**fresh_state(0), "rng": 5}}}}),
                json.dumps({**data, "phases": {"long": {"references": {}, "state": {
                    **fresh_state(0), "evaluations": [{"genes": ["a"], "fitness": 1.0, "factors": []}]}}}})):
        path.write_text(bad)
        with pytest.raises(InputError, match="corrupt"):
            checkpoint.load(path, {"seed": 0})
    with pytest.raises(InputError, match="no search checkpoint"):
        checkpoint.load(tmp_path / "missing.json", {})


class _DigitTokenizer:
    """A character-level stand-in tokenizer: one token per character (ids = code points)."""

    def __call__(self, text, add_special_tokens=False):
        return type("Enc", (), {"input_ids": [ord(c) for c in text]})()

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_needle_sample_scores_exactly_the_answer_number():
    from ropeconvert.convert.search.needle import NEEDLE, needle_sample

    tok = _DigitTokenizer()
    hay = tok("line one\nline two is here\n" * 40).input_ids
    for depth in (0.0, 0.5):
        s = needle_sample(tok, "doc", hay, 900, depth, "6716097", bos_id=1)
        assert len(s.ids) == 900 and s.ids[0] == 1
        scored = [i for i, m in enumerate(s.scored) if m]
        assert tok.decode([s.ids[i] for i in scored]) == "6716097"  # not the space, not the question
        assert scored == list(range(893, 900))
        text = tok.decode(s.ids[1:])
        at = text.index(NEEDLE.format(key="wandering-age", value="6716097"))
        if depth == 0:
            assert text[:at].endswith("afterwards.\n")  # the paper's placement: right at the start
        else:
            assert text[at - 1] == "\n" and abs(at - 0.5 * len(text)) < 60  # mid-text, at a line start
