"""Shared fixtures: offline, CPU-only. Tiny random models (real SmolLM2 tokenizer) for mechanics; the real
SmolLM2-135M (embedded GGUF, dequantized once into the cache) for behaviour."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]

# caches and corpora: the same default places as the CLI and make (~/.cache/ropeconvert), so `make demo` feeds the tests

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


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


def make_tiny_model(out: Path, tokenizer_dir: Path, *, model_type: str = "llama", original_context: int = 256,
                    rope_theta: float = 10000.0, head_dim: int = 16, layers: int = 2, shard_size: str | None = None,
                    seed: int = 0) -> Path:
    """A random tiny model with a real tokenizer, saved as safetensors (sharded when shard_size is given)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    heads, kv = 4, 2
    config = AutoConfig.for_model(
        model_type, hidden_size=heads * head_dim, intermediate_size=96, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim, vocab_size=49152,
        max_position_embeddings=original_context, rope_theta=rope_theta, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2,
    )
    model = AutoModelForCausalLM.from_config(config)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(out, **kwargs)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, out / name)
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, smollm2_hf) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", smollm2_hf)


@pytest.fixture(scope="session")
def tiny_llama_sharded(tmp_path_factory, smollm2_hf) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama-sharded", smollm2_hf, shard_size="1MB")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory, smollm2_hf) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen2", smollm2_hf, model_type="qwen2",
                           rope_theta=1000000.0)
