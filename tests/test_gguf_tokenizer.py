"""The tokenizer keys come from a child process (torch hidden) as JSON: what it sends must pack to exactly the bytes
the same keys built in this process would, for a byte-level BPE vocabulary (SmolLM2's) and a SentencePiece one
(token pieces travel as text and must come back as the same bytes, scores as the same floats)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from gguf import GGUFWriter

from ropeconvert.errors import InputError
from ropeconvert.formats import gguf_tokenizer


def packed(kv: dict) -> dict[str, bytes]:
    w = GGUFWriter(None, "x")
    return {k: w._pack_val(v.value, v.type, add_vtype=True, sub_type=v.sub_type) for k, v in kv.items()}


def in_process(hf_dir: Path, vocab_size: int) -> dict:
    w = GGUFWriter(None, "x")
    gguf_tokenizer._build_tokenizer(w, hf_dir, vocab_size)
    return {k: v for k, v in w.kv_data[0].items() if k.startswith("tokenizer.")}


@pytest.fixture(scope="module")
def sentencepiece_dir(tmp_path_factory) -> Path:
    import sentencepiece as spm

    out = tmp_path_factory.mktemp("spm")
    words = ["the", "sun", "rose", "over", "quiet", "fields", "and", "Emma", "walked", "home", "été", "naïve", "42"]
    lines = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) for i in range(400)]
    (out / "corpus.txt").write_text("\n".join(lines), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(out / "corpus.txt"), model_prefix=str(out / "tokenizer"), vocab_size=300,
                                   model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   minloglevel=2)
    (out / "tokenizer.vocab").unlink()
    (out / "corpus.txt").unlink()
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    return out


@pytest.mark.parametrize("which", ["smollm2", "sentencepiece"])
def test_worker_keys_pack_like_in_process_keys(which, smollm2_hf, sentencepiece_dir):
    hf_dir, vocab = (smollm2_hf, 49152) if which == "smollm2" else (sentencepiece_dir, 320)
    with gguf_tokenizer.TokenizerKeys(hf_dir, vocab) as worker:
        got = worker.keys()
    want = in_process(hf_dir, vocab)
    assert list(got) == list(want)
    assert packed(got) == packed(want)
    assert got["tokenizer.ggml.model"].value == ("gpt2" if which == "smollm2" else "llama")


def test_worker_errors_reach_the_caller_as_input_errors(tmp_path, smollm2_hf):
    (tmp_path / "config.json").write_text((smollm2_hf / "config.json").read_text())
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(InputError) as refused:
        with gguf_tokenizer.TokenizerKeys(tmp_path, 49152) as worker:
            worker.keys()
    assert "tokenizer" in refused.value.one_line()
