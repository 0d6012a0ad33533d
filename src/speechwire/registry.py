"""Name -> class registries for the swappable parts (speech encoders and adapters).

    @ADAPTERS.register("cif")
    class CIFAdapter(Adapter): ...

    ADAPTERS.get("cif")   # -> CIFAdapter; an unknown name lists the known ones
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return wrap

    def get(self, name: str) -> T:
        if name not in self._items:
            from speechwire.errors import unknown_name

            raise ValueError(unknown_name(self.kind, name, self.available()))
        return self._items[name]

    def available(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


ENCODERS: Registry = Registry("speech encoder")
ADAPTERS: Registry = Registry("adapter")
