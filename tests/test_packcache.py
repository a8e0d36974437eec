"""The pack-objects cache: real git clones through a real server, and the hook on its own.

pack-objects runs are counted honestly, from git's own trace: every git process the
server starts inherits ``GIT_TRACE2`` and logs ``cmd_name pack-objects`` when it is one
(whether the hook ran it or upload-pack did).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time

import pytest
from conftest import git, rev, wait_for

from gittornado.engine import packcache, packhook, packkey
from gittornado.engine.packcache import PackCache
from gittornado.engine.packkey import (
    FOOTER_SIZE,
    cache_key,
    choose_evictions,
    config_without_hook,
    key_material,
)

HOOK = packhook.__file__


@pytest.fixture
def trace(tmp_path, monkeypatch):
    """``trace()`` -> how many pack-objects processes ran since the fixture started."""
    path = tmp_path / "trace2.log"
    monkeypatch.setenv("GIT_TRACE2", str(path))

    def count() -> int:
        if not path.exists():
            return 0
        return path.read_text(errors="replace").count(" cmd_name pack-objects ")

    return count


@pytest.fixture
def cache(tmp_path):
    # Spaces and a quote in the path: the hook command must be shell-quoted.
    return PackCache(str(tmp_path / "pack cache's dir"), max_bytes=64 * 1024 * 1024)


def clone(server, name, dest, *options, version=2, check=True):
    return git(
        "-c",
        f"protocol.version={version}",
        "clone",
        "-q",
        "--no-checkout",
        *options,
        f"{server.url}/{name}",
        str(dest),
        check=check,
    )


def fsck(repo):
    git("fsck", "--strict", "--no-dangling", cwd=repo)


def entries(cache):
    return sorted(n for n in os.listdir(cache.directory) if n.endswith(".pack"))


# -- pure functions, byte for byte -------------------------------------------------------------


def test_key_material_byte_for_byte():
    material = key_material(
        "/srv/app.git",
        b"3:1.2,",
        ["git", "pack-objects", "--revs", "--progress", "--stdout"],
        {
            "GIT_CONFIG_PARAMETERS": "'a'='b'",
            "GIT_PROTOCOL": "version=2",
            "GIT_COMMITTER_NAME": "bob",
            "X": "1",
        },
        b"abc\n--not\n\n",
    )
    assert material == (
        b"22:gittornado-packcache-1,"
        b"12:/srv/app.git,"
        b"6:3:1.2,,"
        b"42:3:git,12:pack-objects,6:--revs,8:--stdout,,"
        b"33:29:GIT_CONFIG_PARAMETERS='a'='b',,"
        b"11:abc\n--not\n\n,"
    )
    key = cache_key("/srv/app.git", b"", ["git", "pack-objects"], {}, b"x\n")
    assert len(key) == 64 and int(key, 16) >= 0


def test_key_separates_what_changes_the_pack_and_nothing_else():
    base = ("/srv/app.git", b"s", ["git", "pack-objects", "--revs"], {}, b"a\n--not\n\n")
    key = cache_key(*base)

    def variant(i, value):
        args = list(base)
        args[i] = value
        return cache_key(*args)

    assert variant(0, "/srv/other.git") != key  # another repository
    assert variant(1, b"t") != key  # the same path, another repository (inode) or tag set
    assert variant(2, ["git", "pack-objects", "--revs", "--filter=blob:none"]) != key
    assert variant(2, ["git", "--shallow-file", "", "pack-objects", "--revs"]) != key
    assert variant(4, b"b\n--not\n\n") != key  # other wants
    assert variant(3, {"GIT_NAMESPACE": "x"}) != key
    # Progress, the protocol version and who asks change no byte of the pack.
    assert variant(2, ["git", "pack-objects", "--revs", "--progress"]) == key
    assert variant(3, {"GIT_PROTOCOL": "version=2", "GIT_COMMITTER_NAME": "alice"}) == key


def test_the_hooks_own_setting_is_not_in_the_key():
    """Servers sharing a directory (HTTP, gittornado-shell) share keys whatever their sizes."""
    hook = "'uploadpack.packObjectsHook'='/usr/bin/python3 -I -S '\\''/a b/packhook.py'\\'' 5'"
    params = f"'uploadpack.allowFilter'='true' {hook} 'pack.window'='10'"
    assert config_without_hook(params) == "'uploadpack.allowFilter'='true' 'pack.window'='10'"
    assert config_without_hook("'uploadpack.packobjectshook=x y' 'a.b=c'") == "'a.b=c'"
    assert config_without_hook(hook) == ""
    base = ("/r.git", b"", ["git", "pack-objects"], {}, b"a\n")
    one = cache_key(*base[:3], {"GIT_CONFIG_PARAMETERS": params}, base[4])
    two = cache_key(*base[:3], {"GIT_CONFIG_PARAMETERS": params.replace(" 5'", " 7'")}, base[4])
    assert one == two
    count = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "uploadpack.packObjectsHook"}
    assert cache_key(*base[:3], {**count, "GIT_CONFIG_VALUE_0": "a"}, base[4]) == cache_key(
        *base[:3], {**count, "GIT_CONFIG_VALUE_0": "b"}, base[4]
    )


def test_footer_round_trip_and_what_is_not_an_entry():
    assert packkey.footer(5) == b"GTPACK\x00\x01" + b"\x00" * 7 + b"\x05"
    assert FOOTER_SIZE == 16
    assert packkey.parse_footer(packkey.footer(5), 21) == 5
    assert packkey.parse_footer(packkey.footer(5), 20) is None  # truncated
    assert packkey.parse_footer(packkey.footer(5), 22) is None  # appended to
    assert packkey.parse_footer(b"PACK" + b"\x00" * 12, 16) is None  # no magic
    assert packkey.parse_footer(b"", 3) is None


def test_choose_evictions_least_recently_used_first():
    packs = [(30, 10, "c"), (10, 10, "a"), (20, 10, "b")]
    assert choose_evictions(packs, 30) == []
    assert choose_evictions(packs, 29) == ["a"]
    assert choose_evictions(packs, 10) == ["a", "b"]
    assert choose_evictions(packs, 0) == ["a", "b", "c"]
    assert choose_evictions([], 0) == []


def hook_argv(directory, max_bytes=1 << 30):
    """The hook's command line, as the cache hands it to git (and git to the shell)."""
    (option,) = PackCache(str(directory), max_bytes=max_bytes).git_options()
    name, command = option.split("=", 1)
    assert name == "uploadpack.packObjectsHook"
    return shlex.split(command)


def test_git_options_run_the_hook_through_the_shell(cache):
    argv = hook_argv(cache.directory, 64 * 1024 * 1024)
    assert argv[:4] == [sys.executable, "-I", "-S", "-c"]
    assert repr(os.path.dirname(HOOK)) in argv[4]
    assert argv[5:] == [cache.directory, str(64 * 1024 * 1024)]
    assert os.path.isdir(cache.directory) and cache.usage() == (0, 0)
    # The file runs as a script too.
    script = subprocess.run([sys.executable, "-I", "-S", HOOK], capture_output=True)
    assert script.returncode == 128 and script.stderr.startswith(b"pack cache: usage")


def test_hook_imports_only_built_in_modules(tmp_path):
    """Start-up is paid by every fetch: no OpenSSL, subprocess, threading, tornado or package."""
    argv = hook_argv(tmp_path / "c")
    proc = subprocess.run([*argv[:3], "-X", "importtime", *argv[3:5]], capture_output=True)
    assert proc.returncode == 128 and b"usage" in proc.stderr
    lines = [line for line in proc.stderr.decode().splitlines() if line.startswith("import time:")]
    imported = {line.split("|")[-1].strip() for line in lines[1:]}  # lines[0]: the header
    assert {"packhook", "packkey"} <= imported  # both top-level, next to each other
    for heavy in ("hashlib", "subprocess", "threading", "tornado", "gittornado", "shlex", "packcache"):
        assert heavy not in imported
    # Nothing but the standard library (``_sha2`` is, from 3.12) and the hook's two modules.
    others = {name.split(".")[0] for name in imported} - set(sys.stdlib_module_names)
    assert others <= {"packhook", "packkey", "_sha2"}


def test_the_hook_and_the_server_share_one_packkey():
    """In the package, packhook's ``packkey`` is the package's: not a second, top-level copy."""
    assert packhook.packkey is packkey and packcache.packkey is packkey
    assert os.path.dirname(packkey.__file__) == os.path.dirname(HOOK)


def test_a_stub_of_a_server_started_before_packhook_still_runs(tmp_path):
    """Older servers' stubs import the top-level ``packcache``, which brings the hook along."""
    stub = packcache._STUB.replace("packhook", "packcache") % os.path.dirname(HOOK)
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", stub], capture_output=True)
    assert proc.returncode == 128 and proc.stderr.startswith(b"pack cache: usage")


def test_trim_evicts_oldest_and_removes_only_dead_writers_files(tmp_path):
    directory = tmp_path / "c"
    directory.mkdir()
    now = time.time()
    for i, name in enumerate(["old.pack", "mid.pack", "new.pack"]):
        (directory / name).write_bytes(b"x" * 100)
        os.utime(directory / name, (now - 300 + i * 100, now - 300 + i * 100))
    for name, age in [("dead.part", 120), ("young.part", 1), ("busy.part", 120)]:
        (directory / name).write_bytes(b"p")
        os.utime(directory / name, (now - age, now - age))
    import fcntl

    with open(directory / "busy.part", "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        packkey.trim(str(directory), 250)
    assert sorted(os.listdir(directory)) == ["busy.part", "mid.pack", "new.pack", "young.part"]


def test_repo_state_follows_tags_not_branches(tmp_path, fixture_repo):
    repo = tmp_path / "r.git"
    git("clone", "-q", "--bare", str(fixture_repo), str(repo))
    before = packkey.repo_state(str(repo), True)
    assert packkey.repo_state(str(repo), True) == before
    git("update-ref", "refs/heads/other", "main", cwd=repo)
    assert packkey.repo_state(str(repo), True) == before  # a branch: the wants say it
    time.sleep(0.01)
    git("tag", "-a", "-m", "t", "v2", "main", cwd=repo)
    tagged = packkey.repo_state(str(repo), True)
    assert tagged != before
    assert packkey.repo_state(str(repo), False) == packkey.repo_state(str(repo), False)
    git("pack-refs", "--all", cwd=repo)
    assert packkey.repo_state(str(repo), True) != tagged


# -- the hook on its own: followers, failures ----------------------------------------------------


def run_hook(directory, command, stdin=b"wants\n", cwd=None, max_bytes=1 << 30):
    """Start the hook as upload-pack would, its stdin (the object list) already written and closed."""
    r, w = os.pipe()
    os.write(w, stdin)
    os.close(w)
    try:
        return subprocess.Popen(
            [*hook_argv(directory, max_bytes), *command],
            stdin=r,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
        )
    finally:
        os.close(r)


def writing(directory, at_least=1):
    """Whether an entry is being written (its ``.part`` holds ``at_least`` bytes)."""
    return any(
        n.endswith(".part") and os.path.getsize(os.path.join(directory, n)) >= at_least
        for n in os.listdir(directory)
    )


def slow_writer(count_file, chunks=20, fail=False):
    """A stand-in for pack-objects: counts its runs, writes slowly (random bytes), maybe fails."""
    code = (
        "import os,sys,time\n"
        f"open({str(count_file)!r},'a').write('run\\n')\n"
        "sys.stdin.buffer.read()\n"
        f"for i in range({chunks}):\n"
        "    os.write(1, os.urandom(50000)); time.sleep(0.01)\n"
        f"sys.exit({3 if fail else 0})\n"
    )
    return [sys.executable, "-c", code]


def test_followers_share_one_run_byte_for_byte(tmp_path):
    directory = tmp_path / "c"
    directory.mkdir()
    count = tmp_path / "count"
    hooks = [run_hook(directory, slow_writer(count), cwd=tmp_path)]
    wait_for(lambda: writing(directory), message="the writer to be mid-pack")
    hooks += [run_hook(directory, slow_writer(count), cwd=tmp_path) for _ in range(4)]
    outs = [h.communicate(timeout=20) for h in hooks]
    assert [h.returncode for h in hooks] == [0] * 5, [o[1] for o in outs]
    assert count.read_text() == "run\n"
    assert len(outs[0][0]) == 20 * 50000 and all(o[0] == outs[0][0] for o in outs)
    assert all(o[1] == b"" for o in outs)  # quiet on normal paths
    (entry,) = [n for n in os.listdir(directory) if n.endswith(".pack")]
    assert (directory / entry).read_bytes()[:-FOOTER_SIZE] == outs[0][0]
    again = run_hook(directory, slow_writer(count), cwd=tmp_path)
    assert again.communicate(timeout=20)[0] == outs[0][0]
    assert count.read_text() == "run\n"


def test_a_writer_whose_client_left_finishes_the_entry_for_its_followers(tmp_path):
    """The server stops upload-pack's process group when a client leaves: the writer keeps filling."""
    directory = tmp_path / "c"
    directory.mkdir()
    count = tmp_path / "count"
    writer = run_hook(directory, slow_writer(count, chunks=30), cwd=tmp_path)
    wait_for(lambda: writing(directory), message="the writer to be mid-pack")
    follower = run_hook(directory, slow_writer(count, chunks=30), cwd=tmp_path)
    writer.stdout.close()  # its client is gone...
    writer.send_signal(15)  # ...and the server signals the group
    out, err = follower.communicate(timeout=20)
    writer.wait(20)
    assert follower.returncode == 0 and err == b"" and len(out) == 30 * 50000
    assert count.read_text() == "run\n"
    again = run_hook(directory, slow_writer(count, chunks=30), cwd=tmp_path)
    assert again.communicate(timeout=20)[0] == out and count.read_text() == "run\n"


def test_a_failed_writer_leaves_nothing_and_its_status(tmp_path):
    directory = tmp_path / "c"
    directory.mkdir()
    count = tmp_path / "count"
    hook = run_hook(directory, slow_writer(count, chunks=3, fail=True), cwd=tmp_path)
    hook.communicate(timeout=20)
    assert hook.returncode == 3
    assert os.listdir(directory) == []


def test_follower_of_a_writer_that_fails_mid_pack_says_so(tmp_path):
    """Packs differ from run to run: a follower that sent bytes cannot switch, it fails clearly."""
    directory = tmp_path / "c"
    directory.mkdir()
    count = tmp_path / "count"
    writer = run_hook(directory, slow_writer(count, chunks=30, fail=True), cwd=tmp_path)
    wait_for(lambda: writing(directory), message="the writer to be mid-pack")
    follower = run_hook(directory, slow_writer(count, chunks=30, fail=True), cwd=tmp_path)
    out, err = follower.communicate(timeout=20)
    writer.communicate(timeout=20)
    assert writer.returncode == 3 and follower.returncode == 1
    assert out and err == b"pack cache: the pack being shared was cut short; please fetch again\n"
    assert count.read_text() == "run\n" and os.listdir(directory) == []


def test_follower_of_a_writer_that_fails_before_sending(tmp_path):
    """The follower had sent nothing: it runs pack-objects itself rather than fail."""
    directory = tmp_path / "c"
    directory.mkdir()
    count = tmp_path / "count"
    # Fails before writing a byte, slowly enough for the follower to find it writing.
    code = f"import sys,time; open({str(count)!r},'a').write('x\\n'); time.sleep(0.3); sys.exit(5)"
    failing = [sys.executable, "-c", code]
    writer = run_hook(directory, failing, cwd=tmp_path)
    wait_for(lambda: writing(directory, 0), message="the writer to start")
    follower = run_hook(directory, failing, cwd=tmp_path)
    writer.communicate(timeout=20)
    follower.communicate(timeout=20)
    assert writer.returncode == 5 and follower.returncode == 5
    assert count.read_text() == "x\nx\n"  # the follower ran it again itself
    assert os.listdir(directory) == []


# -- real clones through a real server -------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 2])
def test_identical_clones_hit(serve, cache, tmp_path, trace, version, gitbase):
    server = serve(pack_cache=cache)
    clone(server, "app", tmp_path / "one", version=version)
    assert trace() == 1 and cache.usage()[0] == 1
    for i in range(2):
        clone(server, "app", tmp_path / f"hit{i}", version=version)
    assert trace() == 1, "identical clones ran pack-objects again"
    for name in ("one", "hit0", "hit1"):
        fsck(tmp_path / name)
        assert rev(tmp_path / name, "main") == rev(gitbase / "app.git", "main")


def test_different_wants_miss(serve, cache, tmp_path, trace):
    server = serve(pack_cache=cache)
    clone(server, "app", tmp_path / "main", "--single-branch", "--branch", "main", "--no-tags")
    clone(server, "app", tmp_path / "feature", "--single-branch", "--branch", "feature", "--no-tags")
    assert trace() == 2 and cache.usage()[0] == 2
    clone(server, "app", tmp_path / "feature2", "--single-branch", "--branch", "feature", "--no-tags")
    assert trace() == 2
    for name in ("main", "feature", "feature2"):
        fsck(tmp_path / name)


def test_shallow_and_partial_clones_are_keyed_apart(serve, cache, tmp_path, trace):
    server = serve(pack_cache=cache)
    kinds = {"full": [], "shallow": ["--depth", "1"], "partial": ["--filter=blob:none"]}
    for name, options in kinds.items():
        clone(server, "app", tmp_path / name, *options)
    assert trace() == 3 and cache.usage()[0] == 3
    for name, options in kinds.items():
        clone(server, "app", tmp_path / f"{name}-again", *options)
        fsck(tmp_path / f"{name}-again")
    assert trace() == 3
    assert git("rev-list", "--count", "HEAD", cwd=tmp_path / "shallow-again").stdout.strip() == b"1"
    missing = git("rev-list", "--objects", "--missing=print", "HEAD", cwd=tmp_path / "partial-again").stdout
    assert b"\n?" in b"\n" + missing, "the partial clone got blobs: it was served the full pack"
    assert (
        b"\n?"
        not in b"\n"
        + git("rev-list", "--objects", "--missing=print", "HEAD", cwd=tmp_path / "full-again").stdout
    )


def test_two_repositories_with_the_same_content_are_keyed_apart(serve, cache, tmp_path, trace, gitbase):
    server = serve(pack_cache=cache)
    assert rev(gitbase / "app.git", "main") == rev(gitbase / "private.git", "main")
    clone(server, "app", tmp_path / "a")
    clone(server, "private", tmp_path / "b")
    assert trace() == 2 and cache.usage()[0] == 2


def _big_repo(gitbase, tmp_path, mib):
    work = tmp_path / "big"
    git("clone", "-q", str(gitbase / "app.git"), str(work))
    (work / "big.bin").write_bytes(os.urandom(mib * 1024 * 1024))
    git("add", "big.bin", cwd=work)
    git("commit", "-qm", "big", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)


def test_concurrent_identical_clones_run_pack_objects_once(serve, cache, tmp_path, trace, gitbase):
    _big_repo(gitbase, tmp_path, mib=6)
    server = serve(pack_cache=cache)
    pushed = trace()  # the push that made the repository ran one
    start = threading.Barrier(6)
    results = {}

    def one(i):
        start.wait()
        results[i] = clone(server, "app", tmp_path / f"c{i}", check=False)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [results[i].returncode for i in range(6)] == [0] * 6, [results[i].stderr for i in range(6)]
    assert trace() == pushed + 1, "concurrent identical clones ran pack-objects more than once"
    for i in range(6):
        git("fsck", "--no-dangling", cwd=tmp_path / f"c{i}")
        assert rev(tmp_path / f"c{i}", "main") == rev(gitbase / "app.git", "main")
    assert cache.usage()[0] == 1


def test_a_truncated_entry_or_a_crashed_writers_file_is_never_served(serve, cache, tmp_path, trace):
    server = serve(pack_cache=cache)
    clone(server, "app", tmp_path / "first")
    (entry,) = entries(cache)
    path = os.path.join(cache.directory, entry)
    good = open(path, "rb").read()
    os.truncate(path, len(good) - 1)
    clone(server, "app", tmp_path / "after-truncation")
    fsck(tmp_path / "after-truncation")
    assert trace() == 2 and open(path, "rb").read()[-FOOTER_SIZE:] == good[-FOOTER_SIZE:]
    # A writer killed before it finished leaves an unlocked .part: never served, replaced.
    os.rename(path, path[: -len(".pack")] + ".part")
    os.truncate(path[: -len(".pack")] + ".part", len(good) // 2)
    clone(server, "app", tmp_path / "after-crash")
    fsck(tmp_path / "after-crash")
    assert trace() == 3 and entries(cache) == [entry]
    assert not [n for n in os.listdir(cache.directory) if n.endswith(".part")]


def test_size_bound_evicts_the_least_recently_used(serve, tmp_path, trace):
    probe = PackCache(str(tmp_path / "probe"), max_bytes=1 << 30)
    server = serve(pack_cache=probe)
    opts = {b: ["--single-branch", "--branch", b, "--no-tags"] for b in ("main", "feature")}
    for b, o in opts.items():
        clone(server, "app", tmp_path / f"probe-{b}", *o)
    sizes = [os.path.getsize(os.path.join(probe.directory, n)) for n in entries(probe)]
    # Room for either entry alone, not both.
    small = PackCache(str(tmp_path / "small"), max_bytes=max(sizes) + 1)
    server = serve(pack_cache=small)
    runs = trace()
    clone(server, "app", tmp_path / "main", *opts["main"])
    time.sleep(0.01)
    clone(server, "app", tmp_path / "feature", *opts["feature"])
    assert small.usage()[0] == 1 and trace() == runs + 2
    clone(server, "app", tmp_path / "feature2", *opts["feature"])  # the newest stayed
    assert trace() == runs + 2
    clone(server, "app", tmp_path / "main2", *opts["main"])  # the oldest went
    assert trace() == runs + 3
    fsck(tmp_path / "main2")
    # An entry larger than the whole cache is served, not kept.
    none = PackCache(str(tmp_path / "none"), max_bytes=0)
    server = serve(pack_cache=none)
    clone(server, "app", tmp_path / "uncached")
    fsck(tmp_path / "uncached")
    assert none.usage() == (0, 0) and os.listdir(none.directory) == []


def test_servers_of_other_sizes_share_a_directory(serve, tmp_path, trace):
    directory = str(tmp_path / "shared")
    clone(serve(pack_cache=PackCache(directory, max_bytes=10**9)), "app", tmp_path / "a")
    clone(serve(pack_cache=PackCache(directory, max_bytes=10**8)), "app", tmp_path / "b")
    assert trace() == 1


def test_an_unusable_cache_directory_degrades_to_plain_pack_objects(serve, cache, tmp_path, trace):
    server = serve(pack_cache=cache)
    os.rmdir(cache.directory)
    with open(cache.directory, "w") as fh:  # root ignores modes: a file where the directory was
        fh.write("not a directory")
    proc = clone(server, "app", tmp_path / "plain", "--progress")
    fsck(tmp_path / "plain")
    assert trace() == 1
    said = [line.strip() for line in proc.stderr.splitlines() if line.startswith(b"remote: pack cache:")]
    assert said == [b"remote: pack cache: off for this fetch (Not a directory)"]
    assert cache.directory.encode() not in proc.stderr  # no server path shown to clients


def test_gittornado_shell_shares_the_cache(gitbase, tmp_path, trace):
    """``gittornado-shell --pack-cache-dir``: SSH fetches use (and share) the same cache."""
    cache_dir = tmp_path / "ssh cache"
    fake_ssh = tmp_path / "fake-ssh"
    # This checkout's shell, not an installed copy's.
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(packcache.__file__))))
    python = shlex.quote(sys.executable)
    shell = f"env PYTHONPATH={shlex.quote(checkout)} {python} -m gittornado.server.shell"
    fake_ssh.write_text(
        "#!/bin/sh\nfor last; do :; done\n"  # git runs: fake-ssh HOST COMMAND
        f'SSH_ORIGINAL_COMMAND="$last" SSH_CONNECTION="127.0.0.1 1 127.0.0.1 22" exec {shell} '
        f"--gitbase {shlex.quote(str(gitbase))} --pack-cache-dir {shlex.quote(str(cache_dir))} "
        f"--log-file {shlex.quote(str(tmp_path / 'shell.log'))} alice\n"
    )
    fake_ssh.chmod(0o755)
    env = {"GIT_SSH_COMMAND": str(fake_ssh)}
    for name in ("one", "two"):
        git(
            "-c",
            "ssh.variant=simple",
            "clone",
            "-q",
            "--bare",
            "ssh://host/app.git",
            str(tmp_path / name),
            env=env,
        )
        fsck(tmp_path / name)
    assert trace() == 1
    assert PackCache(str(cache_dir)).usage()[0] == 1


def test_a_client_leaving_mid_clone_still_fills_the_cache(serve, cache, tmp_path, trace, gitbase):
    import http.client
    import socket

    from conftest import git_processes

    from gittornado.protocol import pktline

    _big_repo(gitbase, tmp_path, mib=8)
    server = serve(pack_cache=cache)
    runs = trace()
    body = (
        pktline.encode(b"command=fetch\n")
        + pktline.DELIM
        + pktline.encode(f"want {rev(gitbase / 'app.git', 'main')}\n".encode())
        + pktline.encode(b"done\n")
        + pktline.FLUSH
    )
    head = (
        "POST /app/git-upload-pack HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/x-git-upload-pack-request\r\n"
        f"Git-Protocol: version=2\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(head.encode() + body)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    wait_for(lambda: cache.usage()[0] == 1, message="the entry to be finished")
    wait_for(lambda: not git_processes(str(gitbase / "app.git")), message="upload-pack to exit")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request(
        "POST",
        "/app/git-upload-pack",
        body=body,
        headers=dict(h.split(": ", 1) for h in head.split("\r\n")[2:4]),
    )
    answer = conn.getresponse().read()
    conn.close()
    assert b"packfile\n" in answer and len(answer) > 8 * 1024 * 1024
    assert trace() == runs + 1
