"""Exports to publish in the hub tests: a tiny model that sits in a huggingface_hub cache as `acme/tiny-llama`
(so the card can name its Hub base and licence), converted by the real pipeline; validation reports in the
"ropeconvert.report/1" schema with real PNG plots; a small GGUF export with rope metadata."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_model

BASE_ID = "acme/tiny-llama"
BASE_SHA = "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c"
FAKE_TOKEN = "hf_ropeconvertTESTtoken9f8e7d6c5b4a"


def cached_base(cache: Path, tokenizer_dir: Path) -> Path:
    """A snapshot laid out as huggingface_hub's cache lays it out (refs/main → snapshots/<sha>), README with licence."""
    repo = cache / f"models--{BASE_ID.replace('/', '--')}"
    snap = repo / "snapshots" / BASE_SHA
    make_tiny_model(snap, tokenizer_dir)
    (snap / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# tiny llama\n")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(BASE_SHA)
    return snap


def make_export(tmp: Path, source: Path, name: str = "tiny-yarn") -> Path:
    from ropeconvert.convert.options import ConvertOptions
    from ropeconvert.convert.pipeline import convert

    return convert(ConvertOptions(str(source), "yarn", out=tmp / name, knobs={"factor": 2.0},
                                  progress=False)).outputs["hf"]


def plot(path: Path, kind: str, lengths, base, extended) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2), dpi=50)
    if kind == "passkey":
        ax.imshow(np.asarray(extended, dtype=float), vmin=0, vmax=1)
    else:
        ax.plot(lengths, [b if b is not None else np.nan for b in base], label="base")
        ax.plot(lengths, extended, label="extended")
    fig.savefig(path)
    plt.close(fig)


def write_report(report_dir: Path, spec: dict | None, *, passed: bool = True, scale: float = 1.0,
                 base: str = BASE_ID) -> dict:
    """A report in validators/report.py's schema, with numbers of our choosing; `scale` moves every number, so tests
    can tell two reports apart. (test_hub_e2e.py publishes a report validators really wrote.)"""
    lengths = [256, 512]
    ppl_base, ppl_ext = [14.8123 * scale, 87.3456 * scale], [15.0311 * scale, 16.9087 * scale]
    pk_base = [[1.0, 1.0, 0.8], [0.2, 0.0, 0.4]]
    pk_ext = [[1.0, 1.0, 1.0], [0.8, 1.0, 0.6]]
    checks = [{"name": "ppl_at_original_within_5pct", "passed": True, "detail": f"{ppl_ext[0]:.2f} vs {ppl_base[0]:.2f}"},
              {"name": "passkey_at_target", "passed": passed, "detail": "mean 80% (needs ≥ 75%)" if passed else "mean 40% (needs ≥ 75%)"}]
    report = {
        "schema": "ropeconvert.report/1", "created": "2026-11-23T08:00:00+00:00", "export": str(report_dir),
        "base": base, "spec": spec,
        "runtime": {"device": "cpu", "dtype": "float32", "torch": "2.13.0", "transformers": "5.23.0",
                    "engine": "transformers"},
        "corpus": {"name": "austen", "documents": ["emma", "persuasion", "sense-and-sensibility", "mansfield-park"]},
        "tasks": {"ppl": {"lengths": lengths, "base": ppl_base, "extended": ppl_ext,
                          "per_document": {"base": {"emma": ppl_base}, "extended": {"emma": ppl_ext}}},
                  "passkey": {"lengths": lengths, "depths": [0.0, 0.5, 1.0], "trials": 5, "base": pk_base,
                              "extended": pk_ext}},
        "checks": checks, "passed": passed, "plots": {"ppl": "ppl.png", "passkey": "passkey.png"},
        "markdown": "report.md",
    }
    from ropeconvert.validators.report import check_schema

    check_schema(report)  # the schema validators/report.py writes (and checks) too
    report_dir.mkdir(parents=True, exist_ok=True)
    plot(report_dir / "ppl.png", "ppl", lengths, ppl_base, ppl_ext)
    plot(report_dir / "passkey.png", "passkey", lengths, pk_base, pk_ext)
    (report_dir / "report.md").write_text("## Validation\n\n(see report.json)\n")
    (report_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def export_spec(export: Path) -> dict:
    return json.loads((export / "ropeconvert.json").read_text())["spec"]


def write_gguf_export(path: Path) -> Path:
    """A small llama GGUF carrying YaRN rope metadata (what a GGUF export of a 8192 → 16384 YaRN run holds)."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(16384)
    w.add_rope_dimension_count(64)
    w.add_rope_freq_base(100000.0)
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(2.0)
    w.add_rope_scaling_orig_ctx_len(8192)
    w.add_license("apache-2.0")
    w.add_tensor("token_embd.weight", np.zeros((8, 16), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def hub_env(stub, tmp: Path, **extra) -> dict:
    """The subprocess environment that points huggingface_hub at the stub (HF_ENDPOINT is read at import)."""
    env = {"HF_ENDPOINT": stub.url, "HF_TOKEN": FAKE_TOKEN, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp / "hf-home"),
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", **extra}
    return env


@pytest.fixture(scope="session")
def hub_base(hub_snapshot) -> Path:
    """conftest's one acme/tiny-llama snapshot, under the name the hub test modules import from here."""
    return hub_snapshot


@pytest.fixture
def hf_export(tmp_path, yarn_export) -> Path:
    """A fresh copy of the session's YaRN ×2 export of acme/tiny-llama with a report, for each test: tests change it."""
    export = Path(shutil.copytree(yarn_export, tmp_path / yarn_export.name))
    write_report(export, export_spec(export))
    return export


def scan_for(needle: str, *roots: Path) -> list[Path]:
    """Every file under `roots` whose bytes contain `needle`."""
    hits = []
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                p = Path(dirpath) / name
                if p.is_file() and needle.encode() in p.read_bytes():
                    hits.append(p)
    return hits
