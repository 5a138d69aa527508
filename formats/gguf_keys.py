"""Every `ropeconvert.*` GGUF key and rope tensor name, in gguf-py's constants style (gguf.constants.Keys).

Writers and readers import the names from here; no other module spells a `ropeconvert.` key or a rope tensor name.
"""
from __future__ import annotations

PREFIX = "ropeconvert."


class Keys:
    SPEC = "ropeconvert.spec"  # the whole RopeSpec as JSON, so validators can rebuild it from the file alone
    SHA256 = "ropeconvert.sha256"  # the whole-file seal (formats/gguf_integrity.py)
    LEGACY_SHA256 = "ropeconvert.tensor_data_sha256"  # older exports: every byte after this value only

    class Source:  # where the export came from: identity only (Hub id and revision, or a file's name and sha256)
        SOURCE = "ropeconvert.source"
        NAME = "ropeconvert.source_name"
        REVISION = "ropeconvert.source_revision"
        LICENSE = "ropeconvert.source_license"  # JSON object (id, name, link)
        BASE_MODEL = "ropeconvert.base_model"
        SHA256 = "ropeconvert.source_sha256"
        WEIGHTS_ORIGIN = "ropeconvert.weights_origin"

    DPE_PREFIX = "ropeconvert.dpe."  # the exact position map of DPE / Self-Extend (formats/dpe_format.py)


# provenance field name (as in ropeconvert.json and Export.provenance) → its GGUF key, in writing order
PROVENANCE = {
    "source": Keys.Source.SOURCE, "source_name": Keys.Source.NAME, "source_revision": Keys.Source.REVISION,
    "source_license": Keys.Source.LICENSE, "base_model": Keys.Source.BASE_MODEL,
    "source_sha256": Keys.Source.SHA256, "weights_origin": Keys.Source.WEIGHTS_ORIGIN,
}


class RopeTensors:
    # gguf-py's TENSOR_NAMES[MODEL_TENSOR.ROPE_*] + ".weight", spelled out so that importing the key names (the HF
    # side does, for DPE) needs no gguf-py; tests/test_architecture.py checks they are gguf-py's names
    FREQS = "rope_freqs.weight"  # per-pair divisors (llama arch)
    LONG = "rope_factors_long.weight"  # LongRoPE long factors (phi3/llama)
    SHORT = "rope_factors_short.weight"
    ALL = (FREQS, LONG, SHORT)


def rope_key(arch: str, name: str) -> str:
    """`{arch}.rope.{name}` / `{arch}.context_length` style keys are gguf.Keys' templates; this reads one back."""
    return name.format(arch=arch)
