"""The store's one exception."""

from __future__ import annotations


class StoreError(Exception):
    """The store cannot do what was asked; the message names the object (never its
    content), the rule and the fix. ``object_id`` is set when one object is at fault."""

    def __init__(self, message: str, *, object_id: str | None = None) -> None:
        super().__init__(message)
        self.object_id = object_id
