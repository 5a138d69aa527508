"""Shared fixtures: offline, CPU-only. Tiny random models with a small (512-token) byte-level BPE tokenizer for rope
and tensor mechanics, one tiny model with the real SmolLM2 tokenizer for what needs real words, the real
SmolLM2-135M (embedded GGUF, dequantized once into the cache) for behaviour, and one validated export for the report
and card tests."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]

# caches and corpora: the same default places as the CLI and make (~/.cache/ropeconvert), so `make demo` feeds the tests

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# 512 tokens, not SmolLM2's 49,152: a tiny GGUF then opens in llama.cpp / gguf in a fraction of a second instead of
# ~6 s (the tokenizer arrays), and the embedding stops being most of a tiny model's bytes
SMALL_VOCAB = 512
# Llama-3's split regex: formats/gguf_tokenizer.py recognises it (PRE_BY_REGEX) and llama.cpp implements it as
# "llama-bpe", which also looks a whole word up before merging (ignore_merges, set alike below)
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2 as in SmolLM2: bos 1, eos 2
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2_hf() -> Path:
    """The real SmolLM2-135M-Instruct as an HF checkpoint (dequantized from the embedded Q4_1 GGUF, cached)."""
    from ropeconvert.formats.source import hf_checkpoint, resolve

    return hf_checkpoint(resolve("smollm2-135m"), progress=False)


def make_small_tokenizer(out: Path, text: str, vocab_size: int = SMALL_VOCAB) -> Path:
    """A byte-level BPE tokenizer trained on `text` (deterministic: the same text gives the same vocab and merges),
    saved as tokenizer.json + tokenizer_config.json + chat_template.jinja, as an HF checkpoint carries them."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # every byte encodable
    tok.train_from_iterator([text], trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIAL[1], "eos_token": SPECIAL[2],
              "unk_token": SPECIAL[0], "pad_token": SPECIAL[2], "model_max_length": 8192,
              "clean_up_tokenization_spaces": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "chat_template.jinja").write_text(CHATML)
    return out


def vocab_size_of(tokenizer_dir: Path) -> int:
    tj = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text(encoding="utf-8"))
    ids = [*tj["model"]["vocab"].values(), *(t["id"] for t in tj.get("added_tokens", []))]
    return max(ids) + 1


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory) -> Path:
    """The 512-token tokenizer, trained at session start on the first 200,000 characters of Emma (Austen corpus)."""
    from ropeconvert.validators.corpus import load

    return make_small_tokenizer(tmp_path_factory.mktemp("small-tokenizer"), load("austen")[0].text[:200_000])


def make_tiny_model(out: Path, tokenizer_dir: Path, *, model_type: str = "llama", original_context: int = 256,
                    rope_theta: float = 10000.0, head_dim: int = 16, layers: int = 2, intermediate: int = 96,
                    shard_size: str | None = None, seed: int = 0, **config_extra) -> Path:
    """A random tiny model with the tokenizer of `tokenizer_dir` (its vocab_size is the tokenizer's), saved as
    safetensors (sharded when shard_size is given); `config_extra` goes into its config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    heads, kv = 4, 2
    settings = dict(  # config_extra may override any of these (hidden_size ≠ heads × head_dim, untied embeddings)
        hidden_size=heads * head_dim, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim, vocab_size=vocab_size_of(tokenizer_dir),
        max_position_embeddings=original_context, rope_theta=rope_theta, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2)
    config = AutoConfig.for_model(model_type, **{**settings, **config_extra})
    model = AutoModelForCausalLM.from_config(config)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(out, **kwargs)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, out / name)
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, small_tokenizer) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", small_tokenizer)


@pytest.fixture(scope="session")
def tiny_llama_49k(tmp_path_factory, smollm2_hf) -> Path:
    """tiny_llama with SmolLM2's real 49,152-token tokenizer: for tokenizer conversion and prompts of real words."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama-49k", smollm2_hf)


@pytest.fixture(scope="session")
def tiny_llama_sharded(tmp_path_factory, small_tokenizer) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama-sharded", small_tokenizer, shard_size="40KB")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory, small_tokenizer) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen2", small_tokenizer, model_type="qwen2",
                           rope_theta=1000000.0)


@pytest.fixture(scope="session")
def medium_llama(tmp_path_factory, small_tokenizer) -> Path:
    """~80 MB of random weights in 3 shards: writing them lasts long enough for a kill or a signal sent from the
    test to land mid-write (tests/test_interrupts.py, tests/test_signals.py)."""
    return make_tiny_model(tmp_path_factory.mktemp("medium") / "medium", small_tokenizer, head_dim=64, layers=6,
                           intermediate=4096, shard_size="30MB")


@pytest.fixture(scope="session")
def hub_snapshot(tmp_path_factory, small_tokenizer) -> Path:
    """A tiny model in a huggingface_hub cache as acme/tiny-llama (tests/hub_fixtures.py `cached_base`)."""
    from hub_fixtures import cached_base

    return cached_base(tmp_path_factory.mktemp("hf-cache"), small_tokenizer)


@pytest.fixture(scope="session")
def yarn_export(tmp_path_factory, hub_snapshot) -> Path:
    """acme/tiny-llama extended by YaRN ×2 through the real pipeline, without a report. Never changed: tests that
    change an export copy it (hub_fixtures `hf_export`)."""
    from hub_fixtures import make_export

    return make_export(tmp_path_factory.mktemp("yarn"), hub_snapshot)


@pytest.fixture(scope="session")
def validated_export(tmp_path_factory, yarn_export, hub_snapshot):
    """(export, the CLI's process): yarn_export validated once by the real `ropeconvert validate` on every task, in
    a plain shell (no ROPECONVERT_* variables, so the Austen corpus comes from its default place). The one
    validated export of the report, card and first-contact tests: read it, or copy it before changing it."""
    import subprocess
    import sys

    out = Path(shutil.copytree(yarn_export, tmp_path_factory.mktemp("validated") / "tiny-yarn"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROPECONVERT_")}
    proc = subprocess.run([sys.executable, "-m", "ropeconvert", "validate", str(out), "--base", str(hub_snapshot),
                           "--tasks", "ppl,passkey,niah", "--lengths", "128,256,400", "--passkey-lengths", "200,400",
                           "--niah-lengths", "400", "--depths", "0.2,0.8", "--trials", "1", "--niah-samples", "1",
                           "--documents", "2", "-q"], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return out, proc
