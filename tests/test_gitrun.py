"""The engine without a transport: ``Engine.start`` -> ``GitRun.answer`` over an in-memory ``Wire``.

Real git on a real repository; only the wire is a list of bytes (dulwich tests
its ``Protocol`` with ``BytesIO`` the same way). Also: two apps built in one
process share nothing, and every one-off git runs under the engine's scrub.
"""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest
from conftest import AllowAll, git
from test_contract import git_wrapper

import gittornado
from gittornado.access.gate import Session
from gittornado.access.repos import Repository
from gittornado.engine.engine import Engine
from gittornado.engine.output import Outcome
from gittornado.engine.slots import GitProcessLimit
from gittornado.errors import PayloadTooLarge, ServiceUnavailable
from gittornado.protocol import pktline
from gittornado.protocol.services import READ, SERVICES, WRITE


class MemoryWire:
    """A wire that keeps what it is sent; ``gone_after`` sends, it behaves like a peer that left."""

    closed_errors = (ConnectionError,)

    def __init__(self, gone_after: int | None = None) -> None:
        self.sent: list[bytes] = []
        self.last = False
        self.gone_after = gone_after

    def send(self, data: bytes, last: bool = False) -> asyncio.Future:
        done = asyncio.get_running_loop().create_future()
        if self.gone_after is not None and len(self.sent) >= self.gone_after:
            done.set_exception(ConnectionError("peer left"))
            return done
        if data:
            self.sent.append(data)
        self.last = self.last or last
        done.set_result(None)
        return done

    def splice_target(self) -> None:
        return None

    @property
    def data(self) -> bytes:
        return b"".join(self.sent)


def _session(gitbase, operation=READ, user="alice") -> Session:
    path = os.path.realpath(gitbase / "app.git")
    return Session(user=user, repo=Repository("app", path), operation=operation, env={})


def _truth(gitbase) -> bytes:
    argv = ["git"]
    for option in Engine().git_options(SERVICES["git-upload-pack"]):
        argv += ["-c", option]
    argv += ["upload-pack", "--stateless-rpc", "--advertise-refs", str(gitbase / "app.git")]
    return subprocess.run(argv, capture_output=True, check=True).stdout


async def test_advertisement_through_a_memory_wire_is_gits_own(gitbase, log_watch):
    engine = Engine()
    run = await engine.start(
        _session(gitbase), SERVICES["git-upload-pack"], transport="test", remote_addr="::1", advertise=True
    )
    assert run in engine.runs
    wire = MemoryWire()
    outcome = await run.answer(wire, preamble=b"PRE")
    assert outcome == Outcome(0)
    assert wire.data == b"PRE" + _truth(gitbase)
    assert run.done and not engine.runs
    audit = [r.getMessage() for r in log_watch.records if r.name == "gittornado.audit"]
    assert audit and "transport=test" in audit[-1] and "result=ok" in audit[-1]


async def test_cache_hit_runs_no_git_and_still_audits(gitbase, log_watch):
    from gittornado.engine.advertcache import AdvertCache

    engine = Engine(advert_cache=AdvertCache(margin=0))
    for _ in range(2):
        run = await engine.start(
            _session(gitbase), SERVICES["git-upload-pack"], transport="test", remote_addr="", advertise=True
        )
        wire = MemoryWire()
        outcome = await run.answer(wire)
        assert wire.data == _truth(gitbase)
    assert outcome.cached and wire.last and not run.started
    assert "result=cached" in [r.getMessage() for r in log_watch.records if r.name == "gittornado.audit"][-1]


async def test_git_dying_mid_answer_ends_with_the_late_error(gitbase, tmp_path):
    dying = git_wrapper(tmp_path, "upload-pack", '"$REAL_GIT" "$@" | { head -c 64; kill -KILL $$; }')
    engine = Engine(git=dying)
    run = await engine.start(
        _session(gitbase), SERVICES["git-upload-pack"], transport="test", remote_addr="", stateless=False
    )
    wire = MemoryWire()
    outcome = await run.answer(wire)
    assert outcome.exit_status == -9 and not outcome.cut_short and not outcome.peer_gone
    packets = pktline.Parser().feed(wire.data)  # whole pkt-lines: the cut packet padded out
    assert packets[-1] == b"ERR git-upload-pack died on the server (see its log)\n"


async def test_input_over_the_cap_is_refused_and_the_push_stopped(gitbase):
    engine = Engine(receive_pack_limit=1000)
    run = await engine.start(
        _session(gitbase, WRITE), SERVICES["git-receive-pack"], transport="test", remote_addr=""
    )
    assert run.input_limit == 1000 and run.started
    with pytest.raises(PayloadTooLarge):
        await run.feed(b"0" * 1001)
    run.close(reason="refused: 413")
    await run.wait()
    assert run.result == "aborted" and not engine.runs


async def test_peer_gone_mid_answer_is_an_outcome_not_an_exception(gitbase):
    engine = Engine()
    run = await engine.start(
        _session(gitbase), SERVICES["git-upload-pack"], transport="test", remote_addr="", advertise=True
    )
    outcome = await run.answer(MemoryWire(gone_after=0))
    assert outcome.peer_gone
    await run.wait()  # it stops in the background; the transport need not wait
    assert run.done and run.result == "aborted" and not engine.runs


async def test_slots_queue_then_refuse_and_are_given_back(gitbase):
    engine = Engine(slots=GitProcessLimit(1, queue=0, timeout=1))
    start = dict(transport="test", remote_addr="", advertise=True)
    first = await engine.start(_session(gitbase), SERVICES["git-upload-pack"], **start)
    with pytest.raises(ServiceUnavailable) as refused:
        await engine.start(_session(gitbase), SERVICES["git-upload-pack"], **start)
    assert refused.value.retry_after
    await first.answer(MemoryWire())
    assert engine.slots.active == 0
    second = await engine.start(_session(gitbase), SERVICES["git-upload-pack"], **start)
    assert (await second.answer(MemoryWire())).exit_status == 0


async def test_ssh_push_cap_is_receive_packs_own():
    engine = Engine(receive_pack_limit=5000)
    options = engine.git_options(SERVICES["git-receive-pack"], wired=True)
    assert "receive.maxInputSize=5000" in options
    assert not any("maxInputSize" in o for o in engine.git_options(SERVICES["git-receive-pack"]))
    assert not any("maxInputSize" in o for o in engine.git_options(SERVICES["git-upload-pack"], wired=True))


def test_two_apps_in_one_process_share_nothing(serve, gitbase, tmp_path):
    first = serve(access=AllowAll(), max_git_processes=2)
    second = serve(max_git_processes=None)
    a, b = first.app, second.app
    assert a.engine is not b.engine and a.gate is not b.gate
    assert a.engine.advert_cache is not b.engine.advert_cache
    assert a.gate.throttle is not b.gate.throttle
    assert a.metrics.registry is not b.metrics.registry
    assert a.engine.slots is not None and b.engine.slots is None
    git("clone", "-q", f"{first.url}/app", str(tmp_path / "c"))

    def runs(app) -> float:
        value = 0.0
        for metric in app.metrics.registry.collect():
            if metric.name == "gittornado_git_runs":
                value += sum(s.value for s in metric.samples if s.name.endswith("_total"))
        return value

    assert runs(a) >= 2 and runs(b) == 0
    assert a.engine.advert_cache.stats()["misses"] >= 1 and b.engine.advert_cache.stats()["misses"] == 0


def test_dumb_listing_ignores_the_servers_git_environment(serve, gitbase, tmp_path, monkeypatch):
    """A server started with GIT_DIR/GIT_NAMESPACE set still lists the repository's own refs."""
    other = tmp_path / "other.git"
    git("init", "-q", "--bare", str(other))
    server = serve()
    monkeypatch.setenv("GIT_DIR", str(other))
    monkeypatch.setenv("GIT_NAMESPACE", "elsewhere")
    proc = git("ls-remote", f"{server.url}/app", env={"GIT_SMART_HTTP": "0"})
    listed = {line.split("\t")[1] for line in proc.stdout.decode().splitlines()}
    assert "refs/heads/main" in listed


def test_public_api_names_the_engine_and_settings():
    assert gittornado.Engine is Engine
    assert gittornado.Settings(gitbase="x").gitbase == "x"
