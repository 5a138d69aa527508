"""The HF writer: weights byte-identical to the source, config.json rewritten for the new rope.

Weights are hard-linked (with link=True, on the same filesystem) or copied in a streamed, progress-reported copy;
the shard index, tokenizer and generation files are carried over; config.json comes from formats/hf_config.py.
Everything lands in a temporary directory that is renamed into place at the end (formats/output.py).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ropeconvert import __version__
from ropeconvert.convert.spec import RopeSpec
from ropeconvert.formats.hf_config import hf_config_for
from ropeconvert.formats.manifest import MANIFEST_FILE, copy_and_hash, copy_file, file_entries
from ropeconvert.formats.output import atomic_output
from ropeconvert.formats.source import read_config
from ropeconvert.formats.tensors import index_weights

CARRIED_FILES = ("generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
                 "chat_template.json", "LICENSE", "LICENSE.txt", "LICENSE.md")


def export_config(spec: RopeSpec, config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """config.json for the export, plus notes for the user about what else changed."""
    new = hf_config_for(spec, config)
    notes = []
    window = config.get("sliding_window")
    if config.get("model_type") == "mistral" and isinstance(window, int) and window < spec.target_context:
        # Sliding-window attention would never see past `window` tokens; YaRN and Self-Extend disable it for
        # long-context use (reference/methods.md pitfall 14).
        new["sliding_window"] = None
        notes.append(f"sliding_window {window} disabled so attention spans the extended context")
    from ropeconvert.formats.runtimes import export_warnings

    return new, notes + export_warnings(spec)


def write_hf_export(src_dir: Path, spec: RopeSpec, out: Path, *, force: bool = False, link: bool = False,
                    progress: bool = True, provenance: dict[str, Any] | None = None,
                    extra_files: dict[str, bytes] | None = None) -> tuple[Path, list[str]]:
    """Write the export; returns its final path and notes. Nothing exists at `out` unless it all succeeded."""
    config = read_config(src_dir)
    new_config, notes = export_config(spec, config)
    weights = index_weights(src_dir)  # validates every header before anything is written
    to_copy = list(weights.files) + ([weights.index_file] if weights.index_file else [])
    with atomic_output(out, force=force, directory=True, sources=(src_dir,)) as tmp:
        hashes = _place_weights(to_copy, tmp, link=link, progress=progress)
        for name in CARRIED_FILES:
            if os.path.lexists(src_dir / name):  # a FIFO or a directory of that name is refused, never skipped
                copy_file(src_dir / name, tmp / name)
        _extend_tokenizer_length(src_dir / "tokenizer_config.json", tmp / "tokenizer_config.json", spec)
        (tmp / "config.json").write_text(json.dumps(new_config, indent=2) + "\n")
        if spec.position_map is not None:  # DPE / Self-Extend: the index map beside config.json
            from ropeconvert.formats.dpe_format import hf_files

            extra_files = {**hf_files(spec), **(extra_files or {})}
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        # the manifest: provenance, the spec, and sha256 per file (`ropeconvert verify` re-checks it)
        from ropeconvert.formats.runtimes import runtime_rows

        record = {"ropeconvert_version": __version__, "spec": spec.to_dict(), "notes": notes,
                  "runtimes": runtime_rows(spec),  # what runs where (formats/runtimes.py), shown in the card
                  "linked_weights": link and all(h is None for h in hashes.values()),
                  **(provenance or {}), "weights": sorted(hashes), "files": file_entries(tmp, hashes)}
        (tmp / MANIFEST_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return Path(out).expanduser().absolute(), notes


def _place_weights(files: list[Path], tmp: Path, *, link: bool, progress: bool) -> dict[str, str | None]:
    """Hard-link when asked and possible (O(1), hash left to `verify`), else stream-copy and hash on the way,
    with one progress bar over all bytes. Returns {file name: sha256 or None when linked}."""
    if link:
        try:
            for f in files:
                os.link(f, tmp / f.name)
            return {f.name: None for f in files}
        except OSError:  # another filesystem, or links not allowed: fall back to copying
            for f in files:
                (tmp / f.name).unlink(missing_ok=True)
    total = sum(f.stat().st_size for f in files)
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="copy weights", disable=not progress) as bar:
        digests = copy_and_hash([(f, tmp / f.name) for f in files], bar.update)
    return {f.name: digest for f, digest in zip(files, digests)}


def _extend_tokenizer_length(src: Path, path: Path, spec: RopeSpec) -> None:
    """A tokenizer that caps inputs at the original length would hide the extension (vLLM reads it too). The
    source's copy is parsed (and named in errors): one that does not parse would fail in every loader, so refuse it."""
    if not path.is_file():
        return
    from ropeconvert.formats.safe_io import read_json

    cfg = read_json(src, "tokenizer config", "fix or re-download tokenizer_config.json")
    if isinstance(cfg, dict) and cfg.get("model_max_length") == spec.original_context:
        cfg["model_max_length"] = spec.target_context
        path.write_text(json.dumps(cfg, indent=2) + "\n")
