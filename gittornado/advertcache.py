"""The advertisement cache: ref advertisements from memory (skeleton; being written)."""

from __future__ import annotations

__all__ = ["AdvertCache"]


class AdvertCache:
    """Answers of ``info/refs`` and v2 ``ls-refs`` per repository, bounded in bytes."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
