"""Named registries: the one place each kind of pluggable piece (encoder, head, loss, index kind, search mode)
is declared. Config fields take their accepted values from them (checked when a config is built, so an entry
registered later is accepted too): adding an entry touches the module that registers it and nothing else.

    ENCODERS = Registry("encoder")

    @ENCODERS.register("cnn")
    def build_cnn(...): ...

    ENCODERS.get("cnn")        # the builder; an unknown name raises naming the accepted ones
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry (a builder function or a class), in registration order."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding `entry` under `name`; a name registered twice is an error."""
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry
        return add

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a toy entry clean up with this)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"{self.kind} {name!r} is not accepted; choose one of {list(self._entries)}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
