"""RULER's synthetic tasks (validators/ruler): every task's sample has the structure of NVIDIA/RULER's definition
(scripts/data/synthetic/*.py, synthetic.yaml, constants.py), fits the requested length under the real SmolLM2
tokenizer, is deterministic; the metrics score as RULER's string_match_all / string_match_part; effective length;
bad input. No model forward."""
from __future__ import annotations

import json
import random
import re
import uuid
from collections import Counter

import pytest

from ropeconvert.errors import InputError, UnknownNameError
from ropeconvert.validators import corpus
from ropeconvert.validators import ruler as R
from ropeconvert.validators.ruler import extraction, words
from ropeconvert.validators.ruler.haystack import TooShort, largest_fitting

NEEDLE_RE = re.compile(r"One of the special magic (numbers|uuids) for (.+?) is: ([0-9a-f-]+)\.")
NIAH = {  # synthetic.yaml: haystack, key type, value type, keys, values per key, queries
    "niah_single_1": ("noise", "words", "numbers", 1, 1, 1),
    "niah_single_2": ("essay", "words", "numbers", 1, 1, 1),
    "niah_single_3": ("essay", "words", "uuids", 1, 1, 1),
    "niah_multikey_1": ("essay", "words", "numbers", 4, 1, 1),
    "niah_multikey_2": ("needle", "words", "numbers", 1, 1, 1),
    "niah_multikey_3": ("needle", "uuids", "uuids", 1, 1, 1),
    "niah_multivalue": ("essay", "words", "numbers", 1, 4, 1),
    "niah_multiquery": ("essay", "words", "numbers", 4, 1, 4),
}
# one haystack unit's tokens bound how far below the length a tight fit can stop
MARGIN = {"niah_multikey_3": 80, "qa_1": 120, "qa_2": 120}


@pytest.fixture(scope="module")
def tok(smollm2_hf):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_hf)


@pytest.fixture(scope="module")
def docs():
    return corpus.austen()[:2]


@pytest.fixture(scope="module")
def essay(docs):
    return R.EssayHaystack(docs, "austen")


def ntok(tok, text):
    return len(tok.encode(text, add_special_tokens=False))


def check_common(s, tok, task, length):
    cfg = R.get_task(task)
    assert s.max_new_tokens == cfg.max_new_tokens and s.metric == cfg.metric
    assert s.length == ntok(tok, s.prompt) + s.max_new_tokens  # RULER's length: input + prefix + answer budget
    assert length - MARGIN.get(task, 32) <= s.length <= length, (s.length, length)


def is_word_key(key):
    """RULER's word keys are "adjective-noun" (either may hold a hyphen itself)."""
    adjs, nouns = set(words.adjectives()), set(words.nouns())
    return any(key[:i] in adjs and key[i + 1:] in nouns for i, c in enumerate(key) if c == "-")


@pytest.mark.parametrize("task", list(NIAH))
def test_niah_structure(task, tok, essay, docs):
    hay, k_type, v_type, nk, nv, nq = NIAH[task]
    length = 2048
    s = R.make_sample(task, length, tok, 3, essay=essay)
    check_common(s, tok, task, length)
    assert (s.max_new_tokens, s.metric) == (128, "string_match_all")
    single = nq * nv == 1
    noun = v_type[:-1] if single else v_type
    head = (f"A special magic {noun} is hidden within the following text. Make sure to memorize it. I will quiz you "
            f"about the {noun} afterwards.\n") if single else (
           f"Some special magic {noun} are hidden within the following text. Make sure to memorize it. I will quiz "
           f"you about the {noun} afterwards.\n")
    assert s.input.startswith(head)
    question = re.search(r"\nWhat (is|are all) the special magic \w+ for (.+) mentioned in the provided text\?$",
                         s.input)
    assert question and question.group(1) == ("is" if single else "are all")
    query = question.group(2)
    verb = "is" if single else "are"
    assert s.answer_prefix == f" The special magic {noun} for {query} mentioned in the provided text {verb}"
    keys = query.split(", and ") if nq > 1 else [query]
    keys = keys[0].split(", ") + keys[1:] if nq > 1 else keys
    assert len(keys) == nq and len(set(keys)) == nq

    context = s.input[len(head):question.start()]
    needles = NEEDLE_RE.findall(context)
    assert all(t == v_type for t, _, _ in needles)  # the needles keep the plural type
    real = [(k, v) for _, k, v in needles if k in keys]
    assert len(real) == nq * nv
    assert sorted(s.outputs) == sorted(v for _, v in real)  # every value of every queried key
    assert [k for k in keys for kk, _ in real if kk == k] == [k for k in keys for _ in range(nv)]
    for key, value in [(k, v) for _, k, v in needles]:
        if v_type == "numbers":
            assert re.fullmatch(r"\d{7}", value)
        else:
            assert uuid.UUID(value).version == 4
        if k_type == "uuids":
            assert uuid.UUID(key).version == 4
        else:
            assert is_word_key(key)

    if hay == "essay":
        assert len(needles) == nk * nv
        text = context
        for n in NEEDLE_RE.finditer(context):
            text = text.replace(n.group(0), "")
        expected = re.sub(r"\s+", " ", " ".join(d.text for d in docs)).strip().split(" ")[:s.units]
        assert text.split() == expected  # the haystack is the corpus's first `units` words, needles between them
        for n in NEEDLE_RE.finditer(context):  # needles sit between sentences (or after the last, cut one)
            before, after = context[:n.start()].rstrip(), NEEDLE_RE.sub("", context[n.end():]).strip()
            assert not before or not after or before[-1] in ".!?\"'’”)]"
    else:
        lines = context.split("\n")
        plain = [x for x in lines if not NEEDLE_RE.fullmatch(x)]
        if hay == "noise":
            assert plain == [R.NOISE] * s.units and len(lines) == s.units + nk * nv
        else:  # distractor needles with random keys and values fill the haystack
            assert plain == [] and len(lines) == s.units + nk * nv


def test_vt_structure(tok):
    length = 2048
    s = R.make_sample("vt", length, tok, 5)
    check_common(s, tok, "vt", length)
    assert (s.max_new_tokens, s.metric) == (30, "string_match_all")
    task_head = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    assert s.input.startswith(task_head) and s.input.count(task_head) == 2  # the one-shot example, then the task
    example, task = s.input.split("\n\n" + task_head)  # the example ends with a newline, then a blank line
    # the task: one chain of five names, four hops, in the noise
    lines = task.split("\n")
    question = lines[-1]
    value = re.fullmatch(r"Question: Find all variables that are assigned the value (\d{5}) in the text above\.",
                         question).group(1)
    chain = [x for x in lines[:-1] if x.startswith("VAR ")]
    assert [x for x in lines[:-1] if not x.startswith("VAR ")] == [R.NOISE] * s.units
    names = list(s.outputs)
    assert len(names) == 5 and len(set(names)) == 5 and all(re.fullmatch(r"[A-Z]{5}", n) for n in names)
    assert chain == [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(4)]
    assert 10000 <= int(value) < 99999
    assert s.answer_prefix == (" Answer: According to the chain(s) of variable assignment in the text above, "
                               f"5 variables are assigned the value {value}, they are: ")
    # the example: three-letter names, its own (randomised) value, its answer after its answer prefix
    ex_names = example.split()[-5:]
    assert all(re.fullmatch(r"[A-Z]{3}", n) for n in ex_names)
    ex_value = re.search(r"assigned the value (\d+) in the text", example).group(1)
    assert ex_value != "12345"
    ex_chain = [x for x in example.split("\n") if x.startswith("VAR ")]
    assert ex_chain == [f"VAR {ex_names[0]} = {ex_value}"] + [f"VAR {ex_names[j + 1]} = VAR {ex_names[j]} "
                                                                 for j in range(4)]
    # RULER appends " " + the answer to the example's prompt, whose prefix already ends in a space
    assert example.endswith(f"5 variables are assigned the value {ex_value}, they are:  {' '.join(ex_names)}")
    assert ntok(tok, example.split(" Answer: According")[0] + " Answer: According") <= 500 + 40


def _cwe_lists(text):
    """The numbered lists ("1. w 2. w …") of a cwe prompt: the worked example's, then the task's."""
    return [re.findall(r"\d+\. (.+?)(?= \d+\. |$)", line) for line in text.split("\n") if line.startswith("1. ")]


@pytest.mark.parametrize("length,shot,repeats", [(2048, (20, 3, 1), (6, 1)), (4096, (40, 10, 3), (30, 3))])
def test_cwe_structure(tok, length, shot, repeats):
    s = R.make_sample("cwe", length, tok, 2)
    check_common(s, tok, "cwe", length)
    assert (s.max_new_tokens, s.metric) == (120, "string_match_all")
    head = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
            "ones that appear most often.\n")
    prefix = " Answer: The top 10 words that appear most often in the list are:"
    assert s.input.count(head) == 2 and s.answer_prefix == prefix
    assert s.input.endswith("\nQuestion: What are the 10 most common words in the above list?")
    shot_list, task_list = _cwe_lists(s.input)
    pool = set(words.common_words_pool())
    for listing, (distinct, common_rep, other_rep), common in (
            (shot_list, shot, None), (task_list, (s.units, *repeats), list(s.outputs))):
        counts = Counter(listing)
        assert len(counts) == distinct and set(counts) <= pool
        top = [w for w, c in counts.items() if c == common_rep]
        assert len(top) == 10 and all(c == other_rep for w, c in counts.items() if w not in top)
        if common is not None:
            assert set(common) == set(top) and len(common) == 10
    # the worked example's answer: its ten common words, numbered, after its own answer prefix
    answer = s.input.split(prefix + " ")[1].split("\n")[0]
    shot_top = {w for w, c in Counter(shot_list).items() if c == shot[1]}
    assert set(re.findall(r"\d+\. (\S+(?: \S+)*?)(?= \d+\. |$)", answer)) == shot_top


def test_fwe_structure(tok):
    length = 2048
    s = R.make_sample("fwe", length, tok, 4)
    check_common(s, tok, "fwe", length)
    assert (s.max_new_tokens, s.metric) == (50, "string_match_all")
    head = ("Read the following coded text and track the frequency of each coded word. Find the three most "
            "frequently appeared coded words. ")
    tail = ("\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most "
            "frequently appeared words in the above coded text?")
    assert s.input.startswith(head) and s.input.endswith(tail)
    assert s.answer_prefix == (" Answer: According to the coded text above, the three most frequently appeared "
                               "words are:")
    coded = s.input[len(head):-len(tail)].split(" ")
    counts = Counter(coded)
    assert all(w == "..." or re.fullmatch(r"[a-z]{6}", w) for w in counts)
    ranked = [w for w, _ in counts.most_common()]
    assert ranked[0] == "..." and set(ranked[1:4]) == set(s.outputs)
    # word k appears int(n · k^-2 / ζ(2)) times, the vocabulary (length − 50) // 50 words
    expected = [c for c in extraction.fwe_counts(s.units, (length - 50) // 50, 2.0) if c > 0]
    assert sorted(counts.values(), reverse=True) == expected
    assert abs(extraction.zeta(2.0) - 3.141592653589793 ** 2 / 6) < 1e-12


SQUAD = {"version": "v2.0", "data": [
    {"title": "Denver", "paragraphs": [
        {"context": "Super Bowl 50 was won by the Denver Broncos, who beat the Carolina Panthers 24 to 10.",
         "qas": [{"question": "Which team won Super Bowl 50?", "id": "a", "is_impossible": False,
                  "answers": [{"text": "Denver Broncos", "answer_start": 29},
                              {"text": "the Denver Broncos", "answer_start": 25}]},
                 {"question": "Which team lost Super Bowl 51?", "id": "b", "is_impossible": True, "answers": [],
                  "plausible_answers": [{"text": "Carolina Panthers", "answer_start": 60}]}]},
        {"context": "The game was played at Levi's Stadium in Santa Clara, California, on February 7, 2016.",
         "qas": [{"question": "Where was the game played?", "id": "c", "is_impossible": False,
                  "answers": [{"text": "Levi's Stadium", "answer_start": 23}]}]}]},
    {"title": "Rivers", "paragraphs": [
        {"context": "The Rhine flows from the Swiss Alps to the North Sea, through six countries.",
         "qas": [{"question": "Where does the Rhine end?", "id": "d", "is_impossible": False,
                  "answers": [{"text": "the North Sea", "answer_start": 40}]}]},
        {"context": "The Danube is the second-longest river in Europe, after the Volga.", "qas": []}]}]}
HOTPOT = [
    {"_id": "x", "question": "Which river is longer, the Rhine or the Thames?", "answer": "the Rhine",
     "context": [["Rhine", ["The Rhine is 1,230 km long.", " It ends in the North Sea."]],
                 ["Thames", ["The Thames is 346 km long."]], ["Volga", ["The Volga is the longest river in Europe."]]]},
    {"_id": "y", "question": "Who wrote Emma?", "answer": "Jane Austen",
     "context": [["Emma (novel)", ["Emma is a novel by Jane Austen."]],
                 ["Persuasion", ["Persuasion was published in 1817."]]]},
]


@pytest.fixture(scope="module")
def qa_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    (root / "squad.json").write_text(json.dumps(SQUAD))
    (root / "hotpot.json").write_text(json.dumps(HOTPOT))
    return root


def test_qa_structure(tok, qa_files):
    squad = R.load_qa(qa_files / "squad.json")
    hotpot = R.load_qa(qa_files / "hotpot.json", "hotpotqa")
    assert (squad.kind, len(squad.qas), len(squad.docs)) == ("squad", 3, 4)  # the impossible question is dropped
    assert (hotpot.kind, len(hotpot.qas), len(hotpot.docs)) == ("hotpotqa", 2, 5)
    assert "Rhine\nThe Rhine is 1,230 km long. It ends in the North Sea." in hotpot.docs
    for task, data, seed, question, outputs, gold in (
            ("qa_1", squad, 0, "Which team won Super Bowl 50?", ("Denver Broncos", "the Denver Broncos"),
             ["Super Bowl 50 was"]),
            ("qa_1", squad, 2, "Where does the Rhine end?", ("the North Sea",), ["The Rhine flows"]),
            ("qa_2", hotpot, 1, "Who wrote Emma?", ("Jane Austen",), ["Emma (novel)\n", "Persuasion\n"])):
        for length in (256, 1024):
            s = R.make_sample(task, length, tok, seed, qa=data)
            check_common(s, tok, task, length)
            assert (s.max_new_tokens, s.metric, s.answer_prefix) == (32, "string_match_part", " Answer:")
            assert s.outputs == outputs
            head = ("Answer the question based on the given documents. Only give me the answer and do not output any "
                    "other words.\n\nThe following are given documents.\n\n")
            assert s.input.startswith(head) and s.input.endswith("\n\nQuestion: " + question)
            documents = re.findall(r"Document (\d+):\n", s.input)
            assert [int(i) for i in documents] == list(range(1, s.units + 1))
            assert all(g in s.input for g in gold)


def test_qa_without_data_or_with_bad_data(tok, qa_files, tmp_path):
    with pytest.raises(R.QaDataMissing) as e:
        R.make_sample("qa_1", 2048, tok, 0)
    assert isinstance(e.value, R.TaskNotRun) and "SQuAD" in e.value.one_line()
    with pytest.raises(InputError, match="qa_2 reads hotpotqa data"):
        R.make_sample("qa_2", 2048, tok, 0, qa=R.load_qa(qa_files / "squad.json"))
    secret = "TOP-SECRET-CONTENT"
    cases = {"not json": "{" + secret, "wrong shape": json.dumps({"data": [{"paragraphs": [{"qas": secret}]}]}),
             "no answerable": json.dumps({"data": [{"paragraphs": [{"context": secret, "qas": []}]}]}),
             "scalar": json.dumps(7)}
    for name, text in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.json"
        path.write_text(text)
        with pytest.raises(InputError) as e:
            R.load_qa(path)
        line = e.value.one_line()
        assert "\n" not in line and secret not in line and path.name in line and str(tmp_path) not in line, name
    with pytest.raises(InputError, match="not found"):
        R.load_qa(tmp_path / "missing.json")


@pytest.mark.parametrize("task", R.OFFLINE_TASKS)
def test_samples_are_deterministic(task, tok, essay):
    a = R.make_samples(task, 1024, tok, 2, seed=7, essay=essay)
    b = R.make_samples(task, 1024, tok, 2, seed=7, essay=essay)
    assert a == b and [s.seed for s in a] == [7, 8]
    assert a[0].prompt != a[1].prompt and a[0].outputs != a[1].outputs
    assert all(o in a[0].input for o in a[0].outputs)


def ruler_all(preds, refs):  # RULER's formula (eval/synthetic/constants.py), written out as the oracle
    return round(sum(sum(r.lower() in p.lower() for r in ref) / len(ref) for p, ref in zip(preds, refs))
                 / len(preds) * 100, 2)


def ruler_part(preds, refs):
    return round(sum(max(r.lower() in p.lower() for r in ref) for p, ref in zip(preds, refs)) / len(preds) * 100, 2)


def test_string_match_all():
    refs = [["7654321", "1234567"], ["apple-pie"], ["QVZCS", "YPUMR", "LFYKE"]]
    assert R.string_match_all(["The numbers are 7654321 and 1234567.", "APPLE-PIE", "qvzcs ypumr lfyke"], refs) == 100.0
    assert R.string_match_all(["only 7654321", "banana", "QVZCS LFYKE"], refs) == 38.89  # (1/2 + 0 + 2/3) / 3
    assert R.string_match_all(["nothing", "", "none"], refs) == 0.0
    assert R.string_match_all(["\x00 7654321\x01 1234567 "], refs[:1]) == 100.0  # RULER's postprocess first
    rng = random.Random(0)
    for _ in range(50):
        refs = [[str(rng.randint(0, 30)) for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(1, 6))]
        preds = [" ".join(str(rng.randint(0, 30)) for _ in range(rng.randint(0, 5))) for _ in refs]
        assert R.string_match_all(preds, refs) == ruler_all(preds, refs)
        assert R.score("niah_multivalue", preds, refs) == ruler_all(preds, refs)


def test_string_match_part():
    refs = [["Denver Broncos", "the Denver Broncos"], ["Jane Austen"]]
    assert R.string_match_part(["the denver broncos won", "JANE AUSTEN"], refs) == 100.0
    assert R.string_match_part(["Denver", "Jane Austen wrote it"], refs) == 50.0
    assert R.string_match_part(["Carolina Panthers", "Dickens"], refs) == 0.0
    assert R.per_sample("qa_1", ["Denver", "Jane Austen"], refs) == [0.0, 1.0]
    rng = random.Random(1)
    for _ in range(50):
        refs = [[str(rng.randint(0, 30)) for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(1, 6))]
        preds = [" ".join(str(rng.randint(0, 30)) for _ in range(rng.randint(0, 5))) for _ in refs]
        assert R.string_match_part(preds, refs) == ruler_part(preds, refs) == R.score("qa_2", preds, refs)
    with pytest.raises(InputError, match="no predictions"):
        R.score("qa_1", [], [])


def test_effective_length_and_relative_threshold():
    lengths = [4096, 8192, 16384]
    e = R.effective_length(lengths, [92.0, 86.1, 60.0])
    assert (e.length, e.threshold, e.label) == (8192, 85.6, "8192")
    assert R.effective_length(lengths, [92.0, 85.6, 85.6]).label == "≥16384"  # reaching the threshold passes
    assert R.effective_length(lengths, [85.5, 70.0, 10.0]).label == "<4096"
    assert R.effective_length(lengths, [80.0, 90.0, 70.0]).length == 8192  # the longest passing length
    assert R.effective_length(lengths, [70.0, 65.0, 40.0], threshold=60.0).length == 8192
    base = [71.5, 64.0, 20.0]
    assert R.relative_threshold(lengths, base, 8192) == (64.0, 8192)
    assert R.relative_threshold(lengths, base, 6000) == (71.5, 4096)  # the longest length not above the original
    with pytest.raises(InputError) as e:
        R.relative_threshold(lengths, base, 2048)
    line = e.value.one_line()
    assert "original context (2048 tokens)" in line and "add 2048 to the RULER lengths" in line
    threshold, _ = R.relative_threshold(lengths, base, 8192)
    assert R.effective_length(lengths, [80.0, 66.0, 30.0], threshold).length == 8192
    assert R.ruler_average({"a": 100.0, "b": 50.0}) == 75.0
    lo, hi = R.interval95([1.0] * 10)
    assert hi == 100.0 and 65 < lo < 75  # ten right answers do not pin the score at 100
    lo, hi = R.interval95([1.0, 0.0] * 250)
    assert 45 < lo < 50 < hi < 55


def test_bad_input_is_one_line(tok, essay):
    with pytest.raises(UnknownNameError) as e:
        R.make_sample("niah_singel_1", 2048, tok)
    assert "did you mean 'niah_single_1'" in e.value.one_line()
    with pytest.raises(InputError) as e:
        R.make_sample("niah_single_1", 100, tok)
    line = e.value.one_line()
    need = int(re.search(r"at least (\d+)", line).group(1))
    assert "\n" not in line and "niah_single_1 at 100 tokens" in line and 100 < need < 400
    assert R.make_sample("niah_single_1", need + 30, tok).length <= need + 30
    with pytest.raises(InputError, match="vt at 300 tokens"):
        R.make_sample("vt", 300, tok)
    for samples in (0, -1):
        with pytest.raises(InputError, match="at least one sample"):
            R.make_samples("fwe", 2048, tok, samples)
    with pytest.raises(InputError, match="positive number of tokens"):
        R.make_sample("fwe", 0, tok)
    with pytest.raises(InputError, match="essay haystack"):
        R.make_sample("niah_single_2", 2048, tok)
    with pytest.raises(R.TaskNotRun, match="distinct words"):
        R.make_sample("cwe", 400_000, tok)


def test_sizing_search_is_exact_and_cheap():
    rng = random.Random(0)
    for _ in range(200):
        per, base, budget = rng.uniform(0.5, 40), rng.randint(0, 300), rng.randint(400, 40000)
        table = {}

        def measure(n):
            table.setdefault(n, base + int(per * n) + rng.randint(0, 2))  # near-linear, wobbling, then fixed
            return table[n]

        calls = []
        n, m = largest_fitting(lambda k: calls.append(k) or measure(k), budget, 1, 25)
        assert m == measure(n) <= budget and measure(n + 1) > budget  # a measured boundary, though it wobbles
        assert len(calls) <= 10, len(calls)
        exact = lambda k: base + int(per * k)  # noqa: E731 (monotone: the boundary is the global one)
        n, _ = largest_fitting(exact, budget, 1, 25)
        assert exact(n) <= budget < exact(n + 1)
    with pytest.raises(TooShort):
        largest_fitting(lambda n: 500 + n, 400, 1, 25)
    assert largest_fitting(lambda n: n, 10_000, 1, 25, cap=300) == (300, 300)


def test_word_tasks_need_wonderwords(monkeypatch, tok):
    """No made-up fallback list: without wonderwords the word tasks refuse with the install hint."""
    import sys

    from ropeconvert.errors import UnsupportedError

    monkeypatch.setitem(sys.modules, "wonderwords", None)
    for cached in (words._wordlist, words._key_parts, words.common_words_pool):
        cached.cache_clear()
    try:
        with pytest.raises(UnsupportedError) as e:
            R.make_sample("cwe", 2048, tok)
        assert "pip install wonderwords" in e.value.one_line()
    finally:
        for cached in (words._wordlist, words._key_parts, words.common_words_pool):
            cached.cache_clear()


def test_sentences_and_word_lists():
    assert R.split_sentences("Mr. Darcy came in. She left!  \"Why?\" asked Jane. \"No.\" said he.") == [
        "Mr. Darcy came in.", "She left!", "\"Why?\" asked Jane.", "\"No.\" said he."]
    assert R.split_sentences("J. R. Smith met Mrs. Jennings at St. Paul's. It rained") == [
        "J. R. Smith met Mrs. Jennings at St. Paul's.", "It rained"]
    assert len(words.nouns()) > 6000 and len(words.adjectives()) > 800 and len(words.verbs()) > 900
    assert len(words.common_words_pool()) > 8000
    key = words.random_word(random.Random(0))
    assert is_word_key(key)
