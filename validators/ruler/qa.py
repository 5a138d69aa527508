"""RULER's question answering tasks: qa_1 (SQuAD) and qa_2 (HotpotQA), from a file the user supplies.

Follows NVIDIA/RULER `scripts/data/synthetic/qa.py`:
- SQuAD (`read_squad`): documents are the distinct paragraph contexts, sorted; a question is every answerable
  entry (`is_impossible` false; SQuAD 1.1 files have no such field and count as answerable), its references the
  answer texts, its gold document its paragraph and its "more" documents the other paragraphs of its article;
- HotpotQA (`read_hotpotqa`): documents are "title\\n" + the joined sentences of each context paragraph, sorted;
  every paragraph of a question's context (gold and distractors) is its gold set; the reference is the answer;
- a prompt of n documents: the gold ones, then its article's other paragraphs, then documents drawn at random
  (all documents in order, repeated, once n reaches their number); shuffled; each written
  "Document {i}:\\n{text}" and separated by a blank line;
- the i-th sample asks the i-th question of the file, as RULER does (sample seed i, modulo the file's count).

RULER downloads SQuAD 2.0 dev and HotpotQA dev (distractor); nothing is downloaded here: without a file these
tasks raise QaDataMissing, which callers report as "not run".
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from ropeconvert.errors import InputError
from ropeconvert.validators.ruler.config import FAMILIES, Plan, TaskConfig

DOCUMENT_PROMPT = "Document {i}:\n{document}"
KINDS = ("squad", "hotpotqa")
_FIX = "pass SQuAD's dev-v2.0.json (qa_1) or HotpotQA's hotpot_dev_distractor_v1.json (qa_2)"


@dataclass(frozen=True)
class QaItem:
    query: str
    outputs: tuple[str, ...]
    context: tuple[int, ...]  # gold document indices
    more_context: tuple[int, ...] = ()  # SQuAD: the article's other paragraphs


@dataclass(frozen=True)
class QaData:
    kind: str  # "squad" | "hotpotqa"
    name: str  # the file's name, for messages
    qas: tuple[QaItem, ...]
    docs: tuple[str, ...]


def _need(cond: bool, name: str, where: str, what: str) -> None:
    if not cond:
        raise InputError(f"{name} is not a {what} file: {where} is missing or of the wrong type", _FIX)


def _squad(data, name: str) -> QaData:
    _need(isinstance(data, dict) and isinstance(data.get("data"), list), name, "the top-level 'data' list", "SQuAD")
    contexts = []
    for a, article in enumerate(data["data"]):
        _need(isinstance(article, dict) and isinstance(article.get("paragraphs"), list), name,
              f"data[{a}].paragraphs", "SQuAD")
        for p, par in enumerate(article["paragraphs"]):
            _need(isinstance(par, dict) and isinstance(par.get("context"), str) and isinstance(par.get("qas"), list),
                  name, f"data[{a}].paragraphs[{p}].context/qas", "SQuAD")
            contexts.append(par["context"])
    docs = sorted(set(contexts))
    index = {c: i for i, c in enumerate(docs)}
    qas = []
    for a, article in enumerate(data["data"]):
        article_docs = [index[p["context"]] for p in article["paragraphs"]]
        for p, par in enumerate(article["paragraphs"]):
            for q, qa in enumerate(par["qas"]):
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                _need(isinstance(qa, dict) and isinstance(qa.get("question"), str), name, where + ".question", "SQuAD")
                if qa.get("is_impossible", False):
                    continue
                answers = qa.get("answers")
                _need(isinstance(answers, list) and all(isinstance(x, dict) and isinstance(x.get("text"), str)
                                                        for x in answers), name, where + ".answers", "SQuAD")
                if not answers:
                    continue
                gold = index[par["context"]]
                qas.append(QaItem(qa["question"], tuple(x["text"] for x in answers), (gold,),
                                  tuple(i for i in article_docs if i != gold)))
    return QaData("squad", name, tuple(qas), tuple(docs))


def _hotpot(data, name: str) -> QaData:
    _need(isinstance(data, list), name, "the top-level list of questions", "HotpotQA")

    def doc(pair, where: str) -> str:
        ok = (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], list)
              and all(isinstance(s, str) for s in pair[1]))
        _need(ok, name, where, "HotpotQA")
        return f"{pair[0]}\n{''.join(pair[1])}"

    per_question = []
    for q, item in enumerate(data):
        ok = (isinstance(item, dict) and isinstance(item.get("question"), str)
              and isinstance(item.get("answer"), str) and isinstance(item.get("context"), list))
        _need(ok, name, f"[{q}].question/answer/context", "HotpotQA")
        per_question.append([doc(pair, f"[{q}].context[{c}]") for c, pair in enumerate(item["context"])])
    docs = sorted({d for texts in per_question for d in texts})
    index = {d: i for i, d in enumerate(docs)}
    qas = tuple(QaItem(item["question"], (item["answer"],), tuple(index[d] for d in texts))
                for item, texts in zip(data, per_question) if texts)
    return QaData("hotpotqa", name, qas, tuple(docs))


def load_qa(path: str | Path, kind: str | None = None) -> QaData:
    """A SQuAD or HotpotQA JSON file (kind "squad"/"hotpotqa", or None to tell by its shape)."""
    path = Path(path).expanduser()
    if kind is not None and kind not in KINDS:
        raise InputError(f"unknown QA dataset kind {kind!r}", f"use one of: {', '.join(KINDS)}")
    if not path.is_file():
        raise InputError(f"QA file {path.name} not found", _FIX)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"QA file {path.name} is not UTF-8 text", _FIX) from None
    except json.JSONDecodeError as e:
        raise InputError(f"QA file {path.name} is not valid JSON (line {e.lineno}, column {e.colno})", _FIX) from None
    if kind is None:
        kind = "squad" if isinstance(data, dict) else "hotpotqa" if isinstance(data, list) else None
        if kind is None:
            raise InputError(f"{path.name} is neither a SQuAD file (an object with 'data') nor a HotpotQA file "
                             "(a list of questions)", _FIX)
    out = _squad(data, path.name) if kind == "squad" else _hotpot(data, path.name)
    if not out.qas:
        raise InputError(f"{path.name} holds no answerable question", _FIX)
    return out


def plan(cfg: TaskConfig, rng: random.Random, qa: QaData, index: int) -> Plan:
    item = qa.qas[index % len(qa.qas)]
    gold, more, docs = list(item.context), list(item.more_context), qa.docs
    taken = set(gold) | set(more)
    more_order = rng.sample(more, len(more))
    extra_order = rng.sample([i for i in range(len(docs)) if i not in taken], len(docs) - len(taken))
    order_seed = rng.getrandbits(64)
    family = FAMILIES["qa"]

    def render(n: int) -> tuple[str, str, tuple[str, ...]]:
        if n < len(docs):
            if n - len(gold) > len(more):
                ids = gold + more + extra_order[:n - len(gold) - len(more)]
            else:
                ids = gold + more_order[:n - len(gold)]
            chosen = [docs[i] for i in ids]
        else:
            chosen = list((docs * -(-n // len(docs)))[:n])
        random.Random(f"{order_seed}:{n}").shuffle(chosen)
        context = "\n\n".join(DOCUMENT_PROMPT.format(i=i + 1, document=d) for i, d in enumerate(chosen))
        return family.template.format(context=context, query=item.query), family.answer_prefix, item.outputs

    return Plan(render, max(1, len(gold)), 10, None, "documents")
