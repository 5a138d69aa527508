"""Retries for publishing, bounded in total time, with huggingface_hub kept quiet.

A transient failure (5xx, 429, 408, a timeout or a dropped connection anywhere in the exception's cause chain) is
tried again after 0.5, 1, 2, 4, 4, … s while the waits fit in the retry budget: 20 s in all, or
ROPECONVERT_HUB_RETRY_SECONDS. These are the only retries: huggingface_hub's own per-request ones (up to 5 per
request with 23 s of waits, two warning lines per retry — under four tries of ours a dead endpoint took 98 s and
printed 48 lines, even with -q) are switched off for the duration and its warnings silenced, so the user sees one
note per reason and one error line.
"""
from __future__ import annotations

import itertools
import os
import time
from contextlib import contextmanager
from typing import Callable, TypeVar

from huggingface_hub.errors import HfHubHTTPError

from ropeconvert.errors import InputError
from ropeconvert.formats.hub_base import transport_errors

TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
RETRY_BUDGET_S = 20.0  # the most a publish waits on transient failures in all; RETRY_ENV overrides it
RETRY_ENV = "ROPECONVERT_HUB_RETRY_SECONDS"
BACKOFF_S, BACKOFF_CAP_S = 0.5, 4.0  # 0.5, 1, 2, 4, 4, … s between tries
T = TypeVar("T")


class RetriesSpent(Exception):
    """A transient failure that outlasted the retry budget (raised from the last failure)."""

    def __init__(self, tries: int, seconds: float):
        super().__init__(f"{tries} tries in {seconds:.0f} s")
        self.tries, self.seconds = tries, seconds


def retry_budget() -> float:
    text = os.environ.get(RETRY_ENV)
    if text is None:
        return RETRY_BUDGET_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise InputError(f"{RETRY_ENV}={text!r} is not a number of seconds ≥ 0", f"e.g. {RETRY_ENV}=20, or unset it")
    return value


def with_retries(step: Callable[[], T], log: Callable[[str], None]) -> T:
    """`step()`, tried again after transient failures while the waits fit in the retry budget; one note per new
    reason (not per try), and `RetriesSpent` once the budget is spent."""
    budget, start, said = retry_budget(), time.monotonic(), None
    with quiet_hub():
        for attempt in itertools.count(1):
            try:
                return step()
            except Exception as e:
                why = transient(e)
                if why is None:
                    raise
                delay, spent = min(BACKOFF_S * 2 ** (attempt - 1), BACKOFF_CAP_S), time.monotonic() - start
                if spent + delay > budget:
                    raise RetriesSpent(attempt, spent) from e
                if why != said:
                    log(f"{why}; retrying for up to {budget:g} s")
                    said = why
                time.sleep(delay)
    raise AssertionError("unreachable")  # itertools.count never ends; this keeps type checkers content


@contextmanager
def quiet_hub():
    """huggingface_hub without its own retries (every helper that retries calls the one `http_backoff`, whose
    defaults are set to no retries here and restored after) and without its warnings — unless its log was asked
    for (HF_DEBUG, HF_HUB_VERBOSITY=info/debug), which is then left as it is."""
    import warnings

    from huggingface_hub.utils import _http, logging as hf_logging

    logger = hf_logging.get_logger()
    level, defaults = logger.level, dict(_http.http_backoff.__kwdefaults__)
    _http.http_backoff.__kwdefaults__["max_retries"] = 0
    if logger.getEffectiveLevel() >= hf_logging.WARNING:
        logger.setLevel(hf_logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="huggingface_hub")
            yield
    finally:
        logger.setLevel(level)
        _http.http_backoff.__kwdefaults__.update(defaults)


def transient(e: BaseException) -> str | None:
    """Why `e` is worth retrying (a 5xx/429/timeout anywhere in its cause chain), or None."""
    http = in_chain(e, HfHubHTTPError)
    status = getattr(getattr(http, "response", None), "status_code", None)
    if status in TRANSIENT_STATUS:
        return f"the Hub answered {status}"
    net = in_chain(e, transport_errors())
    return None if net is None else f"the connection failed ({type(net).__name__})"


def in_chain(e: BaseException | None, kind) -> BaseException | None:
    """The first exception of type `kind` in `e`'s cause/context chain (huggingface_hub wraps some failures)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, kind):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None
