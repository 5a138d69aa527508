"""RULER's synthetic tasks (NVIDIA/RULER, arXiv:2404.06654), built offline: samples and scores.

Each module says which RULER file and definitions it follows: config.py (templates, answer prefixes, answer
budgets, metrics, the 13 task configurations), niah.py, vt.py, extraction.py (cwe, fwe), qa.py, words.py
(wonderwords lists, key and value types), haystack.py (noise text, the essay haystack from the project's corpora in
place of Paul Graham's essays, sentence rule, sizing), scoring.py (string_match_all/part, average, effective
length), tasks.py (one sample of a given token length).

A caller's loop:

    essay = EssayHaystack(corpus.load("austen"), "austen")
    for s in make_samples("niah_single_2", 4096, tokenizer, samples=20, essay=essay):
        prediction = generate(s.prompt, max_new_tokens=s.max_new_tokens)
    score("niah_single_2", predictions, [s.outputs for s in samples])   # 0..100
"""
from ropeconvert.validators.ruler.config import OFFLINE_TASKS, RULER_TASKS, TASKS, TaskConfig
from ropeconvert.validators.ruler.haystack import NOISE, EssayHaystack, split_sentences
from ropeconvert.validators.ruler.qa import QaData, load_qa
from ropeconvert.validators.ruler.scoring import (RULER_THRESHOLD, EffectiveLength, effective_length, interval95,
                                                  relative_threshold, ruler_average, string_match_all,
                                                  string_match_part)
from ropeconvert.validators.ruler.tasks import (QaDataMissing, Sample, TaskNotRun, get_task, make_sample,
                                                make_samples, per_sample, score)

__all__ = [
    "OFFLINE_TASKS", "RULER_TASKS", "TASKS", "TaskConfig", "NOISE", "EssayHaystack", "split_sentences", "QaData",
    "load_qa", "RULER_THRESHOLD", "EffectiveLength", "effective_length", "interval95", "relative_threshold",
    "ruler_average", "string_match_all", "string_match_part", "QaDataMissing", "Sample", "TaskNotRun", "get_task",
    "make_sample", "make_samples", "per_sample", "score",
]
