"""A source is read once (issue 17): converting the embedded GGUF parses it once, and `--to both` computes the rope
and checks the GGUF export once.

gguf's reader takes seconds per 49k-token vocabulary, so every extra parse of the source was seconds of a
conversion. The counts here are of real work: GGUFReader constructions with open_gguf's own last-reader cache turned
off (so only the Source's kept reader can spare a parse), and the real gguf_rope / check_gguf calls.
"""
from __future__ import annotations

from pathlib import Path

import gguf
import pytest

import ropeconvert.formats.gguf as gguf_export
import ropeconvert.formats.hf as hf_export
import ropeconvert.formats.gguf_reextend as gguf_reextend
from ropeconvert.convert.options import ConvertOptions
from ropeconvert.convert.pipeline import convert
from ropeconvert.formats import gguf_read
from ropeconvert.formats.gguf_keys import RopeTensors
from ropeconvert.formats.gguf_integrity import check_seal
from ropeconvert.formats.source import embedded_gguf


class _NoCache(dict):
    """open_gguf's module-level cache, refusing to keep anything."""

    def __setitem__(self, key, value) -> None:
        pass


@pytest.fixture
def opens(monkeypatch) -> list[Path]:
    """The paths GGUFReader is constructed on during the test, with open_gguf's cache off."""
    seen: list[Path] = []

    class Counting(gguf.GGUFReader):
        def __init__(self, path, *args, **kwargs):
            seen.append(Path(path).resolve())
            super().__init__(path, *args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", Counting)
    monkeypatch.setattr(gguf_read, "_READERS", _NoCache())
    return seen


def _counting(monkeypatch, module, name: str) -> list:
    calls: list = []
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_gguf_conversion_of_the_embedded_model_parses_it_once(tmp_path, opens):
    out = tmp_path / "smol-yarn.gguf"
    result = convert(ConvertOptions("smollm2-135m", "yarn", to="gguf", out=out, knobs={"factor": 2.0},
                                    progress=False))
    assert result.outputs["gguf"] == out.absolute()
    assert opens == [embedded_gguf().resolve()]  # base rope, licence, checks, provenance, copy: one reader
    assert check_seal(out) == (True, False)  # and the file the single reader fed is a sound, sealed export
    written = gguf_read.open_gguf(out)
    source = gguf_read.open_gguf(embedded_gguf())
    assert [t.name for t in written.tensors if t.name not in RopeTensors.ALL] == \
        [t.name for t in source.tensors]
    assert gguf_read.field(written, "llama.context_length") == 2 * gguf_read.field(source, "llama.context_length")


@pytest.mark.parametrize("kind", ["hf", "gguf"])
def test_to_both_computes_the_rope_and_checks_the_gguf_once(kind, tmp_path, monkeypatch, tiny_llama):
    """An HF source is converted, a GGUF source re-extended: either way one rope and one check serve both halves."""
    model, outtype = (str(tiny_llama), "f32") if kind == "hf" else ("smollm2-135m", None)
    ropes = _counting(monkeypatch, gguf_export, "gguf_rope")
    ropes_reextend = _counting(monkeypatch, gguf_reextend, "gguf_rope")
    checks = _counting(monkeypatch, gguf_export, "check_gguf")
    seals = _counting(monkeypatch, gguf_reextend, "check_seal")
    result = convert(ConvertOptions(model, "linear", to="both", out=tmp_path / "linear", knobs={"factor": 2.0},
                                    outtype=outtype, progress=False))
    assert set(result.outputs) == {"hf", "gguf"}
    assert (len(ropes), len(ropes_reextend), len(checks)) == (1, 0, 1)
    assert len(seals) == (kind == "gguf")  # a GGUF source's own seal, checked once before the HF half
    assert check_seal(result.outputs["gguf"]) == (True, False)
    assert gguf_read.field(gguf_read.open_gguf(result.outputs["gguf"]), "llama.rope.scaling.factor") == 2.0


def test_to_both_refuses_the_gguf_half_before_writing_the_hf_half(tmp_path, monkeypatch, tiny_qwen2):
    """The one check runs before the HF half: a method qwen2's GGUF graph cannot express leaves nothing behind."""
    from ropeconvert.errors import UnsupportedError

    writes = _counting(monkeypatch, hf_export, "write_hf_export")
    with pytest.raises(UnsupportedError, match="qwen2"):
        convert(ConvertOptions(str(tiny_qwen2), "llama3", to="both", out=tmp_path / "q", knobs={"factor": 2.0},
                               progress=False))
    assert writes == [] and list(tmp_path.iterdir()) == []
