"""One generic name -> factory registry used for data sets, models, losses and policies.

Where a registry allows it (`imported`), a name `module:attribute` is the user's own factory, imported
(`lepton_ray/user_code.py`) and adapted to the registry's contract."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from lepton_ray.errors import ConfigError
from lepton_ray.user_code import import_object, is_import_path

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; `get` fails with a 'did you mean' hint naming the field."""

    def __init__(self, kind: str, field: str, imported: Callable[[object, str], T] | None = None) -> None:
        self.kind = kind
        self.field = field
        self.imported = imported
        """Adapts a factory named by import path to this registry's contract; None: import paths are refused."""
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return decorator

    def get(self, name: str, field: str | None = None) -> T:
        if name not in self._items and self.imported is not None and is_import_path(name):
            return self.imported(import_object(name, field or self.field), name)
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{field or self.field}: unknown {self.kind} {name!r}{hint} "
                f"(choose one of: {', '.join(self.names())}{' or your own as module:attribute' if self.imported else ''})"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
