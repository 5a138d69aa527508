"""SIGTERM and SIGHUP end a run the way Ctrl-C does: the handler raises `Interrupted`, a KeyboardInterrupt subclass
carrying the signal, so the same unwinding removes temporary outputs (formats/output.py) and the CLI prints one line
and exits 128 + the signal number (130 INT, 143 TERM, 129 HUP).

The short steps that must not be cut in half — putting finished outputs in place, removing temporary ones — run
inside `deferred()`: a signal that arrives there is remembered and raised when the step is done. This is done in
Python rather than with pthread_sigmask because a process-directed signal may be delivered to any thread (the hash
threads, a tokenizer's), and CPython then runs the handler in the main thread at once.
"""
from __future__ import annotations

import atexit
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

HANDLED = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


class Interrupted(KeyboardInterrupt):
    """Raised by the handler; a KeyboardInterrupt so that every `except Exception` lets it through."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        _State.last = signum  # the exit code, however click wraps or replaces this exception on its way out


class _State:
    depth = 0  # nesting of deferred() sections
    pending: int | None = None  # a signal that arrived inside one
    last: int | None = None  # the signal that ended the run, for the exit code
    written: list[Path] = []  # outputs complete at their final path before the interrupt
    exiting = False  # the run is over (its exit code decided): a late signal changes nothing
    registered = False


def _handler(signum: int, frame) -> None:
    if _State.exiting:
        return
    if _State.depth:
        _State.pending = _State.pending or signum
        return
    raise Interrupted(signum)


def install() -> None:
    """Handle SIGINT, SIGTERM and SIGHUP (main thread only). A signal whose disposition is not the default is left
    alone: `nohup` (SIGHUP ignored) and a shell's background job (SIGINT ignored) keep their meaning."""
    _State.depth, _State.pending, _State.last, _State.written, _State.exiting = 0, None, None, [], False
    if not _State.registered:
        atexit.register(_exiting)  # a signal during interpreter shutdown would print a traceback over the result
        _State.registered = True
    for sig in HANDLED:
        current = signal.getsignal(sig)
        if current is _handler or current in (signal.SIG_DFL, signal.default_int_handler):
            try:
                signal.signal(sig, _handler)
            except ValueError:  # not the main thread (an embedding application's worker): leave signals to it
                return


@contextmanager
def deferred() -> Iterator[None]:
    """Run the block whole: a handled signal that arrives meanwhile is raised as `Interrupted` when it ends."""
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if not _State.depth and _State.pending is not None:
            signum, _State.pending = _State.pending, None
            raise Interrupted(signum)


def _exiting() -> None:
    """At interpreter exit: the result is decided, so a late signal is ignored — neither a traceback from the handler
    nor, once Python has restored the default dispositions at the very end, death by the signal."""
    _State.exiting = True
    for sig in HANDLED:
        if signal.getsignal(sig) is _handler:
            signal.signal(sig, signal.SIG_IGN)  # Python leaves SIG_IGN in place when it finalizes


def note_written(path: Path) -> None:
    """Record an output that is complete at its final path, so an interrupt after it does not deny it exists."""
    _State.written.append(Path(path))


def interrupted_exit() -> int:
    """Print the one line for an interrupted run (stderr) and return its exit code, 128 + the signal number."""
    signum = _State.last or signal.SIGINT  # SIGINT: a KeyboardInterrupt that no handler of ours raised
    name = signal.Signals(signum).name
    if _State.written:
        done = ", ".join(str(p) for p in _State.written)
        line = f"error: interrupted ({name}) — {done} had already been written in full and is kept"
    else:
        line = f"error: interrupted ({name}) — nothing was written at the output path; rerun the command to finish"
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:  # SIGHUP: the terminal may be gone
        pass
    return 128 + int(signum)
