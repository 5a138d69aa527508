"""The tokenizer of an HF checkpoint, written as GGUF `tokenizer.ggml.*` metadata.

Three kinds, in the order llama.cpp's own converter tries them for Llama-family models:
- SentencePiece (`tokenizer.model`, a protobuf, read with the sentencepiece library): model "llama", pre "default".
- a byte-fallback BPE `tokenizer.json` without `tokenizer.model` (Llama-2/Mistral fast tokenizers): gguf's LlamaHfVocab.
- a byte-level (GPT-2 style) BPE `tokenizer.json`: model "gpt2" + merges + `tokenizer.ggml.pre`.

llama.cpp recognises a BPE pre-tokenizer (its split regex) by a *name* that its converter derives from the sha256 of
the token ids a tokenizer gives for one fixed probe text (`get_vocab_base_pre` in the vendored converter). The probe
text and the hashes of the families we support are that converter's; an unknown hash is refused, because a wrong
`pre` silently tokenizes differently. Special token ids, add_bos/add_eos and the chat template go through gguf's
`SpecialVocab`; add_bos/add_eos are then set from what the HF tokenizer really does.

The keys are built in a child process (`python -m ropeconvert.formats.gguf_tokenizer DIR VOCAB`, answering JSON on
stdout) in which torch is hidden: transformers imports torch whenever it is installed, even for a tokenizer, and
that import was 3–5 s and ~260 MB of a 1.5 GB export here (4.4 s, 391 MB peak vs 1.7 s, 128 MB without it, same
tokenizer class and probe ids). The child also keeps transformers out of the exporting process.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from gguf import GGUFValueType, GGUFWriter, LlamaHfVocab, SpecialVocab, TokenType
from gguf.gguf_writer import GGUFValue

from ropeconvert.errors import InputError, UnsupportedError

FIX = "re-download the tokenizer files"

# fixed probe text of llama.cpp's convert_hf_to_gguf.py `get_vocab_base_pre` (its hashes are over these ids)
PROBE = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ '
         '🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
         '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
         '\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')
PRE_BY_HASH = {  # sha256(str(ids)) → tokenizer.ggml.pre, from the vendored converter (reference model in comment)
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # HuggingFaceTB/SmolLM-135M
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # meta-llama/Meta-Llama-3-8B
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen/Qwen1.5-7B (Qwen2/2.5)
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen/Qwen3-Embedding-0.6B
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # mistralai/Mistral-Nemo-Base-2407
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
}
# A vocabulary the table does not know can still use a known split regex (e.g. a Qwen2 tokenizer class over another
# vocab): the original tokenizer.json regexes llama.cpp's src/llama-vocab.cpp implements for each pre type.
PRE_BY_REGEX = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
}


class TokenizerKeys:
    """The tokenizer keys of `hf_dir` (padded to the model's vocab_size), built in the worker process from the moment
    this is made: the exporter makes it first, so the worker's ~2 s overlap the planning and the conversion that
    run before the header. `keys()` waits for the answer; leaving the `with` block stops an unfinished worker.
    Answers are kept per state of the tokenizer files, so `--to both` or a test builds them once."""

    def __init__(self, hf_dir: Path, vocab_size: int):
        check_tokenizer_json(Path(hf_dir))  # here, in one line each, rather than as a failure of the worker
        files = sorted(p for p in Path(hf_dir).glob("*") if p.is_file() and not p.name.endswith(".safetensors"))
        self._key = (str(Path(hf_dir).resolve()), tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                                                        for p in files), vocab_size)
        self._proc = None if self._key in _ANSWERS else self._start()

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
        return subprocess.Popen([sys.executable, "-m", __spec__.name, self._key[0], str(self._key[2])],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)

    def keys(self) -> dict:
        if self._key not in _ANSWERS:
            self._proc = self._proc or self._start()  # an answer cached at the start may have been dropped since
            stdout, stderr = self._proc.communicate()
            answer = _parse(stdout, stderr, self._proc.returncode)
            if len(_ANSWERS) >= 4:
                _ANSWERS.pop(next(iter(_ANSWERS)))
            _ANSWERS[self._key] = answer
        return _ANSWERS[self._key]

    def __enter__(self) -> "TokenizerKeys":
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.communicate()


_ANSWERS: dict[tuple, dict] = {}
TOKENIZER_JSON = {"tokenizer.json": "tokenizer", "tokenizer_config.json": "tokenizer config",
                  "special_tokens_map.json": "special tokens map", "added_tokens.json": "added tokens"}


def check_tokenizer_json(hf_dir: Path) -> None:
    """The tokenizer's JSON files parse, at any depth or size, as one InputError each (never quoting them)."""
    from ropeconvert.formats.safe_io import check_depth, read_json

    for name, what in TOKENIZER_JSON.items():
        if os.path.lexists(hf_dir / name):
            check_depth(read_json(hf_dir / name, what, FIX), f"{what} {hf_dir / name}", FIX)


def add_tokenizer(writer: GGUFWriter, tokenizer: TokenizerKeys) -> None:
    """Write the tokenizer keys as `tokenizer.*` keys (waiting for the worker if it is still building them)."""
    for key, value in tokenizer.keys().items():
        writer.add_key_value(key, value.value, value.type, sub_type=value.sub_type)


def _parse(stdout: bytes, stderr: bytes, returncode: int) -> dict:
    try:
        answer = json.loads(stdout.splitlines()[-1])  # the last line: a library may print before it
    except (ValueError, IndexError):
        raise RuntimeError(f"tokenizer worker failed (exit {returncode}): "
                           f"{stderr.decode(errors='replace')[-600:]}") from None
    if "error" in answer:
        kind = {"InputError": InputError, "UnsupportedError": UnsupportedError}[answer["kind"]]
        raise kind(answer["error"], answer.get("hint"))
    return {key: GGUFValue(value, GGUFValueType(vtype), None if sub is None else GGUFValueType(sub))
            for key, (value, vtype, sub) in answer["keys"].items()}


def _worker(hf_dir: str, vocab_size: int) -> dict:
    """Child side: the tokenizer keys as JSON-able [value, type, sub_type] (token bytes as UTF-8 text, which
    GGUFWriter encodes back to the same bytes), or the InputError/UnsupportedError to raise in the parent."""
    try:
        scratch = GGUFWriter(None, "scratch")
        _build_tokenizer(scratch, Path(hf_dir), vocab_size)
    except (InputError, UnsupportedError) as e:
        return {"error": e.problem, "hint": e.fix, "kind": type(e).__name__}
    keys = {}
    for key, v in scratch.kv_data[0].items():
        if key.startswith("tokenizer."):
            value = [x.decode("utf-8") if isinstance(x, bytes) else x for x in v.value] if isinstance(v.value, list) \
                else v.value
            keys[key] = [value, int(v.type), None if v.sub_type is None else int(v.sub_type)]
    return {"keys": keys}


def _build_tokenizer(writer: GGUFWriter, hf_dir: Path, vocab_size: int) -> None:
    tok = _load_hf_tokenizer(hf_dir)
    tj = _read_json(hf_dir / "tokenizer.json")
    model = (tj or {}).get("model", {})
    if (hf_dir / "tokenizer.model").is_file():
        bpe = False
        tokens, scores, types = _sentencepiece_vocab(hf_dir, tj, vocab_size)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_scores(scores)
    elif model.get("type") == "BPE" and model.get("byte_fallback"):
        bpe = False
        vocab = LlamaHfVocab(hf_dir)
        tokens, scores, types = map(list, zip(*vocab.all_tokens()))
        _pad(tokens, types, vocab_size, scores)
        _added_tokens(tj, tokens, scores, types)  # LlamaHfVocab lists Gemma's added tokens as normal ones
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_scores(scores)
    elif model.get("type") == "BPE" and (tj.get("decoder") or {}).get("type") == "ByteLevel":
        bpe = True
        tokens, types = _bpe_vocab(tj, vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_pre_tokenizer(tok, hf_dir))
    else:
        raise UnsupportedError(f"{hf_dir}: tokenizer type {model.get('type') or 'unknown'!r} cannot be written to GGUF",
                               "supported: SentencePiece (tokenizer.model) and BPE tokenizer.json")
    if not bpe and not _prepends_space(tok):  # Gemma's SentencePiece: llama.cpp would otherwise add "▁" first
        writer.add_add_space_prefix(False)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = SpecialVocab(hf_dir, load_merges=bpe, n_vocab=len(tokens))
    special.add_special_token.update(_adds_special(tok))  # what the tokenizer really does, not a guess from files
    special.add_to_gguf(writer, quiet=True)


def _load_hf_tokenizer(hf_dir: Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(str(hf_dir), trust_remote_code=False)
    except Exception as e:  # the library's own words may quote the files: only with ROPECONVERT_DEBUG
        said = f": {' '.join(str(e).split())[:160]}" if os.environ.get("ROPECONVERT_DEBUG") not in (None, "", "0") else ""
        raise InputError(f"{hf_dir}: the tokenizer does not load (transformers raised {type(e).__name__}{said})",
                         "give a checkpoint with tokenizer.json or tokenizer.model") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def _pre_tokenizer(tok, hf_dir: Path) -> str:
    digest = hashlib.sha256(str(tok.encode(PROBE)).encode()).hexdigest()
    pre = PRE_BY_HASH.get(digest) or _pre_by_regex(tok)
    if pre is None:
        raise UnsupportedError(
            f"{hf_dir}: unknown BPE pre-tokenizer (probe hash {digest[:12]}…), so llama.cpp would split text differently",
            f"supported BPE families: {', '.join(sorted(set(PRE_BY_HASH.values())))}; export --to hf for other models")
    return pre


def _pre_by_regex(tok) -> str | None:
    """The pre type whose split regex the loaded tokenizer uses (only when it is one Split + ByteLevel without regex)."""
    try:
        pre = json.loads(tok.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    except (AttributeError, ValueError):
        return None
    steps = pre.get("pretokenizers", [pre])
    splits = [s for s in steps if s.get("type") == "Split"]
    byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
    if len(splits) != 1 or len(steps) != 2 or len(byte_level) != 1 or byte_level[0].get("use_regex"):
        return None
    return PRE_BY_REGEX.get((splits[0].get("pattern") or {}).get("Regex"))


def _bpe_vocab(tj: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id; added tokens are CONTROL when special (llama.cpp then never splits them) else USER_DEFINED."""
    by_id: dict[int, tuple[str, int]] = {i: (t, TokenType.NORMAL) for t, i in tj["model"]["vocab"].items()}
    for added in tj.get("added_tokens", []):
        kind = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
        by_id[int(added["id"])] = (added["content"], kind)
    if max(by_id) >= vocab_size:
        raise InputError(f"tokenizer has token id {max(by_id)} but the model's vocab_size is {vocab_size}",
                         "the tokenizer does not belong to this model")
    tokens = [by_id[i][0] if i in by_id else f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(by_id[i][1]) if i in by_id else int(TokenType.UNUSED) for i in range(vocab_size)]
    return tokens, types


def _sentencepiece_vocab(hf_dir: Path, tj: dict | None, vocab_size: int):
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(hf_dir / "tokenizer.model"))
    tokens: list[bytes] = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [int(TokenType.UNUSED)] * vocab_size
    for i in range(min(sp.vocab_size(), vocab_size)):
        kind = (TokenType.UNKNOWN if sp.IsUnknown(i) else TokenType.CONTROL if sp.IsControl(i)
                else TokenType.UNUSED if sp.IsUnused(i) else TokenType.BYTE if sp.IsByte(i) else TokenType.NORMAL)
        tokens[i], scores[i], types[i] = sp.IdToPiece(i).encode("utf-8"), sp.GetScore(i), int(kind)
    _added_tokens(tj, tokens, scores, types)
    return tokens, scores, types


def _added_tokens(tj: dict | None, tokens: list, scores: list, types: list) -> None:
    """Tokens added on top of the vocabulary (chat markers, Gemma's runs of spaces): their literal text, as control
    (special) or user-defined tokens, which llama.cpp matches before it tokenizes the rest."""
    for added in (tj or {}).get("added_tokens", []):
        i = int(added["id"])
        if i < len(tokens):
            tokens[i], scores[i] = added["content"].encode("utf-8"), -1000.0
            types[i] = int(TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED)


def _pad(tokens: list, types: list, vocab_size: int, scores: list) -> None:
    if len(tokens) > vocab_size:
        raise InputError(f"tokenizer has {len(tokens)} tokens but the model's vocab_size is {vocab_size}",
                         "the tokenizer does not belong to this model")
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]".encode())
        types.append(int(TokenType.UNUSED))
        scores.append(-1000.0)


def _prepends_space(tok) -> bool:
    """Whether the SentencePiece-style tokenizer puts "▁" before the text (Llama-2, Mistral do; Gemma does not):
    llama.cpp's `add_space_prefix`, true when the GGUF has no key."""
    ids = tok("It", add_special_tokens=False)["input_ids"]
    return bool(ids) and str(tok.convert_ids_to_tokens(ids[:1])[0]).startswith("\u2581")


def _adds_special(tok) -> dict[str, bool]:
    ids = tok("a")["input_ids"]
    bos, eos = tok.bos_token_id, tok.eos_token_id
    return {"bos": bos is not None and ids[:1] == [bos], "eos": eos is not None and len(ids) > 1 and ids[-1] == eos}


def _read_json(path: Path) -> dict[str, Any] | None:
    from ropeconvert.formats.safe_io import read_json

    return read_json(path, TOKENIZER_JSON.get(path.name, "tokenizer file"), FIX) if path.is_file() else None


if __name__ == "__main__":
    sys.modules["torch"] = None  # transformers then treats torch as absent (see the module docstring)
    print(json.dumps(_worker(sys.argv[1], int(sys.argv[2]))))
