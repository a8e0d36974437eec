"""Dumb HTTP (``gitprotocol-http``, "Dumb Clients"): exactly the files a dumb client needs.

Nothing else in a repository (``config``, ``hooks/``, ``description``) is ever
served. ``info/refs`` and ``objects/info/packs`` are generated from the live
repository, as ``git http-backend`` does, so a repository where
``git update-server-info`` never ran still works.
"""

from __future__ import annotations

import email.utils
import os
import re
import time

import tornado.web
from tornado.iostream import StreamClosedError

from ..access.gate import Session
from ..engine.engine import Engine
from ..engine.pipes import CHUNK_SIZE
from ..protocol.services import READ
from .httpbase import NO_CACHE, GitHandler

__all__ = ["FileHandler", "DUMB_FILES", "send_info_refs"]

#: The files a dumb client may fetch, relative to the git directory, with their
#: content type and whether they are immutable (cacheable for a year).
#: Anchored with \Z: anything else, including every other file, is a 404.
DUMB_FILES: list[tuple[re.Pattern, str, bool]] = [
    (re.compile(r"HEAD\Z"), "text/plain", False),
    (re.compile(r"objects/info/(?:alternates|http-alternates)\Z"), "text/plain", False),
    (re.compile(r"objects/info/packs\Z"), "text/plain; charset=utf-8", False),
    (
        re.compile(r"objects/[0-9a-f]{2}/(?:[0-9a-f]{38}|[0-9a-f]{62})\Z"),
        "application/x-git-loose-object",
        True,
    ),
    (
        re.compile(r"objects/pack/pack-(?:[0-9a-f]{40}|[0-9a-f]{64})\.pack\Z"),
        "application/x-git-packed-objects",
        True,
    ),
    (
        re.compile(r"objects/pack/pack-(?:[0-9a-f]{40}|[0-9a-f]{64})\.idx\Z"),
        "application/x-git-packed-objects-toc",
        True,
    ),
]

#: ``update-server-info``'s ``info/refs`` format: each ref, then its peeled object for tags.
_FOR_EACH_REF_FORMAT = (
    "%(objectname)%09%(refname)%(if)%(*objectname)%(then)%0a%(*objectname)%09%(refname)^{}%(end)"
)


def _set_cache(handler: tornado.web.RequestHandler, immutable: bool) -> None:
    if immutable:
        now = time.time()
        handler.set_header("Date", email.utils.formatdate(now, usegmt=True))
        handler.set_header("Expires", email.utils.formatdate(now + 31536000, usegmt=True))
        handler.set_header("Cache-Control", "public, max-age=31536000, immutable")
    else:
        for k, v in NO_CACHE.items():
            handler.set_header(k, v)


async def send_info_refs(handler: tornado.web.RequestHandler, session: Session, engine: Engine) -> None:
    """The dumb ``info/refs``, generated from the repository's refs (like http-backend)."""
    out = await engine.query(["for-each-ref", f"--format={_FOR_EACH_REF_FORMAT}", "refs/"], session.repo.path)
    handler.set_header("Content-Type", "text/plain; charset=utf-8")
    _set_cache(handler, immutable=False)
    handler.finish(out)


def _packs_listing(repo_path: str) -> bytes:
    pack_dir = os.path.join(repo_path, "objects", "pack")
    try:
        names = sorted(n for n in os.listdir(pack_dir) if re.match(r"pack-[0-9a-f]+\.pack\Z", n))
    except OSError:
        names = []
    return b"".join(b"P %s\n" % n.encode() for n in names) + b"\n"


class FileHandler(GitHandler):
    """``GET``/``HEAD`` of ``HEAD``, ``objects/info/*``, loose objects, packs and idx files."""

    async def get(self, repo: str, path: str) -> None:
        entry = next(((ct, imm) for rx, ct, imm in DUMB_FILES if rx.match(path)), None)
        if entry is None:
            raise tornado.web.HTTPError(404)
        session = await self.decide(repo, READ)
        content_type, immutable = entry
        if path == "objects/info/packs":
            self.set_header("Content-Type", content_type)
            _set_cache(self, immutable=False)
            self.finish(_packs_listing(session.repo.path))
            return
        full = os.path.realpath(os.path.join(session.repo.path, *path.split("/")))
        if not full.startswith(os.path.realpath(session.repo.path) + os.sep):
            # A symlink inside the repository pointing elsewhere is never followed out.
            raise tornado.web.HTTPError(404)
        try:
            fh = open(full, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise tornado.web.HTTPError(404) from None
        with fh:
            st = os.fstat(fh.fileno())
            self.set_header("Content-Type", content_type)
            self.set_header("Content-Length", str(st.st_size))
            self.set_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
            _set_cache(self, immutable)
            if self.request.method == "HEAD":
                return
            try:
                while chunk := fh.read(CHUNK_SIZE):
                    self.write(chunk)
                    await self.flush()
            except StreamClosedError:
                return

    head = get
