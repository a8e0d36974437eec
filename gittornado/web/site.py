"""The site around the git URLs: the index page, and with ``--web`` the code browser.

``make_fallback`` composes the two WSGI apps ``make_app`` serves as its
fallback. It lives apart from ``web.wsgi`` (the container and the access
seam both apps import), so that neither app is imported by the module they
import. The apps are imported on use, not for the import of this module: the
browser's module loads klaus and flask, which a server without ``--web``
never needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["make_fallback"]


def make_fallback(
    gate: Any,
    lookup: Any,
    *,
    prefix: str = "",
    realm: str = "gittornado",
    index: bool = True,
    web: bool = False,
    ssh_url: str | None = None,
    git: str = "git",
) -> Callable | None:
    """The fallback ``make_app`` builds: the index page, and with ``web`` the code browser too.

    Raises ``ValueError`` (with the ``pip install`` line) when ``web`` is asked
    for and klaus is not installed, so the server fails at start, not per request.
    """
    index_app = None
    if index:
        if not hasattr(lookup, "names"):
            raise ValueError("the index page needs a lookup with names(); pass index=False")
        from .index import IndexApp

        index_app = IndexApp(
            gate, lookup.names, prefix=prefix, realm=realm, ssh_url=ssh_url, browse=web, git=git
        )
    if not web:
        return index_app
    from .browse import BrowseApp

    return BrowseApp(gate, index=index_app, prefix=prefix, realm=realm)
