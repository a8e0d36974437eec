"""The access seam without HTTP or disk: the frozen types, the protocols, the adapters, the gate.

The gate runs against an in-memory lookup, so these tests pin down the
decision logic alone: who is authenticated how often, what a failed login
costs, and which grant a legacy answer turns into.
"""

from __future__ import annotations

import dataclasses

import pytest

from gittornado.access.gate import Gate, OpenAccess, Throttle
from gittornado.access.legacy import CheckAdapter, adapt, call_hook, legacy_access
from gittornado.access.repos import Repository
from gittornado.access.rights import (
    AccessRequest,
    Authenticator,
    Authorizer,
    BadCredentials,
    Credentials,
    Grant,
)
from gittornado.errors import Forbidden, GitAccessError, NotFound, TooManyRequests, Unauthorized
from gittornado.protocol.services import READ, WRITE

REPOS = ("app", "private", "public/lib", "team/app")


class MemoryLookup:
    """Repositories that exist only as names; counts how often each is looked up."""

    def __init__(self, names=REPOS) -> None:
        self.names = set(names)
        self.asked: list[str] = []

    def lookup(self, name: str) -> Repository | None:
        self.asked.append(name)
        return Repository(name, f"/srv/git/{name}.git") if name in self.names else None


class Typed:
    """A policy written against the protocols: ann may do anything, anyone reads public/*."""

    def __init__(self) -> None:
        self.authenticated: list[str] = []
        self.authorized: list[AccessRequest] = []

    async def authenticate(self, credentials: Credentials) -> str:
        self.authenticated.append(credentials.username)
        if (credentials.username, credentials.password) != ("ann", "pw"):
            raise BadCredentials(credentials.username)
        return "ann"

    async def authorize(self, request: AccessRequest) -> Grant:
        self.authorized.append(request)
        if request.user == "ann":
            return Grant(user="ann", read=True, write=True, env={"X_WHO": "ann"})
        return Grant(user=request.user, read=request.repo.startswith("public/"))


class AuthorizeOnly:
    """An ``Authorizer`` without ``authenticate``: it must never be given a password to check."""

    def __init__(self) -> None:
        self.seen: list[AccessRequest] = []

    async def authorize(self, request: AccessRequest) -> Grant:
        self.seen.append(request)
        return Grant(read=True, write=request.credentials is not None, ask_credentials=False)


def req(
    repo: str = "app", operation: str = READ, credentials: Credentials | None = None, **kwargs
) -> AccessRequest:
    kwargs.setdefault("remote_addr", "192.0.2.1")
    return AccessRequest(repo, operation, credentials, **kwargs)


ANN = Credentials("ann", "pw")
WRONG = Credentials("ann", "nope")


async def status(gate: Gate, request: AccessRequest) -> int:
    try:
        await gate.decide(request)
    except GitAccessError as exc:
        return exc.status
    return 200


# -- the frozen types ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, attr",
    [
        (Credentials("ann", "pw"), "password"),
        (AccessRequest("app", READ), "repo"),
        (AccessRequest("app", READ), "user"),
        (Grant(read=True), "write"),
        (Grant(read=True), "user"),
    ],
)
def test_types_are_frozen(value, attr):
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, attr, "x")


def test_password_never_in_repr():
    text = repr(AccessRequest("app", READ, Credentials("ann", "s3cret")))
    assert "ann" in text and "s3cret" not in text


def test_grant_defaults_deny_and_hash_ignores_env():
    grant = Grant()
    assert (grant.user, grant.read, grant.write, grant.ask_credentials) == (None, False, False, True)
    a, b = Grant(read=True, env={"A": "1"}), Grant(read=True, env={"A": "2"})
    assert a == b and hash(a) == hash(b)


def test_native_request_is_not_part_of_the_request_identity():
    a = AccessRequest("app", READ, native_request=object())
    assert a == AccessRequest("app", READ, native_request=object())
    assert hash(a) == hash(AccessRequest("app", READ))


def test_operation_must_be_read_or_write():
    with pytest.raises(ValueError):
        AccessRequest("app", "push")


# -- the protocols and adapt() ---------------------------------------------------------------


def test_protocols_are_checkable():
    assert isinstance(Typed(), Authenticator) and isinstance(Typed(), Authorizer)
    assert isinstance(OpenAccess(), Authorizer) and not isinstance(OpenAccess(), Authenticator)
    assert isinstance(AuthorizeOnly(), Authorizer) and not isinstance(AuthorizeOnly(), Authenticator)
    assert isinstance(CheckAdapter(lambda r: (True, False)), Authorizer)


def test_adapt_uses_typed_objects_as_they_are():
    typed = Typed()
    assert adapt(typed) == (typed, typed)
    only = AuthorizeOnly()
    assert adapt(only) == (None, only)
    open_access = OpenAccess()
    assert adapt(open_access) == (None, open_access)


def test_adapt_wraps_check_objects_and_callables():
    class Check:
        def check(self, request):
            return True, False

    for access in (Check(), lambda request: (True, False)):
        authenticator, authorizer = adapt(access)
        assert authenticator is None
        assert isinstance(authorizer, CheckAdapter) and authorizer.access is access
    authenticator, authorizer = adapt(legacy_access(auth=lambda r: (True, True)))
    assert authenticator is None and isinstance(authorizer, Authorizer)


def test_adapt_refuses_what_it_cannot_call():
    with pytest.raises(TypeError):
        adapt(object())

    class SyncAuthorize:
        def authorize(self, request):
            return Grant(read=True)

    with pytest.raises(TypeError, match="async"):
        adapt(SyncAuthorize())

    class SyncAuthenticate(AuthorizeOnly):
        def authenticate(self, credentials):
            return credentials.username

    with pytest.raises(TypeError, match="async"):
        adapt(SyncAuthenticate())


async def test_call_hook_takes_any_shape():
    class Obj:
        def lookup(self, name):
            return name + "!"

    async def coro(name):
        return name + "?"

    assert await call_hook(Obj(), "lookup", "a") == "a!"
    assert await call_hook(coro, "lookup", "a") == "a?"
    assert await call_hook(lambda name: name, "lookup", "a") == "a"


# -- CheckAdapter: the 0.2 duck-typed access objects -----------------------------------------


class SyncCheck:
    def check(self, request):
        return True, request.repo != "private"


class AsyncCheck:
    async def check(self, request):
        return True, request.repo != "private"


async def async_callable(request):
    return True, request.repo != "private"


@pytest.mark.parametrize(
    "access",
    [SyncCheck(), AsyncCheck(), async_callable, lambda request: (True, request.repo != "private")],
    ids=["sync-check", "async-check", "async-callable", "callable"],
)
async def test_read_write_answer_never_vouches_for_the_sent_name(access):
    adapter = CheckAdapter(access)
    grant = await adapter.authorize(req("app", WRITE, Credentials("root", "anything")))
    assert grant == Grant(user=None, read=True, write=True, ask_credentials=False)
    grant = await adapter.authorize(req("private", WRITE))
    assert grant == Grant(user=None, read=True, write=False, ask_credentials=True)
    # A user the transport verified itself (SSH) is kept.
    grant = await adapter.authorize(req("app", WRITE, user="alice", transport="ssh"))
    assert grant.user == "alice" and grant.ask_credentials is False


async def test_grant_answer_passes_through():
    grant = Grant(user="ann", read=True, rule="mine")
    assert await CheckAdapter(lambda request: grant).authorize(req()) is grant


async def test_other_answers_are_a_clear_error():
    with pytest.raises(TypeError, match="not a Grant"):
        await CheckAdapter(lambda request: True).authorize(req())


async def test_bad_credentials_from_an_adapted_object_count_for_the_throttle():
    calls = []

    def check(request):
        calls.append(request.credentials)
        if request.credentials is not None:
            raise BadCredentials(request.credentials.username)
        return True, False

    gate = Gate(check, MemoryLookup(), throttle=Throttle(limit=3))
    for _ in range(3):
        with pytest.raises(Unauthorized, match="invalid username or password"):
            await gate.decide(req(credentials=WRONG))
    with pytest.raises(TooManyRequests):
        await gate.decide(req(credentials=WRONG))
    assert len(calls) == 3  # blocked before the object was asked again
    assert (await gate.decide(req())).user is None  # anonymous still served
    with pytest.raises(TooManyRequests):
        await gate.readable(list(REPOS), req(credentials=WRONG))


async def test_bad_credentials_from_an_authenticator_count_for_the_throttle():
    policy = Typed()
    gate = Gate(policy, MemoryLookup(), throttle=Throttle(limit=2))
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await gate.decide(req(credentials=WRONG))
    with pytest.raises(TooManyRequests):
        await gate.decide(req(credentials=ANN))
    assert policy.authenticated == ["ann", "ann"]
    assert policy.authorized == []  # never asked for rights on a failed login
    assert (await gate.decide(req(credentials=ANN, remote_addr="192.0.2.2"))).user == "ann"


# -- the gate with a typed policy ------------------------------------------------------------


async def test_typed_policy_decides_every_status():
    gate = Gate(Typed(), MemoryLookup())
    assert await status(gate, req("public/lib")) == 200
    assert await status(gate, req("public/lib", WRITE)) == 401  # anonymous: ask
    assert await status(gate, req("private")) == 401  # exists or not: 401
    assert await status(gate, req("nothere")) == 401
    assert await status(gate, req("private", credentials=WRONG)) == 401
    assert await status(gate, req("private", WRITE, ANN)) == 200
    assert await status(gate, req("nothere", credentials=ANN)) == 404
    assert await status(gate, req("-bad")) == 404


async def test_authenticated_without_rights_is_404_then_403():
    class ReadOnly(Typed):
        async def authorize(self, request):
            return Grant(user=request.user, read=request.repo == "app")

    gate = Gate(ReadOnly(), MemoryLookup())
    assert await status(gate, req("private", credentials=ANN)) == 404
    assert await status(gate, req("app", WRITE, ANN)) == 403


async def test_authorize_sees_the_verified_user_and_the_canonical_name():
    policy = Typed()
    lookup = MemoryLookup()
    original = req("team/app.git", WRITE, ANN)
    session = await Gate(policy, lookup).decide(original)
    (seen,) = policy.authorized
    assert (seen.user, seen.repo, seen.operation) == ("ann", "team/app", WRITE)
    assert (session.user, session.repo.name, session.env) == ("ann", "team/app", {"X_WHO": "ann"})
    assert original.user is None and original.repo == "team/app.git"  # not mutated
    assert lookup.asked == ["team/app"]


async def test_refused_requests_never_look_the_repository_up():
    """Rights first, the disk after: a refusal cannot depend on existence, not even in its timing."""
    lookup = MemoryLookup()
    gate = Gate(Typed(), lookup)
    for repo in ("private", "nothere"):
        with pytest.raises(Unauthorized):
            await gate.decide(req(repo))
    assert lookup.asked == []
    await gate.decide(req("public/lib"))
    assert lookup.asked == ["public/lib"]


async def test_real_name_maps_to_another_repository():
    class Mapped(AuthorizeOnly):
        async def authorize(self, request):
            return Grant(read=True, real_name="team/app", ask_credentials=False)

    session = await Gate(Mapped(), MemoryLookup()).decide(req("alias"))
    assert (session.repo.name, session.repo.path) == ("alias", "/srv/git/team/app.git")


async def test_authorizer_without_authenticator_gets_credentials_unverified():
    policy = AuthorizeOnly()
    gate = Gate(policy, MemoryLookup())
    session = await gate.decide(req("app", WRITE, WRONG))
    assert session.user is None
    assert policy.seen[0].user is None and policy.seen[0].credentials == WRONG


async def test_preauthenticated_user_is_not_authenticated_again():
    policy = Typed()
    session = await Gate(policy, MemoryLookup()).decide(req("app", WRITE, user="ann", transport="ssh"))
    assert session.user == "ann" and policy.authenticated == []


async def test_authenticate_returns_a_new_request():
    gate = Gate(Typed(), MemoryLookup())
    anonymous = req()
    assert await gate.authenticate(anonymous) is anonymous
    sent = req(credentials=ANN)
    done = await gate.authenticate(sent)
    assert done.user == "ann" and sent.user is None and done.credentials == ANN


async def test_an_authenticator_must_name_a_user():
    class Sloppy(Typed):
        async def authenticate(self, credentials):
            return True

    with pytest.raises(TypeError):
        await Gate(Sloppy(), MemoryLookup()).decide(req(credentials=ANN))


# -- readable: the index page ----------------------------------------------------------------


async def test_readable_authenticates_once():
    policy = Typed()
    gate = Gate(policy, MemoryLookup())
    assert await gate.readable(list(REPOS), req(credentials=ANN)) == list(REPOS)
    assert policy.authenticated == ["ann"]
    assert [r.repo for r in policy.authorized] == list(REPOS)
    assert {(r.user, r.operation) for r in policy.authorized} == {("ann", READ)}
    policy.authorized.clear()
    assert await gate.readable(list(REPOS), req(operation=WRITE)) == ["public/lib"]
    assert policy.authenticated == ["ann"]  # anonymous: nothing to authenticate
    with pytest.raises(Unauthorized):
        await gate.readable(list(REPOS), req(credentials=WRONG))
    assert policy.authenticated == ["ann", "ann"]


async def test_readable_with_an_adapted_object():
    gate = Gate(lambda request: (request.repo != "private", False), MemoryLookup())
    assert await gate.readable(list(REPOS), req()) == ["app", "public/lib", "team/app"]


# -- OpenAccess ------------------------------------------------------------------------------


class Refusing:
    """Would fail any password it was asked to check."""

    async def authenticate(self, credentials):
        raise AssertionError("OpenAccess must not authenticate")


@pytest.mark.parametrize("credentials", [None, ANN, WRONG])
async def test_open_access_ignores_credentials(credentials):
    gate = Gate(None, MemoryLookup())
    assert isinstance(gate.access, OpenAccess) and gate.authenticator is None
    session = await gate.decide(req("private", READ, credentials))
    assert session.user is None
    with pytest.raises(Forbidden):
        await gate.decide(req("app", WRITE, credentials))
    with pytest.raises(NotFound):
        await gate.decide(req("nothere", READ, credentials))
    assert await gate.readable(list(REPOS), req(credentials=credentials)) == list(REPOS)


async def test_open_access_grant():
    grant = await OpenAccess().authorize(req("app", WRITE, ANN))
    assert grant == Grant(user=None, read=True, write=False, ask_credentials=False)
    assert OpenAccess().check(req()) == grant


# -- the original GitTornado callables -------------------------------------------------------


async def test_legacy_auth_and_gitlookup(tmp_path):
    native = object()
    seen = []

    def auth(request):
        seen.append(request)
        return True, False

    async def gitlookup(request):
        return str(tmp_path / "somewhere.git")

    grant = await legacy_access(auth, gitlookup).authorize(
        req("app", WRITE, Credentials("root", "x"), native_request=native)
    )
    assert seen == [native]
    assert grant == Grant(
        user=None, read=True, write=False, ask_credentials=False, path=str(tmp_path / "somewhere.git")
    )
    grant = await legacy_access(auth, lambda request: None).authorize(req("app"))
    assert (grant.read, grant.write, grant.ask_credentials) == (False, False, True)
    grant = await legacy_access().authorize(req("app"))
    assert (grant.read, grant.write, grant.ask_credentials) == (True, False, False)
