"""What validate reads from an export before measuring: its kind, its spec, its provenance, and whether its
metadata agrees with the spec embedded in it (a lying context is refused, not measured)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ropeconvert.errors import InputError, RopeConvertError


def export_info(export: Path) -> tuple[str, dict[str, Any] | None, dict[str, Any]]:
    """(kind, spec dict or None, provenance) of an HF export directory or a GGUF file."""
    export = Path(export)
    if export.is_dir():
        if not (export / "config.json").is_file():
            raise InputError(f"{export} has no config.json", "pass an export made by ropeconvert (HF directory or .gguf)")
        from ropeconvert.formats.hf_config import spec_from_hf_config
        from ropeconvert.formats.safe_io import read_json
        from ropeconvert.formats.source import read_config

        manifest = export / "ropeconvert.json"
        provenance = read_json(manifest, "manifest", "re-export, or restore the file") if os.path.lexists(manifest) else {}
        if not isinstance(provenance, dict):
            raise InputError(f"manifest {manifest} is not a JSON object", "re-export, or restore the file")
        config = read_config(export)
        spec = provenance.get("spec")
        if spec is None:
            found = spec_from_hf_config(config)
            spec = None if found is None else found.to_dict()
        else:
            _claims_agree(export, _spec_of(spec, manifest), config=config)
        return "hf", spec, provenance
    if export.is_file():
        from ropeconvert.formats.gguf_integrity import PROVENANCE_KEYS
        from ropeconvert.formats.gguf_read import field, open_gguf
        from ropeconvert.formats.gguf_rope import spec_from_gguf

        reader = open_gguf(export)
        try:
            found = spec_from_gguf(reader)
        except RopeConvertError:
            raise
        except (ValueError, KeyError, TypeError, RecursionError):
            raise InputError(f"{export}: its ropeconvert.spec metadata is not a valid spec",
                             f"the file was damaged after export; `ropeconvert verify {export}` shows what changed") from None
        if found is not None:
            _claims_agree(export, found, reader=reader)
        provenance = {k: field(reader, f"ropeconvert.{k}") for k in PROVENANCE_KEYS if k != "source_license"}
        return "gguf", None if found is None else found.to_dict(), {k: v for k, v in provenance.items() if v}
    raise InputError(f"export {export} does not exist", "pass the HF directory or .gguf file that ropeconvert wrote")


def _spec_of(data: Any, where: Path):
    from ropeconvert.convert.spec import RopeSpec

    try:
        return RopeSpec.from_dict(data)
    except RopeConvertError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise InputError(f"{where}: its spec is not a valid ropeconvert spec", "re-export, or restore the file") from None


def _claims_agree(export: Path, spec, *, config: dict | None = None, reader=None) -> None:
    """Refuse an export whose metadata claims another context than the spec embedded in it (GGUF context_length /
    original_context_length; HF max_position_embeddings / original_max_position_embeddings, or the `dpe` block):
    the runtimes read the metadata, so the measurements would be reported under a context nobody ran."""
    from ropeconvert.formats.gguf_read import field

    claims: dict[str, tuple[Any, Any]] = {}  # name → (what the metadata says, what the spec says)
    if reader is not None:
        arch = field(reader, "general.architecture")
        claims[f"{arch}.context_length"] = (field(reader, f"{arch}.context_length"), spec.target_context)
        claims[f"{arch}.rope.scaling.original_context_length"] = (
            field(reader, f"{arch}.rope.scaling.original_context_length"), spec.original_context)
    elif spec.position_map is not None:
        block = config.get("dpe") if isinstance(config.get("dpe"), dict) else {}
        claims["dpe.target_context"] = (block.get("target_context"), spec.target_context)
        claims["dpe.original_max_position_embeddings"] = (block.get("original_max_position_embeddings"),
                                                          spec.original_context)
    else:
        from ropeconvert.formats.hf_config import hf_config_for, rope_dict

        claims["max_position_embeddings"] = (config.get("max_position_embeddings"),
                                             hf_config_for(spec, config)["max_position_embeddings"])
        for name, value in (("original_max_position_embeddings", config.get("original_max_position_embeddings")),
                            ("rope_scaling.original_max_position_embeddings",
                             rope_dict(config).get("original_max_position_embeddings"))):
            if value is not None:
                claims[name] = (value, spec.original_context)
    from ropeconvert.formats.config_check import show

    differ = [f"{name} is {show(said)}, the spec says {meant}" for name, (said, meant) in claims.items() if said != meant]
    if differ:
        raise InputError(f"{export} claims a context its ropeconvert spec does not: {'; '.join(differ)}",
                         f"the metadata changed after export; `ropeconvert verify {export}` shows what differs — "
                         "restore the file or re-export it")


def default_base(provenance: dict[str, Any]) -> str:
    """The base to compare with: the alias or Hub id the export was made from (exports record no machine path, so
    an export of a local model needs --base)."""
    from ropeconvert.formats.source import is_public_name

    for value in (provenance.get("source_name"), provenance.get("base_model"), provenance.get("source")):
        if is_public_name(value):
            return value
    source = provenance.get("source")
    if isinstance(source, str) and source:
        raise InputError(f"the export was made from {source}, which it cannot locate", "pass --base PATH (the model it was made from)")
    raise InputError("no base model given and the export does not record its source", "pass --base MODEL")
