"""The factor catalog: published factors matched to a model by its config values, each read back through the same
parser as a user's --factors file."""
from __future__ import annotations

import dataclasses

import pytest

from ropeconvert.convert import catalog
from ropeconvert.convert.methods import build_spec
from ropeconvert.formats.hf_config import base_rope_from_config


def _config_of(entry: catalog.Entry) -> dict:
    """A config with exactly the entry's identity values (what a real checkpoint of that model says)."""
    config = {**entry.identity, "max_position_embeddings": entry.trained_context}
    return config


@pytest.mark.parametrize("entry", catalog.ENTRIES, ids=lambda e: e.file)
def test_every_entry_reads_back_through_the_factor_file_parser(entry):
    factors = entry.factors()
    pairs = entry.identity["hidden_size"] // entry.identity["num_attention_heads"] // 2
    assert len(factors.long) == pairs
    assert factors.short is None or len(factors.short) == pairs
    assert all(f >= 1.0 for f in factors.long)
    assert entry.target_context > entry.original_context
    assert entry.source.startswith("https://") and "/work/" not in entry.source and "/root/" not in entry.source


@pytest.mark.parametrize("entry", catalog.ENTRIES, ids=lambda e: e.file)
def test_a_model_with_the_entrys_config_gets_those_factors(entry):
    config = _config_of(entry)
    assert catalog.lookup(config, entry.target_context) == entry
    assert catalog.lookup(config, entry.target_context * 2) in (None, *catalog.ENTRIES)
    base = base_rope_from_config(config, entry.original_context)
    factors = entry.factors()
    spec = build_spec("longrope", base, **entry.knobs())
    assert spec.factors == pytest.approx(factors.long)
    assert spec.short_factors == (pytest.approx(factors.short) if factors.short else spec.short_factors)


def test_one_different_config_value_is_no_match():
    entry = catalog.ENTRIES[0]
    config = _config_of(entry)
    for key, value in entry.identity.items():
        changed = {**config, key: value * 2 if isinstance(value, (int, float)) else value + "x"}
        assert catalog.lookup(changed, entry.target_context) is None, key
    assert catalog.lookup({**config, "max_position_embeddings": 8192}, entry.target_context) is None


def test_mistral_is_matched_by_its_32k_config_and_extended_from_4k():
    mistral = [e for e in catalog.ENTRIES if e.identity.get("model_type") == "mistral"]
    assert mistral and all(e.trained_context == 32768 and e.original_context == 4096 for e in mistral)
    v02 = {**_config_of(mistral[0]), "rope_theta": 1000000.0, "sliding_window": None}  # Mistral-7B-v0.2: not a match
    assert catalog.candidates(v02) == []


def test_a_phi3_config_that_already_carries_longrope_still_matches_by_its_original_length():
    entry = next(e for e in catalog.ENTRIES if e.identity.get("model_type") == "phi3")
    config = {**entry.identity, "max_position_embeddings": 131072, "original_max_position_embeddings": 4096}
    assert catalog.lookup(config, 131072) == entry


def test_entries_are_frozen_values():
    with pytest.raises(dataclasses.FrozenInstanceError):
        catalog.ENTRIES[0].target_context = 1


def test_longrope_without_factors_takes_the_catalog_entry_for_this_model(tiny_llama, tmp_path, monkeypatch):
    """The pipeline end to end on a tiny model: a catalog entry with its config values is used (and said), the export
    is the one `--factors FILE` gives; a model no entry has gets the "needs factors" refusal under --no-search (without
    it the default search runs: tests/test_auto.py)."""
    import json

    from ropeconvert.convert.options import ConvertOptions
    from ropeconvert.convert.pipeline import convert
    from ropeconvert.errors import SpecError

    config = json.loads((tiny_llama / "config.json").read_text())
    pairs = config["head_dim"] // 2
    factors = tmp_path / "factors.csv"
    factors.write_text(",".join(f"{1 + 3 * i / (pairs - 1):.3f}" for i in range(pairs)) + "\n")
    identity = {k: config[k] for k in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                       "num_key_value_heads")}
    identity["rope_theta"] = catalog._value(config, "rope_theta")  # top level, or in transformers 5's rope dict
    entry = catalog.Entry("the tiny test model, 256 → 1024", str(factors), identity, 256, 256, 1024,
                          "https://example.org/tiny-factors.csv")
    monkeypatch.setattr(catalog, "ENTRIES", (entry,))

    found = convert(ConvertOptions(str(tiny_llama), "longrope", out=tmp_path / "cat", knobs={"factor": 4.0},
                                   progress=False))
    assert any(n.startswith("factors from the catalog: the tiny test model") for n in found.notes)
    named = convert(ConvertOptions(str(tiny_llama), "longrope", out=tmp_path / "named", progress=False,
                                   knobs={"factors": factors, "target_context": 1024}))
    assert found.spec.to_dict() == named.spec.to_dict()
    assert json.loads((tmp_path / "cat" / "config.json").read_text()) == \
        json.loads((tmp_path / "named" / "config.json").read_text())

    monkeypatch.setattr(catalog, "ENTRIES", ())
    with pytest.raises(SpecError, match="longrope needs factors"):
        convert(ConvertOptions(str(tiny_llama), "longrope", out=tmp_path / "none", knobs={"factor": 4.0},
                               progress=False, no_search=True))
    assert not (tmp_path / "none").exists() and not (tmp_path / "none.search").exists()
