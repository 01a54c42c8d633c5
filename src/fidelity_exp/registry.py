"""One registry type for everything a config selects by name: arms, metric families, score
components (lm-evaluation-harness's habit). An unknown name is a `ConfigError` naming the
config key, the value and the known names.

    ARMS = Registry("arm", key="arms")

    @ARMS.register("tabular")
    class Tabular(Arm): ...

    ARMS["tabular"]          # the class
    ARMS.check(["tabular"])  # the names, each known and listed once
"""

from __future__ import annotations

from typing import Callable, Generic, Iterable, Iterator, TypeVar

from fidelity_exp.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str, *, key: str):
        self.what, self.key = what, key   # e.g. "metric family", "metrics.families"
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T | None = None) -> Callable[[T], T] | T:
        """`@registry.register(name)` on a class or function, or `registry.register(name, item)`.
        Registering a name again replaces it (a test or a user may swap in their own)."""
        if item is not None:
            self._items[name] = item
            return item

        def wrap(obj: T) -> T:
            self._items[name] = obj
            return obj

        return wrap

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def __getitem__(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(self.key, name, f"unknown {self.what}; known: {', '.join(self._items) or 'none'}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self):
        return self._items.items()

    def values(self):
        return self._items.values()

    def check(self, names: Iterable[str] | None) -> list[str]:
        """The names in the order given, each known and listed once."""
        names = [str(n) for n in (names or [])]
        for name in names:
            self[name]
        if len(set(names)) != len(names):
            raise ConfigError(self.key, names, f"each {self.what} may be listed once")
        return names
