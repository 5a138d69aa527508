"""formats/export.py: one reader of a finished export, shared by publish (card), validate, inspect and verify — each
file read once, one "same rope", bad input one line."""
from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from helpers import run_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exports(tiny_llama, tmp_path_factory):
    """An HF and a GGUF export of the tiny model (yarn ×4), written by the real CLI; tests only read them."""
    out = tmp_path_factory.mktemp("exports")
    hf, gg = out / "hf", out / "tiny.gguf"
    assert run_cli(tiny_llama, "-m", "yarn", "-s", "4", "-o", hf, "-q").returncode == 0
    proc = run_cli(tiny_llama, "-m", "yarn", "-s", "4", "--to", "gguf", "--outtype", "f16", "-o", gg, "-q")
    assert proc.returncode == 0, proc.stderr
    return hf, gg


def test_open_hf_export(exports, tiny_llama):
    from ropeconvert.convert.spec import RopeSpec
    from ropeconvert.formats.export import Export

    hf, _ = exports
    export = Export.open(hf)
    assert (export.kind, export.path, export.report_dir, export.card_path) == ("hf", hf, hf, hf / "README.md")
    manifest = json.loads((hf / "ropeconvert.json").read_text())
    assert export.manifest == manifest and export.provenance == manifest
    assert export.provenance["source_name"] == tiny_llama.name
    assert export.spec_dict == manifest["spec"] and isinstance(export.spec, RopeSpec)
    assert export.spec.method == "yarn" and (export.spec.original_context, export.spec.target_context) == (256, 1024)
    config = json.loads((hf / "config.json").read_text())
    assert export.rope["rope_scaling"] == config["rope_scaling"] and export.rope["max_position_embeddings"] == 1024
    assert "hidden_size" not in export.rope and export.arch == "llama"
    assert export.report is None  # not validated


def test_open_gguf_export(exports, tiny_llama):
    from ropeconvert.formats.export import Export
    from ropeconvert.formats.gguf_rope import GgufRope

    _, gg = exports
    export = Export.open(gg)
    assert (export.kind, export.arch) == ("gguf", "llama")
    assert export.report_dir == gg.with_name("tiny.report") and export.card_path == gg.with_name("tiny.README.md")
    assert export.provenance["source_name"] == tiny_llama.name and "source_path" not in export.provenance
    assert export.spec.method == "yarn" and export.spec.to_dict()["target_context"] == 1024
    assert export.spec_dict["base"]["original_context"] == 256
    rope = export.rope
    assert isinstance(rope, GgufRope)
    assert (rope.context_length, rope.original_context, rope.scaling_type, rope.scaling_factor) == (1024, 256, "yarn", 4.0)
    assert export.report is None and export.manifest is None


def _count_readers(monkeypatch) -> list[str]:
    """Every GGUFReader constructed from now on (gguf_read's one-reader cache disabled, so a second open shows)."""
    import gguf

    from ropeconvert.formats import gguf_read

    opened: list[str] = []
    real = gguf.GGUFReader

    class Counting(real):
        def __init__(self, path, *args, **kwargs):
            opened.append(str(path))
            super().__init__(path, *args, **kwargs)

    class NoCache(dict):
        def __setitem__(self, key, value):  # nothing is kept: each open_gguf would construct a reader
            pass

    monkeypatch.setattr(gguf, "GGUFReader", Counting)
    monkeypatch.setattr(gguf_read, "_READERS", NoCache())
    return opened


def test_card_verify_inspect_and_validate_share_one_gguf_open(exports, monkeypatch):
    from ropeconvert.formats.export import Export
    from ropeconvert.formats.hub_export import load_export
    from ropeconvert.formats.inspect import describe, verify
    from ropeconvert.formats.model_card import render_card
    from ropeconvert.validators.export_info import export_info

    _, gg = exports
    opened = _count_readers(monkeypatch)
    assert describe(gg)["arch"] == "llama" and describe(gg)["context_length"] == 1024
    assert len(opened) == 2  # the counter counts: two opens of the path, two readers

    opened.clear()
    export = Export.open(gg)
    card = render_card(load_export(export), repo_id="me/tiny-GGUF", base_id=None, license_fields={}, license_note=None)
    problems, done = verify(export)
    info = describe(export)
    kind, spec, _ = export_info(export)
    assert opened == [str(gg)]  # one reader for the card, verify, inspect and validate's read
    assert "llama.rope.scaling.factor = 4.0" in card  # the rope as written, from the same reader
    assert problems == [] and "rope keys and tensors equal the spec" in done
    assert info["rope.scaling.type"] == "yarn" and kind == "gguf" and spec["method"] == "yarn"


def test_each_json_file_of_an_hf_export_is_read_once(exports, monkeypatch):
    from ropeconvert.formats import export as export_module
    from ropeconvert.formats.hub_export import load_export
    from ropeconvert.formats.inspect import describe, verify
    from ropeconvert.validators.export_info import export_info

    hf, _ = exports
    reads: list[str] = []
    from ropeconvert.formats import safe_io

    real = safe_io.read_json
    counting = lambda path, *a, **k: reads.append(Path(path).name) or real(path, *a, **k)  # noqa: E731
    monkeypatch.setattr(export_module, "read_json", counting)  # the manifest and report
    monkeypatch.setattr(safe_io, "read_json", counting)  # config.json, through formats.source.read_config
    export = export_module.Export.open(hf)
    publication = load_export(export)
    problems, _ = verify(export)
    assert describe(export)["rope_type"] == "yarn" and export_info(export)[0] == "hf" and problems == []
    assert publication.status == "missing" and "config.json" in publication.files
    assert sorted(reads) == ["config.json", "ropeconvert.json"]


def test_one_same_rope_everywhere(exports):
    from ropeconvert.convert.methods import build_spec
    from ropeconvert.convert.spec import RopeSpec
    from ropeconvert.formats import export, hub_export, manifest
    from ropeconvert.formats.hf_config import base_rope_from_config

    hf, _ = exports
    spec = export.Export.open(hf).spec
    assert export.same_rope(spec, RopeSpec.from_dict(spec.to_dict()))
    assert export.same_rope(spec, RopeSpec.from_dict({**spec.to_dict(), "params": {}, "method": "renamed"}))
    assert not export.same_rope(spec, RopeSpec.from_dict({**spec.to_dict(), "target_context": 2048}))
    assert not export.same_rope(spec, RopeSpec.from_dict({**spec.to_dict(), "attention_factor": 1.5}))
    base = base_rope_from_config(json.loads((hf / "config.json").read_text()))
    assert not export.same_rope(spec, base)  # yarn is not the plain rope it was made from
    ntk = build_spec("ntk", base, factor=2.0)  # static NTK: plain rope with a new base, read back as a BaseRope
    assert export.same_rope(ntk, dataclasses.replace(base, rope_theta=ntk.rope_theta))
    assert not export.same_rope(ntk, base)
    assert hub_export.same_rope is manifest.same_rope is export.same_rope
    defined = {path.relative_to(REPO).as_posix(): node.name for folder in ("formats", "validators", "ropeconvert")
               for path in (REPO / folder).rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.FunctionDef) and "same_rope" in node.name}
    assert defined == {"formats/export.py": "same_rope"}


def test_report_dir_and_schema_live_in_export(exports):
    from ropeconvert.formats import export, hub_export

    hf, gg = exports
    assert export.report_dir_for(hf) == hf and export.report_dir_for(gg) == gg.with_name("tiny.report")
    assert export.REPORT_SCHEMA in export.REPORT_SCHEMAS and not hasattr(hub_export, "REPORT_SCHEMA")


@pytest.mark.parametrize("case,needle", [
    ("missing", "not found (it does not exist)"),
    ("empty-dir", "has no config.json"),
    ("text-file", "is neither an HF model directory nor a GGUF file"),
])
def test_bad_input_is_one_line(case, needle, tmp_path):
    from ropeconvert.errors import InputError
    from ropeconvert.formats.export import Export

    path = tmp_path / case
    if case == "empty-dir":
        path.mkdir()
    elif case == "text-file":
        path.write_text("not an export")
    with pytest.raises(InputError) as e:
        Export.open(path)
    line = e.value.one_line()
    assert needle in line and str(path) in line and e.value.fix and "\n" not in line


def test_a_damaged_spec_is_one_line_and_a_finding_for_verify(exports, tmp_path):
    import shutil

    from ropeconvert.errors import InputError
    from ropeconvert.formats.export import Export
    from ropeconvert.formats.inspect import verify

    hf, _ = exports
    copy = tmp_path / "copy"
    shutil.copytree(hf, copy)
    manifest = json.loads((copy / "ropeconvert.json").read_text())
    (copy / "ropeconvert.json").write_text(json.dumps({**manifest, "spec": {"method": "yarn"}}))
    with pytest.raises(InputError, match="its spec is not a valid ropeconvert spec"):
        Export.open(copy).spec
    problems, _ = verify(copy)
    assert any("could not be read back" in p for p in problems)


def test_verify_entry_point_reports_a_damaged_magic_and_refuses_other_files(exports, tmp_path):
    from ropeconvert.errors import InputError
    from ropeconvert.formats.inspect import verify

    _, gg = exports
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(b"XXXX" + gg.read_bytes()[4:])  # the magic overwritten: a change, not "not an export"
    problems, _ = verify(damaged)
    assert problems[0].startswith("sha256 differs") and "no longer reads as GGUF" in problems[-1]
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="neither an export directory nor a GGUF file"):
        verify(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="--source .* not found"):
        verify(gg, tmp_path / "nowhere")
