"""Chunked loss equals the full-logits loss; the sliding-window perplexity equals a plain reference loop written
here from the PI/YaRN evaluation code (methods.md §5.2)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ropeconvert.validators import perplexity as P
from ropeconvert.validators import runtime as rt


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return rt.load(tiny_llama, device="cpu")


@pytest.fixture(scope="module")
def text_ids(tiny):
    from ropeconvert.validators.corpus import load

    text = load("austen")[0].text[:20000]
    return tiny.tokenizer(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("chunk", [1, 7, 64, None])
def test_chunked_loss_equals_full_logits_loss(tiny, text_ids, chunk):
    model = tiny.model
    ids = torch.tensor([[1] + text_ids[:300]])
    with torch.inference_mode():
        full = model(input_ids=ids, labels=ids).loss.item()  # transformers' own loss over all [L, vocab] logits
    nll, _ = P.token_nll(model, ids[0].tolist(), chunk=chunk)
    assert nll.shape == (300,)
    assert abs(nll.mean() - full) <= 1e-5 * max(1.0, abs(full))


def test_partial_targets_and_top1(tiny, text_ids):
    ids = [1] + text_ids[:120]
    with torch.inference_mode():
        logits = tiny.model(input_ids=torch.tensor([ids])).logits[0]
    nll, top1 = P.token_nll(tiny.model, ids, n_targets=30, chunk=8, want_top1=True)
    ref = torch.nn.functional.cross_entropy(logits[-31:-1], torch.tensor(ids[-30:]), reduction="none")
    assert np.allclose(nll, ref.double().numpy(), atol=1e-5)
    assert (top1 == logits[-31:-1].argmax(-1).numpy()).all()


def reference_ppl(model, encoded, max_length, sliding_window, truncate, bos=1):
    """The reference loop, as in YaRN eval/perplexity.py: BOS per window, labels masked with -100, the model's
    own loss, ppl = exp(mean of window losses)."""
    max_tokenized_len = max_length - 1
    if truncate:
        encoded = encoded[:max_tokenized_len]
        sliding_window = max_tokenized_len
    labels = torch.tensor([encoded])
    seq_len = labels.shape[1]
    nlls, prev_end_loc = [], 0
    for begin_loc in range(0, seq_len, sliding_window):
        end_loc = min(begin_loc + max_tokenized_len, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = torch.cat([torch.tensor([[bos]]), labels[:, begin_loc:end_loc]], dim=1)
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.inference_mode():
            nlls.append(model(input_ids, labels=target_ids).loss)
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return math.exp(torch.stack(nlls).mean().item())


@pytest.mark.parametrize("length,stride,truncate,n", [(128, 32, False, 300), (128, 128, False, 301),
                                                      (96, 40, False, 250), (200, 256, True, 1000)])
def test_sliding_window_matches_reference_loop(tiny, text_ids, length, stride, truncate, n):
    doc = text_ids[:n]
    want = reference_ppl(tiny.model, doc, length, stride, truncate)
    got = P.document_ppl(tiny.model, doc, length, bos_id=1, stride=stride, truncate=truncate, chunk=16)
    assert got == pytest.approx(want, rel=1e-5)


def test_windows_follow_the_protocol():
    # BOS takes one slot of each window; the first window scores all its tokens, the next ones only the stride
    assert P.windows(300, 128, 32, add_bos=True, truncate=False) == [
        (0, 127, 127), (32, 159, 32), (64, 191, 32), (96, 223, 32), (128, 255, 32), (160, 287, 32), (192, 300, 13)]
    assert P.windows(300, 128, 32, add_bos=True, truncate=True) == [(0, 127, 127)]
    assert P.windows(1000, 128, 32, add_bos=True, truncate=False, max_windows=3) == [
        (0, 127, 127), (32, 159, 32), (64, 191, 32)]


def test_sweep_means_and_skips_short_documents(tiny, text_ids):
    docs = {"a": text_ids[:400], "b": text_ids[400:900], "short": text_ids[:100]}
    res = P.sweep(tiny.model, docs, [64, 200], bos_id=1, truncate=True, progress=False)
    assert res.lengths == [64, 200]
    assert res.per_document["short"] == [pytest.approx(P.document_ppl(tiny.model, docs["short"], 64, bos_id=1)), None]
    for i in range(2):
        vals = [v[i] for v in res.per_document.values() if v[i] is not None]
        assert res.mean[i] == pytest.approx(float(np.mean(vals)))
    assert all(v[1] is not None for k, v in res.per_document.items() if k != "short")


@pytest.mark.gpu
def test_cuda_bf16_chunked_loss_and_ppl(tiny_llama, text_ids):
    """On CUDA the runtime is bf16 + SDPA; the chunked loss (taken in f32) still equals the full-logits loss on the
    same device, and the perplexity stays close to the CPU f32 one."""
    gpu = rt.load(tiny_llama, device="cuda")
    assert gpu.dtype == torch.bfloat16
    ids = torch.tensor([[1] + text_ids[:300]], device="cuda")
    with torch.inference_mode():
        logits = gpu.model(input_ids=ids).logits[0, :-1].float()
    full = torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()
    nll, _ = P.token_nll(gpu.model, ids[0].tolist(), chunk=32)
    assert abs(nll.mean() - full) <= 1e-3 * max(1.0, abs(full))
    cpu = rt.load(tiny_llama, device="cpu")
    doc = text_ids[:600]
    want = P.document_ppl(cpu.model, doc, 256, bos_id=1, stride=128, truncate=False)
    got = P.document_ppl(gpu.model, doc, 256, bos_id=1, stride=128, truncate=False)
    assert got == pytest.approx(want, rel=0.02)
