"""What validate reads from an export before measuring: its kind, its spec, its provenance, and whether its
metadata agrees with the spec embedded in it (a lying context is refused, not measured)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ropeconvert.errors import InputError
from ropeconvert.formats.export import Export


def export_info(export: Path | Export) -> tuple[str, dict[str, Any] | None, dict[str, Any]]:
    """(kind, spec dict or None, provenance) of an HF export directory or a GGUF file (a path, or an Export already
    open: its reads are reused). An export whose metadata contradicts its embedded spec is refused."""
    exp = export if isinstance(export, Export) else Export.open(export)
    where = exp.path if isinstance(export, Export) else Path(export)  # messages name the path as it was given
    if exp.kind == "hf":
        from ropeconvert.formats.hf_config import spec_from_hf_config

        provenance, config = exp.provenance, exp.config
        spec = exp.spec_dict
        if spec is None:
            found = spec_from_hf_config(config)
            spec = None if found is None else found.to_dict()
        else:
            _claims_agree(where, exp.spec, config=config)
        return "hf", spec, provenance
    found = exp.spec
    if found is not None:
        _claims_agree(where, found, reader=exp.reader)
    provenance = {k: v for k, v in exp.provenance.items() if k != "source_license"}  # what default_base reads
    return "gguf", None if found is None else found.to_dict(), provenance


def _claims_agree(export: Path, spec, *, config: dict | None = None, reader=None) -> None:
    """Refuse an export whose metadata claims another context than the spec embedded in it (GGUF context_length /
    original_context_length; HF max_position_embeddings / original_max_position_embeddings, or the `dpe` block):
    the runtimes read the metadata, so the measurements would be reported under a context nobody ran."""
    claims: dict[str, tuple[Any, Any]] = {}  # name → (what the metadata says, what the spec says)
    if reader is not None:
        from gguf import Keys as GgufKeys

        from ropeconvert.formats.gguf_read import field

        arch = field(reader, "general.architecture")
        for template, meant in ((GgufKeys.LLM.CONTEXT_LENGTH, spec.target_context),
                                (GgufKeys.Rope.SCALING_ORIG_CTX_LEN, spec.original_context)):
            key = template.format(arch=arch)
            claims[key] = (field(reader, key), meant)
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
