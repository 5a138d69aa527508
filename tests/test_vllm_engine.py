"""`--engine vllm` for RULER generation (validators/vllm_runtime.py): where it cannot run, check_engine says so in one
InputError before any model loads (GGUF, position maps, dynamic NTK, no vLLM, no GPU); `complete` hands every prompt
to a runtime's `complete_ids` at once and cuts each answer at its first line; on a GPU, vLLM's greedy answers equal
the transformers runtime's on the same ids (also past the base's trained length, where vLLM's rope table is raised)."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from ropeconvert.convert.methods import build_spec
from ropeconvert.errors import InputError
from ropeconvert.formats.hf_config import base_rope_from_config
from ropeconvert.validators.generate import complete
from ropeconvert.validators.vllm_runtime import check_engine, rope_table

from conftest import make_small_tokenizer, make_tiny_model

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 64, "num_hidden_layers": 1,
          "vocab_size": 64, "rope_theta": 10000.0, "max_position_embeddings": 256}


def spec(method: str, **knobs) -> dict:
    return build_spec(method, base_rope_from_config(CONFIG), **knobs).to_dict()


def refused(*args) -> str:
    with pytest.raises(InputError) as e:
        check_engine(*args)
    line = e.value.one_line()
    assert "\n" not in line and e.value.fix, line  # one line, with a fix
    return line


# ---- check_engine: each refusal on its own -------------------------------------------------------------------------
def test_gguf_export_is_refused():
    assert "--engine vllm runs HF exports; GGUF runs in llama.cpp" in refused("gguf", spec("yarn", factor=4.0))


def test_position_map_needs_transformers():
    line = refused("hf", spec("selfextend", factor=4.0))  # DPE carries a position map alike (convert/spec.py)
    assert "selfextend position map" in line and "needs the transformers runtime" in line


def test_dynamic_ntk_is_refused_as_the_runtime_table_says():
    assert "DynamicNTKScalingRotaryEmbedding" in refused("hf", spec("dynamic", factor=4.0))


def test_vllm_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    line = refused("hf", spec("yarn", factor=4.0))
    assert "needs vLLM, which is not installed" in line and "pip install vllm" in line


def test_no_cuda_gpu(monkeypatch):
    import torch

    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))  # installed or not: this test is the GPU's
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "needs a CUDA GPU and none is available" in refused("hf", None)


def test_rope_table_follows_vllm_derived_length():
    assert rope_table(CONFIG) == 256
    assert rope_table({**CONFIG, "rope_scaling": {"rope_type": "linear", "factor": 4.0}}) == 1024  # × factor
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256}
    assert rope_table({**CONFIG, "max_position_embeddings": 1024, "rope_scaling": yarn}) == 1024  # already scaled
    gemma = {**CONFIG, "model_type": "gemma3_text", "max_position_embeddings": 1024,  # vLLM's gemma3: no × factor
             "rope_scaling": {"rope_type": "linear", "factor": 4.0}}
    assert rope_table(gemma) == 1024


# ---- complete routes through complete_ids ---------------------------------------------------------------------------
class CharTokenizer:
    """Ids are code points; 0 is a special token (skipped when decoding)."""
    eos_token_id = 0

    def __call__(self, text: str):
        return types.SimpleNamespace(input_ids=[0] + [ord(c) for c in text])

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids if not (skip_special_tokens and i == 0))


class FakeBatchRuntime:
    kind = "vllm"
    tokenizer = CharTokenizer()

    def __init__(self, answers: list[str]):
        self.answers, self.calls = answers, []

    def complete_ids(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        self.calls.append((prompts, max_new_tokens))
        return [[ord(c) for c in a] + [0] for a in self.answers]  # a special token after, as a stop could leave

    def greedy(self, ids, n):
        raise AssertionError("complete must not go one prompt at a time when complete_ids is there")


def test_complete_sends_every_prompt_at_once_and_cuts_the_first_line():
    rt = FakeBatchRuntime(["  42\nmore", "\n\nblue whale\nnext", "no newline"])
    got = complete(rt, ["a", "bc", "def"], 7)
    assert got == ["  42", "\n\nblue whale", "no newline"]  # leading blank lines kept out of the cut
    assert rt.calls == [([[0, 97], [0, 98, 99], [0, 100, 101, 102]], 7)]


# ---- VllmRuntime's own logic, with vllm.LLM stood in for (it needs a GPU) ------------------------------------------
class FakeLLM:
    """Records what VllmRuntime gives vllm.LLM; generate answers each prompt with its reversed ids + EOS."""
    made: list[dict] = []

    def __init__(self, **kwargs):
        kwargs["allow_long"] = os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN")
        FakeLLM.made.append(kwargs)
        self.shut = False
        self.llm_engine = types.SimpleNamespace(engine_core=types.SimpleNamespace(shutdown=self._shutdown))

    def _shutdown(self):
        self.shut = True

    def generate(self, prompts, params, use_tqdm=True):
        assert params.temperature == 0 and params.stop is None and not use_tqdm
        out = types.SimpleNamespace
        return [out(outputs=[out(token_ids=list(reversed(p["prompt_token_ids"]))[:params.max_tokens] + [2])])
                for p in prompts]


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.__version__ = "0.33.0"
    mod.LLM = FakeLLM
    mod.SamplingParams = lambda **kw: types.SimpleNamespace(stop=None, **kw)
    mod.TokensPrompt = dict
    state = types.ModuleType("vllm.distributed.parallel_state")
    state.cleanup_dist_env_and_memory = lambda: None
    for name, m in (("vllm", mod), ("vllm.distributed", types.ModuleType("vllm.distributed")),
                    ("vllm.distributed.parallel_state", state)):
        monkeypatch.setitem(sys.modules, name, m)
    monkeypatch.delenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", raising=False)
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "WARNING")  # VllmRuntime sets it by default: kept to this test
    FakeLLM.made.clear()
    return FakeLLM


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vllm-fake")
    tok = make_small_tokenizer(root / "tok", "the quick brown fox jumps over the lazy dog\n" * 50, vocab_size=300)
    return make_tiny_model(root / "tiny", tok, original_context=256)


def test_runtime_engine_arguments_and_answers(fake_vllm, small_model):
    from ropeconvert.validators.vllm_runtime import VllmRuntime

    rt = VllmRuntime(small_model, 600, gpu_memory_utilization=0.5)
    made = fake_vllm.made[-1]
    assert made["model"] == made["tokenizer"] == str(small_model) and made["dtype"] == "bfloat16"
    assert made["max_model_len"] == 600 and made["generation_config"] == "vllm" and not made["trust_remote_code"]
    assert made["hf_overrides"] == {"max_position_embeddings": 600}  # plain rope: the table past the trained 256
    assert made["allow_long"] == "1" and "VLLM_ALLOW_LONG_MAX_MODEL_LEN" not in os.environ  # scoped to the build
    assert made["gpu_memory_utilization"] == 0.5
    assert rt.kind == "vllm" and rt.bos_id == 1 and rt.eos_ids == {2} and rt.base.original_context == 256
    assert rt.describe()["vllm"] == "0.33.0" and rt.describe()["dtype"] == "bfloat16"
    assert rt.complete_ids([[5, 6, 7], [8]], 2) == [[7, 6], [8]]  # EOS left out, as generate.greedy
    assert rt.greedy([3, 4], 5) == [4, 3]
    with pytest.raises(InputError, match="does not fit vLLM's max_model_len"):
        rt.complete_ids([[1] * 600], 4)
    llm = rt._llm
    rt.close()
    assert llm.shut and rt._llm is None
    rt.close()  # twice is harmless (validate closes on every path)


def test_scaled_rope_keeps_its_table(fake_vllm, small_model, tmp_path):
    import shutil

    export = Path(shutil.copytree(small_model, tmp_path / "linear"))
    config = json.loads((export / "config.json").read_text())
    config["rope_scaling"] = {"rope_type": "linear", "factor": 2.0}
    (export / "config.json").write_text(json.dumps(config))
    from ropeconvert.validators.vllm_runtime import VllmRuntime

    rt = VllmRuntime(export, 4096)
    assert fake_vllm.made[-1]["max_model_len"] == 512 and fake_vllm.made[-1]["hf_overrides"] == {}
    assert any("lowered to 512" in note for note in rt.notes), rt.notes


def test_engine_arguments_exist_in_installed_vllm():
    """The names VllmRuntime passes are vLLM 0.33's own (LLM's parameters, or EngineArgs fields via **kwargs)."""
    import dataclasses
    import inspect

    from vllm import LLM, SamplingParams
    from vllm.engine.arg_utils import EngineArgs

    known = set(inspect.signature(LLM.__init__).parameters) | {f.name for f in dataclasses.fields(EngineArgs)}
    assert {"model", "tokenizer", "dtype", "max_model_len", "enforce_eager", "hf_overrides", "generation_config",
            "trust_remote_code", "seed", "gpu_memory_utilization"} <= known
    SamplingParams(temperature=0.0, max_tokens=4, stop_token_ids=[2], detokenize=False, skip_special_tokens=True)


# ---- on a GPU: vLLM's greedy answers are the transformers runtime's -------------------------------------------------
# vLLM runs in a child process: a clean CUDA and vLLM platform state (an earlier test may have put vLLM on its CPU
# platform in this process, validators/runtime_check.py), and close() can be checked by the GPU memory it gives back.
CHILD = r'''
import json, sys, time
import torch
from ropeconvert.validators.generate import complete
from ropeconvert.validators.vllm_runtime import VllmRuntime

if __name__ == "__main__":
    args = json.loads(open(sys.argv[1]).read())
    free_before = torch.cuda.mem_get_info()[0]
    rt = VllmRuntime(args["model"], args["max_model_len"], dtype="float32", enforce_eager=True,
                     gpu_memory_utilization=0.3)
    out = {"batch": rt.complete_ids(args["ids"], args["n"]), "one": [rt.greedy(p, args["n"]) for p in args["ids"]],
           "texts": complete(rt, args["texts"], args["n"]), "describe": rt.describe(), "kind": rt.kind,
           "eos": sorted(rt.eos_ids), "bos": rt.bos_id, "notes": rt.notes, "free_before": free_before}
    rt.close()
    deadline = time.time() + 30
    while torch.cuda.mem_get_info()[0] < free_before - 2**30 and time.time() < deadline:
        time.sleep(0.5)  # the engine's process lets go of its memory as it exits
    out["free_after"] = torch.cuda.mem_get_info()[0]
    open(sys.argv[2], "w").write(json.dumps(out))
'''


@pytest.mark.gpu
def test_vllm_greedy_equals_transformers(tmp_path):
    from ropeconvert.validators import runtime

    words = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "su", "to", "vi", "ze") for b in ("r", "n", "st", "ll", "")]
    rng = random.Random(0)
    text = "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(3000))
    tok_dir = make_small_tokenizer(tmp_path / "tok", text)
    # head_dim 64: every vLLM attention backend takes it (its Triton attention needs ≥ 32). initializer_range 1: the
    # default 0.02 repeats one token whatever the context; large weights make each answer depend on every position
    # (a wrong rope or position would show) and keep the top-2 logit gaps far above float32 noise
    model = make_tiny_model(tmp_path / "tiny", tok_dir, head_dim=64, original_context=512, intermediate=256,
                            initializer_range=1.0)
    lines = text.splitlines()
    texts = [lines[0], " ".join(lines[1:8]), " ".join(lines[8:80])]  # the last one runs past the trained 512
    ref = runtime.load(model, device="cpu")  # float32: vLLM runs float32 too, so argmax ties cannot split them
    ids = [list(ref.tokenizer(t).input_ids) for t in texts]
    assert len(ids[-1]) > 512 + 16 and len(ids[-1]) < 1000, len(ids[-1])
    n = 24
    want = [ref.greedy(p, n) for p in ids]
    assert all(len(set(w)) > n // 2 for w in want), want  # varied answers, not one repeated token
    want_texts = complete(ref, texts, n)
    ref.close()

    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "args.json").write_text(json.dumps({"model": str(model), "max_model_len": 1024, "ids": ids, "n": n,
                                                    "texts": texts}))
    env = {k: v for k, v in os.environ.items() if k != "VLLM_TARGET_DEVICE"}
    env["TRITON_F32_DEFAULT"] = "ieee"  # Triton's tl.dot would take float32 as TF32: keep the attention float32
    start = time.time()
    proc = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "args.json"),
                           str(tmp_path / "out.json")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    got = json.loads((tmp_path / "out.json").read_text())
    print(f"vLLM child: {time.time() - start:.0f} s")
    assert got["kind"] == "vllm" and got["bos"] == 1 and 2 in got["eos"]
    assert got["describe"]["device"] == "cuda" and got["describe"]["dtype"] == "float32" and got["describe"]["vllm"]
    assert any("max_position_embeddings raised to 1024" in note for note in got["notes"]), got["notes"]
    assert got["batch"] == want, (got["batch"], want)  # all at once, as RULER sends a cell
    assert got["one"] == want
    assert got["texts"] == want_texts
    assert got["free_after"] >= got["free_before"] - 2**30, "close() left the engine's GPU memory held"


# ---- the command: `ropeconvert validate --engine vllm` refuses in one line before anything loads -------------------
@pytest.fixture(scope="module")
def yarn_exports(tmp_path_factory, small_tokenizer):
    from test_ruler_validate import cli

    root = tmp_path_factory.mktemp("engine")
    base = make_tiny_model(root / "tiny", small_tokenizer, original_context=256)
    code, _, err = cli(base, "--method", "yarn", "--factor", "2", "--to", "both", "--out", root / "yarn", "-q")
    assert code == 0, err
    return root / "yarn", root / "yarn.gguf", base


@pytest.mark.parametrize("which,args,needle", [
    ("gguf", ["--tasks", "ruler"], "--engine vllm runs HF exports"),
    ("hf", ["--tasks", "ppl,niah_single_1"], "ppl needs the model's log-probabilities"),
    ("hf", ["--tasks", "ruler", "--engine", "tgi"], "--engine must be one of native, vllm"),
    ("hf", ["--tasks", "ruler"], "--engine vllm needs"),  # this machine: no CUDA GPU (or no vLLM build for it)
], ids=["gguf", "scored-task", "unknown-engine", "no-gpu"])
def test_validate_engine_vllm_refusals_are_one_line(yarn_exports, which, args, needle):
    from test_ruler_validate import cli, one_line_error

    import torch

    if needle == "--engine vllm needs" and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: vLLM can run here")
    export = yarn_exports[0] if which == "hf" else yarn_exports[1]
    before = sorted(p.name for p in export.parent.iterdir())
    code, _, err = cli("validate", export, "--base", yarn_exports[2], "--engine", "vllm", *args, "--quiet")
    one_line_error(code, err, needle)
    assert sorted(p.name for p in export.parent.iterdir()) == before  # no report written
