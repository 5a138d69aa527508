"""GGUF → HF checkpoint: every tensor dequantized (formats/gguf_read.py `dequantized_tensors`), written in
safetensors shards as they fill (memory stays about one shard), with the config its metadata amounts to and the
tokenizer transformers rebuilds from the GGUF vocabulary (its `gguf_file=` loader, the one piece we do not write)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ropeconvert.errors import UnsupportedError
from ropeconvert.formats.gguf_keys import RopeTensors
from ropeconvert.formats.gguf_read import SHARD_BYTES, dequantized_tensors, hf_config_from_gguf, open_gguf


def write_hf_from_gguf(path: Path, out_dir: Path, progress: bool = True, reader=None) -> None:
    """Dequantize a GGUF into `out_dir` (config, safetensors shards, tokenizer). `out_dir` must exist and be empty.
    `reader`: the file's reader when the caller has it open already (formats/source.py's Source)."""
    import torch
    from tqdm import tqdm

    reader = reader if reader is not None else open_gguf(path)
    config = hf_config_from_gguf(reader)
    shards: list[dict[str, Any]] = [{}]
    size = 0
    weight_map: dict[str, str] = {}
    n = sum(1 for t in reader.tensors if t.name not in RopeTensors.ALL)
    for name, arr in tqdm(dequantized_tensors(reader, config), total=n, desc="dequantize GGUF", unit="tensor",
                          disable=not progress):
        if size and size + arr.nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
        size += arr.nbytes
    if len(shards) == 1:
        _save_shard(shards[0], out_dir / "model.safetensors")
    else:
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            _save_shard(shard, out_dir / fname)
            weight_map.update({k: fname for k in shard})
        total = sum(t.numel() * 4 for s in shards for t in s.values())
        (out_dir / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2))
    _write_tokenizer(path, out_dir)


def _save_shard(tensors: dict[str, Any], path: Path) -> None:
    """safetensors' save_file, its I/O failures turned into the OSError they are (it raises its own
    SafetensorError, so a full disk could not be told from a bug)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata={"format": "pt"})
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


def _write_tokenizer(path: Path, out_dir: Path) -> None:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:
        raise UnsupportedError(f"could not rebuild the tokenizer from {path.name} (transformers' GGUF loader raised "
                               f"{type(e).__name__})", "convert from the HF checkpoint instead") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    tok.save_pretrained(str(out_dir))
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"  # loads in transformers 4.x and 5.x alike
    cfg.pop("is_local", None)
    cfg.pop("local_files_only", None)
    cfg_path.write_text(json.dumps(cfg, indent=2))


def cached_hf_copy(source, cache: Path, progress: bool = True) -> Path:
    """The dequantized HF copy of a GGUF Source (formats/source.py) in `cache`, built once under a temporary
    name and renamed. A failed build leaves nothing in the cache; a full disk or an unwritable cache is one
    OutputError naming the cache (the GGUF is read before, and its read errors are InputErrors)."""
    import errno

    from ropeconvert.errors import OutputError

    # every shard of a split counts: any one rewritten makes a new copy (one file: the key it always had)
    stats = [(p, p.stat()) for p in source.files]
    key = hashlib.sha256(("".join(f"{p}|{st.st_size}|{st.st_mtime_ns}|" for p, st in stats) + "v1").encode()).hexdigest()[:16]
    target = cache / "gguf-as-hf" / f"{source.path.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        write_hf_from_gguf(source.path, tmp, progress=progress, reader=source.reader)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first: its copy is the same
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, OSError):
            raise
        what = f"the dequantized copy of {source.name} in {target.parent}"
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OutputError(f"ran out of space writing {what}",
                              "free some space, or set ROPECONVERT_CACHE to a directory on a larger disk") from None
        raise OutputError(f"cannot write {what} ({e.strerror or type(e).__name__})",
                          "set ROPECONVERT_CACHE to a writable directory") from None
    return target
