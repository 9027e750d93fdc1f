"""The base of every closed set of names (backends, devices, check and cell statuses, push outcomes)."""

from __future__ import annotations

import enum


class Choice(str, enum.Enum):
    """A name from a closed set: compares, formats and serialises as its text, so JSON and messages keep it."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The values, in declaration order, for choices= and messages."""
        return tuple(member.value for member in cls)
