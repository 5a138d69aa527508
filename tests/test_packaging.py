"""The wheel carries every package under its ropeconvert.* name and runs from a fresh virtual environment."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_installs_in_fresh_venv_and_runs(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True, text=True)
    wheel = next((tmp_path / "dist").glob("ropeconvert-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("ropeconvert/cli.py", "ropeconvert/convert/spec.py", "ropeconvert/convert/methods/yarn.py",
                   "ropeconvert/formats/hf.py", "ropeconvert/formats/gguf_read.py", "ropeconvert/validators/corpus.py",
                   "ropeconvert/validators/corpora_fetch.py", "ropeconvert/validators/ruler/tasks.py"):
        assert module in names, module
    # generic top-level names must never be installed (`validators` is another PyPI project)
    assert not any(n.split("/")[0] in ("convert", "formats", "validators", "tests", "bench") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # the wheel itself with the light dependencies its CLI entry points import (torch & co. are not needed here)
    subprocess.run(pip + ["--no-deps", str(wheel)], check=True, capture_output=True)
    subprocess.run(pip + ["numpy", "typer", "tqdm"], check=True, capture_output=True)
    exe = venv / "bin" / "ropeconvert"
    help_run = subprocess.run([str(exe), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert help_run.returncode == 0 and "convert" in help_run.stdout, help_run.stderr
    methods = subprocess.run([str(exe), "methods"], capture_output=True, text=True, cwd=tmp_path)
    assert methods.returncode == 0 and "longrope" in methods.stdout, methods.stderr
    imports = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import ropeconvert.convert.spec, ropeconvert.formats.hf_config; print('ok')"],
                             capture_output=True, text=True, cwd=tmp_path)
    assert imports.stdout.strip() == "ok", imports.stderr
