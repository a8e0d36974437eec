"""``Settings`` (checked once, from a command line or a program), ``parse_size`` and the shared options."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from gittornado.server import cli
from gittornado.server.options import (
    add_cache_options,
    add_limit_options,
    add_logging_options,
    add_policy_options,
    add_repository_options,
    parse_size,
)
from gittornado.server.settings import Settings

MiB = 1024 * 1024


# -- parse_size ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, size",
    [
        ("0", 0),
        ("67108864", 64 * MiB),
        ("500K", 500 * 1024),
        ("500k", 500 * 1024),
        ("500M", 500 * MiB),
        ("2G", 2 * 1024 * MiB),
        ("1T", 1024**4),
        ("64MiB", 64 * MiB),
        ("64MB", 64 * MiB),
        (" 7 ", 7),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "-1", "1.5G", "10X", "1 0", "٣"])
def test_parse_size_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
        parse_size(text)


def test_size_options_take_plain_bytes_and_units():
    args = cli.make_parser().parse_args(["--max-upload-pack-request", "1048576", "--max-push-size", "2G"])
    assert args.max_upload_pack_request == MiB and args.max_push_size == 2 * 1024 * MiB
    args = cli.make_parser().parse_args(["--max-upload-pack-request=100M", "--max-push-size=123"])
    assert args.max_upload_pack_request == 100 * MiB and args.max_push_size == 123


def test_bad_size_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.make_parser().parse_args(["--max-push-size", "lots"])
    assert exc.value.code == 2
    assert "--max-push-size" in capsys.readouterr().err


# -- Settings: defaults and validation -----------------------------------------------------


def test_make_app_and_routes_build_the_same_defaults(tmp_path):
    """make_app(settings) and routes(settings) build the same gate and engine: the login
    throttle and the advertisement cache on in both (an embedder gets what the CLI gets)."""
    from gittornado.server.app import make_app, routes

    settings = Settings(gitbase=str(tmp_path))
    app = make_app(settings)
    table = routes(settings)
    config = table[0].target_kwargs["config"]
    for gate, engine in ((app.gate, app.engine), (config.gate, config.engine)):
        assert gate.throttle is not None and gate.throttle.limit == settings.login_failures
        assert engine.advert_cache is not None
        assert engine.upload_pack_limit == settings.upload_pack_limit
        assert engine.input_idle == settings.body_idle_timeout
        assert engine.slots is None
    # ... and the keyword form is the same settings.
    assert make_app(str(tmp_path)).settings_object == settings
    # The seed's keywords build the same defaults too (server.py's way).
    legacy = routes(gitbase=str(tmp_path))[0].target_kwargs["config"]
    assert legacy.gate.throttle is not None and legacy.engine.advert_cache is not None


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().realm = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"accessfile": "a.ini", "auth_api": "http://api/"}, "either --accessfile or --auth-api"),
        ({"accessfile": "a.ini", "access": object()}, "either accessfile or access"),
        ({"auth_api": "http://api/", "access": object()}, "either auth_api or access"),
        ({"auth_api": "ftp://api/"}, "http(s) URL"),
        ({"auth_api": "http://api/?x=1"}, "without a query"),
        ({"allow_external_links": True, "lookup": object()}, "allow_external_links is for the default"),
        ({"web": True, "fallback": object()}, "either web or fallback"),
        ({"prefix": "git"}, "--prefix must be a plain absolute path"),
        ({"prefix": "/a//b"}, "--prefix"),
        ({"prefix": "/a b"}, "--prefix"),
        ({"prefix": "/a?b"}, "--prefix"),
        ({"realm": ""}, "--realm"),
        ({"realm": 'a"b'}, "--realm"),
        ({"realm": "a\nb"}, "--realm"),
        ({"gitbase": ""}, "--gitbase"),
        ({"git": ""}, "--git"),
        ({"upload_pack_limit": 0}, "--max-upload-pack-request (upload_pack_limit) must be positive"),
        ({"receive_pack_limit": 0}, "--max-push-size (receive_pack_limit) must be positive"),
        ({"body_idle_timeout": 0}, "--body-idle-timeout must be positive, or None (0 on the command line)"),
        ({"send_timeout": -1}, "--send-timeout"),
        ({"max_git_processes": 0}, "--max-git-processes"),
        ({"git_queue": -1}, "--git-queue must be >= 0"),
        ({"git_queue_timeout": -1.0}, "--git-queue-timeout"),
        ({"login_failures": -1}, "--login-failures must be >= 0"),
        ({"login_window": 0}, "login_window must be positive"),
        ({"login_block": -5}, "--login-block"),
        ({"auth_api_timeout": 0}, "--auth-api-timeout must be positive"),
        ({"pack_cache_size": -1}, "--pack-cache-size"),
        ({"advert_cache_size": -1}, "--advert-cache-size"),
    ],
)
def test_invalid_settings_are_clear_value_errors(kwargs, message):
    with pytest.raises(ValueError) as exc:
        Settings(**kwargs)
    assert message in str(exc.value)


def test_valid_combinations():
    assert Settings(prefix="/git/").prefix == "/git"
    assert Settings(prefix="/").prefix == ""
    assert Settings(accessfile="a.ini", auth_api_timeout=0.5).accessfile == "a.ini"
    assert Settings(auth_api="https://api.example/gitorious").auth_api
    assert Settings(lookup=object()).lookup is not None
    assert Settings(web=True).web and Settings(fallback=object(), index=False).fallback is not None
    unbounded = Settings(
        upload_pack_limit=None, body_idle_timeout=None, send_timeout=None, login_failures=0, git_queue=0
    )
    assert not unbounded.throttled


def test_pack_cache_path():
    assert Settings().pack_cache_path is None  # off by default, as make_app's
    assert Settings(pack_cache_size=MiB).pack_cache_path is None  # on: the command picks a place
    assert Settings(pack_cache_size=MiB, state_dir="/s").pack_cache_path == "/s/pack-cache"
    assert Settings(pack_cache_size=MiB, state_dir="/s", pack_cache_dir="/c").pack_cache_path == "/c"
    assert Settings(pack_cache_size=0, pack_cache_dir="/c").pack_cache_path is None


# -- Settings.from_args ---------------------------------------------------------------------


def server_settings(*argv: str, **overrides) -> Settings:
    return Settings.from_args(cli.make_parser().parse_args(list(argv)), **overrides)


def test_server_defaults():
    s = server_settings()
    assert s == Settings(pack_cache_size=1024**3)  # the server caches packs by default
    assert s.throttled and s.login_failures == 10 and s.login_block == 60.0


def test_server_options_round_trip():
    s = server_settings(
        "--root=/srv/git",
        "--accessfile",
        "acl.ini",
        "--realm",
        "r",
        "--prefix",
        "/git/",
        "--git",
        "/opt/git",
        "--allow-external-links",
        "--web",
        "--ssh-url",
        "git@host:",
        "--max-upload-pack-request",
        "1M",
        "--max-push-size",
        "5G",
        "--body-idle-timeout",
        "0",
        "--send-timeout",
        "9",
        "--max-git-processes",
        "4",
        "--git-queue",
        "7",
        "--git-queue-timeout",
        "3",
        "--login-failures",
        "3",
        "--login-block",
        "12",
        "--state-dir",
        "/var/lib/gt",
        "--pack-cache-size",
        "10M",
        "--advert-cache-size",
        "0",
    )
    assert dataclasses.asdict(s) == dataclasses.asdict(
        Settings(
            gitbase="/srv/git",
            accessfile="acl.ini",
            realm="r",
            prefix="/git",
            git="/opt/git",
            allow_external_links=True,
            web=True,
            ssh_url="git@host:",
            upload_pack_limit=MiB,
            receive_pack_limit=5 * 1024 * MiB,
            body_idle_timeout=None,
            send_timeout=9.0,
            max_git_processes=4,
            git_queue=7,
            git_queue_timeout=3.0,
            login_failures=3,
            login_block=12.0,
            state_dir="/var/lib/gt",
            pack_cache_size=10 * MiB,
            advert_cache_size=0,
        )
    )
    assert s.pack_cache_path == "/var/lib/gt/pack-cache"


def test_server_switches_and_zeroes():
    s = server_settings("--no-throttle", "--no-pack-cache", "--send-timeout", "0", "--max-git-processes", "0")
    assert not s.throttled and s.pack_cache_size == 0
    assert s.send_timeout is None and s.max_git_processes is None
    assert server_settings("--auth-api", "http://api/", "--auth-api-timeout", "2").auth_api_timeout == 2.0


def test_overrides_win():
    s = server_settings("--realm", "r", realm="other", index=False)
    assert s.realm == "other" and s.index is False


def test_server_refuses_both_policies_with_status_2(tmp_path, capsys):
    acl = tmp_path / "acl.ini"
    acl.write_text("")
    status = cli.main(["--gitbase", str(tmp_path), "--accessfile", str(acl), "--auth-api", "http://x/"])
    assert status == 2
    assert "gittornado: give either --accessfile or --auth-api, not both" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prefix", "git"], "--prefix must be a plain absolute path"),
        (["--max-push-size", "0"], "--max-push-size"),
        (["--auth-api", "localhost:8000"], "--auth-api must be an http(s) URL"),
        (["--git-queue", "-1"], "--git-queue"),
    ],
)
def test_server_reports_settings_errors_before_starting(tmp_path, capsys, argv, message):
    assert cli.main(["--gitbase", str(tmp_path), "--port", "0", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gittornado: ") and message in err


def shell_like_parser() -> argparse.ArgumentParser:
    """What gittornado-shell builds from the shared groups: fewer options, its own defaults."""
    p = argparse.ArgumentParser(prog="gittornado-shell")
    p.add_argument("user")
    add_repository_options(p)
    add_policy_options(p)
    add_limit_options(p)
    add_cache_options(p, pack_cache_by_default=False)
    add_logging_options(p)
    return p


def test_shell_like_namespace_gives_settings_with_defaults_for_the_rest():
    args = shell_like_parser().parse_args(
        ["--gitbase", "/g", "--auth-api", "http://api/", "--auth-api-timeout", "2", "--git", "g", "alice"]
    )
    s = Settings.from_args(args)
    assert (s.gitbase, s.auth_api, s.auth_api_timeout, s.git) == ("/g", "http://api/", 2.0, "g")
    assert s.realm == "gittornado" and s.login_failures == 10 and s.advert_cache_size == 64 * MiB
    assert s.pack_cache_size == 1024**3 and s.pack_cache_path is None  # the shell: no directory, no cache
    args = shell_like_parser().parse_args(["--pack-cache-dir", "/c", "--max-push-size", "1G", "bob"])
    s = Settings.from_args(args)
    assert s.pack_cache_path == "/c" and s.receive_pack_limit == 1024**3


def test_policy_options_exclusive_by_default(capsys):
    with pytest.raises(SystemExit):
        shell_like_parser().parse_args(["--accessfile", "a", "--auth-api", "http://x/", "alice"])
    assert "not allowed with" in capsys.readouterr().err


def test_shell_like_help_names_its_own_cache_default():
    text = " ".join(shell_like_parser().format_help().split())
    assert "default: no pack cache" in text and "--advert-cache-size" not in text
    assert "critical" in text and "--syslog" in text and "--log-file" in text
    assert "temporary directory removed at exit" in " ".join(cli.make_parser().format_help().split())
