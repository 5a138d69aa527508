"""Errors the user can act on.

Library code raises these; only the CLI turns them into one line ("error: <problem> — <fix>") and exit code 2.
Anything else that escapes is a bug: the CLI prints one line and a hint to rerun with ROPECONVERT_DEBUG=1.
"""
from __future__ import annotations


class RopeConvertError(Exception):
    """Base class: `problem` says what is wrong, `fix` what to do next."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def one_line(self) -> str:
        text = self.problem if not self.fix else f"{self.problem} — {self.fix}"
        return " ".join(text.split())  # one line, whatever the message held


class SpecError(RopeConvertError, ValueError):
    """A RoPE parameter is out of its allowed range."""


class InputError(RopeConvertError):
    """A model, config, factor file or other input is missing or malformed."""


class UnsupportedError(RopeConvertError):
    """The input is valid but this tool (or the target runtime) cannot do what was asked."""


class OutputError(RopeConvertError):
    """The output path exists, is not writable, or the disk ran out."""


class UnknownNameError(RopeConvertError, KeyError):
    """A registry lookup failed (unknown method, alias, task…)."""

    def __str__(self) -> str:  # KeyError would otherwise print the repr
        return self.one_line()
