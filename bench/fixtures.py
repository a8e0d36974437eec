"""The test data: a generated, fully repacked bare repository (cached) and random push payloads."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time

from bench.common import Env, MiB, log

#: Bump when the generated repository's recipe changes (invalidates the cache).
REPO_RECIPE = 1

_WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
    "sigma tau upsilon phi chi psi omega request response handler stream chunk buffer socket "
    "repository commit object blob tree tag branch merge rebase fetch push clone pack index "
    "delta window depth server client tornado async await yield return raise except finally "
    "self value result error status header body length offset size limit count total"
).split()


def _text_line(rng: random.Random) -> str:
    indent = "    " * rng.randint(0, 3)
    return indent + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))) + "\n"


def generate_repo(env: Env, path: str, size_mib: int, commits: int, seed: int = 1) -> None:
    """A bare repo of ~``size_mib`` MiB packed: random blobs plus an evolving text tree."""
    rng = random.Random(seed)
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    env.git("init", "-q", "--bare", "--initial-branch=main", tmp)
    # Random blobs never delta against each other: do not make repack -f try (generation
    # speed only; the attribute file is removed again before the repository is used).
    with open(os.path.join(tmp, "info", "attributes"), "w") as fh:
        fh.write("*.bin -delta\n")

    text_budget = max(1, size_mib // 40) * MiB  # ~2.5% text (as packed, it shrinks a lot)
    bin_budget = size_mib * MiB - text_budget
    # Blob sizes: log-uniform 8 KiB .. 4 MiB, scaled to the budget.
    sizes = []
    while sum(sizes) < bin_budget:
        sizes.append(int(2 ** rng.uniform(13, 22)))
    per_commit: list[list[int]] = [[] for _ in range(commits)]
    for s in sizes:
        per_commit[rng.randrange(commits)].append(s)

    n_text = 24
    text_files = {
        f"src/module_{i:02d}.py": [_text_line(rng) for _ in range(rng.randint(400, 1600))]
        for i in range(n_text)
    }
    bin_paths: list[str] = []

    proc = subprocess.Popen(
        ["git", "fast-import", "--quiet", "--done"],
        cwd=tmp,
        env=env.env,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    w = proc.stdin.write
    t0 = 1_600_000_000
    try:
        for c in range(commits):
            msg = f"commit {c}: update {len(per_commit[c])} data files\n".encode()
            when = t0 + c * 3600
            w(b"commit refs/heads/main\n")
            w(f"author Bench Author <author@example.invalid> {when} +0000\n".encode())
            w(f"committer Bench Committer <committer@example.invalid> {when} +0000\n".encode())
            w(b"data %d\n%s\n" % (len(msg), msg))
            changed = text_files.keys() if c == 0 else rng.sample(sorted(text_files), 3)
            for name in changed:
                lines = text_files[name]
                if c:
                    for _ in range(rng.randint(2, 12)):
                        lines[rng.randrange(len(lines))] = _text_line(rng)
                    for _ in range(rng.randint(1, 8)):
                        lines.insert(rng.randrange(len(lines) + 1), _text_line(rng))
                data = "".join(lines).encode()
                w(b"M 100644 inline %s\ndata %d\n" % (name.encode(), len(data)))
                w(data)
                w(b"\n")
            for size in per_commit[c]:
                if bin_paths and rng.random() < 0.3:
                    name = rng.choice(bin_paths)  # rewrite an existing binary
                else:
                    name = f"assets/{c // 50:02d}/blob_{c:04d}_{len(bin_paths):05d}.bin"
                    bin_paths.append(name)
                w(b"M 100644 inline %s\ndata %d\n" % (name.encode(), size))
                w(os.urandom(size))
                w(b"\n")
            w(b"\n")
            if c and c % 50 == 0:
                w(b"tag v%d\nfrom refs/heads/main\n" % (c // 50))
                w(b"tagger Bench Tagger <tagger@example.invalid> %d +0000\n" % when)
                tag_msg = f"release {c // 50}\n".encode()
                w(b"data %d\n%s\n" % (len(tag_msg), tag_msg))
        w(b"done\n")
        proc.stdin.close()
    except BrokenPipeError:
        pass
    err = proc.stderr.read() if proc.stderr else b""
    if proc.wait() != 0:
        raise RuntimeError(f"git fast-import failed: {err.decode(errors='replace')}")
    env.git("-C", tmp, "symbolic-ref", "HEAD", "refs/heads/main")
    env.git(
        "-C", tmp, "-c", "pack.threads=0", "repack", "-a", "-d", "-f", "-q", "--write-bitmap-index",
        timeout=7200,
    )  # fmt: skip
    env.git("-C", tmp, "pack-refs", "--all")
    env.git("-C", tmp, "prune", "--expire=now")
    os.unlink(os.path.join(tmp, "info", "attributes"))
    env.git("-C", tmp, "fsck", "--connectivity-only", "--no-dangling", "--no-progress")
    shutil.rmtree(path, ignore_errors=True)
    os.rename(tmp, path)


def ensure_repo(env: Env, workdir: str, size_mib: int, commits: int, regen: bool) -> str:
    """The cached repository under ``workdir/repos`` (generated when missing or stale)."""
    repos = os.path.join(workdir, "repos")
    os.makedirs(repos, exist_ok=True)
    path = os.path.join(repos, f"bench-{size_mib}m.git")
    stamp = os.path.join(path, "bench-stamp.json")
    want = {"recipe": REPO_RECIPE, "size_mib": size_mib, "commits": commits}
    if not regen and os.path.exists(stamp):
        try:
            with open(stamp) as fh:
                if json.load(fh) == want:
                    log(f"using cached repository {path}")
                    return path
        except (OSError, ValueError):
            pass
    log(f"generating a ~{size_mib} MiB repository with {commits} commits (once; cached in {repos}) ...")
    t = time.perf_counter()
    generate_repo(env, path, size_mib, commits)
    with open(stamp, "w") as fh:
        json.dump(want, fh)
    log(f"generated in {time.perf_counter() - t:.1f}s")
    return path


def pack_bytes(repo: str) -> int:
    d = os.path.join(repo, "objects", "pack")
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".pack"))


def repo_summary(env: Env, repo: str) -> dict:
    counts = env.out("--git-dir", repo, "count-objects", "-v")
    return {
        "path": repo,
        "pack_mib": round(pack_bytes(repo) / MiB, 1),
        "commits": int(env.out("--git-dir", repo, "rev-list", "--count", "--all")),
        "count_objects": dict(line.split(": ", 1) for line in counts.splitlines()),
    }


def write_random_files(directory: str, total: int, chunk: int = 64 * MiB) -> None:
    """``total`` bytes of incompressible data in files of ``chunk`` bytes under ``directory``."""
    os.makedirs(directory, exist_ok=True)
    i = 0
    while total > 0:
        n = min(chunk, total)
        with open(os.path.join(directory, f"random_{i:03d}.bin"), "wb") as fh:
            for off in range(0, n, 8 * MiB):
                fh.write(os.urandom(min(8 * MiB, n - off)))
        total -= n
        i += 1


def _one_commit_repo(env: Env, path: str) -> str:
    """A bare repository without template files holding one small commit on ``main``; its id."""
    env.git("init", "-q", "--bare", "--template=", "--initial-branch=main", path)
    stream = (
        b"commit refs/heads/main\n"
        b"committer Bench Committer <committer@example.invalid> 1600000000 +0000\n"
        b"data 5\nsmall\n"
        b"M 100644 inline README\ndata 6\nhello\n\n"
        b"done\n"
    )
    env.git("-C", path, "fast-import", "--quiet", "--done", input=stream)
    env.git("-C", path, "symbolic-ref", "HEAD", "refs/heads/main")
    return env.out("--git-dir", path, "rev-parse", "refs/heads/main")


def _cached(path: str, want: dict) -> bool:
    try:
        with open(os.path.join(path, "bench-stamp.json")) as fh:
            return json.load(fh) == want
    except (OSError, ValueError):
        return False


def _stamp(path: str, want: dict) -> None:
    with open(os.path.join(path, "bench-stamp.json"), "w") as fh:
        json.dump(want, fh)


def ensure_refs_repo(env: Env, workdir: str, refs: int) -> str:
    """``workdir/repos/refs-N.git``: one commit and ``refs`` branches on it, all packed (cached)."""
    path = os.path.join(workdir, "repos", f"refs-{refs}.git")
    want = {"recipe": 1, "refs": refs}
    if _cached(path, want):
        return path
    log(f"creating a repository with {refs:,} refs (once; cached) ...")
    t = time.perf_counter()
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    oid = _one_commit_repo(env, tmp)
    # main plus refs-1 more: half branches, half tags (both are advertised).
    lines = [
        f"create refs/{'heads/feature' if i % 2 else 'tags/release'}/{i:06d} {oid}\n" for i in range(1, refs)
    ]
    env.git("-C", tmp, "update-ref", "--stdin", input="".join(lines).encode())
    env.git("-C", tmp, "pack-refs", "--all")
    got = len(env.out("--git-dir", tmp, "for-each-ref", "--format=x").splitlines())
    if got != refs:
        raise RuntimeError(f"{tmp}: {got} refs, wanted {refs}")
    _stamp(tmp, want)
    shutil.rmtree(path, ignore_errors=True)
    os.rename(tmp, path)
    log(f"created in {time.perf_counter() - t:.1f}s")
    return path


def ensure_many_repos(env: Env, workdir: str, count: int) -> str:
    """``workdir/repos/index-N/``: ``count`` tiny bare repositories (one commit each, hard links)."""
    root = os.path.join(workdir, "repos", f"index-{count}")
    want = {"recipe": 1, "repos": count}
    if _cached(root, want):
        return root
    log(f"creating {count:,} tiny repositories (once; cached) ...")
    t = time.perf_counter()
    tmp = root + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    template = os.path.join(tmp, ".template.git")  # a dot name: the index does not list it
    _one_commit_repo(env, template)
    files, dirs = [], []
    for dirpath, dirnames, filenames in os.walk(template):
        rel = os.path.relpath(dirpath, template)
        dirs += [os.path.normpath(os.path.join(rel, d)) for d in dirnames]
        files += [os.path.normpath(os.path.join(rel, f)) for f in filenames]
    for i in range(count):
        repo = os.path.join(tmp, f"repo-{i:05d}.git")
        os.mkdir(repo)
        for d in dirs:
            os.mkdir(os.path.join(repo, d))
        for f in files:
            os.link(os.path.join(template, f), os.path.join(repo, f))
    shutil.rmtree(template)
    _stamp(tmp, want)
    shutil.rmtree(root, ignore_errors=True)
    os.rename(tmp, root)
    log(f"created in {time.perf_counter() - t:.1f}s")
    return root
