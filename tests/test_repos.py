"""Repository lookup: names, nesting, work trees, and every way out of the root refused."""

import os

import pytest

from gittornado.repos import RepositoryLookup, has_encoded_separator, normalize_name
from conftest import git


@pytest.mark.parametrize("name,expected", [
    ("app", "app"), ("app.git", "app"), ("/app.git/", "app"), ("team/app.git", "team/app"),
    ("a/b/c", "a/b/c"),
])
def test_normalize_name(name, expected):
    assert normalize_name(name) == expected


@pytest.mark.parametrize("name", [
    "", "/", "..", "../app", "team/../app", "./app", "a//b", "app\x00", "a\\b", ".git", "-app",
    "team/-x", "..git/..", "x/.git/..",
])
def test_normalize_name_refuses(name):
    assert normalize_name(name) is None


@pytest.mark.parametrize("raw,bad", [("/team%2fapp/info/refs", True), ("/a%2F", True), ("/a%5cb", True),
                                     ("/a%00", True), ("/a%2e%2e/b", False), ("/team/app", False)])
def test_encoded_separator(raw, bad):
    assert has_encoded_separator(raw) is bad


def test_lookup_forms(gitbase):
    lookup = RepositoryLookup(str(gitbase))
    app = lookup.lookup("app")
    assert app is not None and app.path == os.path.realpath(gitbase / "app.git") and app.name == "app"
    assert lookup.lookup("app.git") == app
    assert lookup.lookup("team/app").path == os.path.realpath(gitbase / "team" / "app.git")
    w = lookup.lookup("w")
    assert w.path == os.path.realpath(gitbase / "w" / ".git")
    assert lookup.lookup("missing") is None
    assert lookup.lookup("team") is None  # a plain directory is not a repository


def test_names_lists_every_repository(gitbase):
    assert RepositoryLookup(str(gitbase)).names() == ["app", "private", "public/lib", "team/app", "w"]


def test_symlink_out_of_root_is_not_found(tmp_path, gitbase, fixture_repo):
    outside = tmp_path / "outside.git"
    git("clone", "-q", "--bare", str(fixture_repo), str(outside))
    (gitbase / "evil.git").symlink_to(outside)
    (gitbase / "team" / "up").symlink_to(tmp_path)
    lookup = RepositoryLookup(str(gitbase))
    assert lookup.lookup("evil") is None
    assert lookup.lookup("team/up/outside") is None
    assert "evil" not in lookup.names()


def test_symlink_inside_root_is_followed(gitbase):
    (gitbase / "alias.git").symlink_to(gitbase / "app.git")
    assert RepositoryLookup(str(gitbase)).lookup("alias").path == os.path.realpath(gitbase / "app.git")


def test_root_given_through_a_symlink(tmp_path, gitbase):
    link = tmp_path / "link"
    link.symlink_to(gitbase)
    assert RepositoryLookup(str(link)).lookup("app") is not None


def test_dotdot_never_reaches_a_sibling(tmp_path, gitbase, fixture_repo):
    git("clone", "-q", "--bare", str(fixture_repo), str(tmp_path / "sibling.git"))
    lookup = RepositoryLookup(str(gitbase))
    for name in ("../sibling", "../sibling.git", "team/../../sibling", "app/../../sibling"):
        assert lookup.lookup(name) is None
