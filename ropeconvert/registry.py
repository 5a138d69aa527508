"""A small named registry: rejects duplicates, answers unknown names with "did you mean", can be frozen."""
from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Generic, TypeVar

from ropeconvert.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._frozen = False

    def register(self, name: str, item: T) -> T:
        if self._frozen:
            raise RuntimeError(f"the {self.kind} registry is frozen; register {name!r} at import time")
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def unregister(self, name: str) -> T:
        """Take `name` out again (a test that registers its own entry removes it afterwards)."""
        if self._frozen:
            raise RuntimeError(f"the {self.kind} registry is frozen; {name!r} stays")
        self.get(name)  # an unknown name: the same "did you mean" error as a lookup
        return self._items.pop(name)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name), f"choose one of: {', '.join(self._items)}") from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._items), n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}"

    def freeze(self) -> None:
        self._frozen = True

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def items(self):
        return self._items.items()

    def __len__(self) -> int:
        return len(self._items)
