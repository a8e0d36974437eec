"""The pack-objects cache: identical fetches share one pack (skeleton; being written)."""

from __future__ import annotations

__all__ = ["PackCache"]


class PackCache:
    """Where cached packs live and how much disk they may take."""

    def __init__(self, directory: str, max_bytes: int = 512 * 1024 * 1024) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    def git_options(self) -> tuple[str, ...]:
        return ()
