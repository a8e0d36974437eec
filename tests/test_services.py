"""The service table and Git-Protocol validation (pure)."""

import pytest

from gittornado.protocol.services import READ, WRITE, protocol_version, service_for, valid_git_protocol


def test_service_table():
    up = service_for("git-upload-pack")
    assert (up.subcommand, up.right) == ("upload-pack", READ)
    assert up.advertisement_type == "application/x-git-upload-pack-advertisement"
    assert up.request_type == "application/x-git-upload-pack-request"
    assert up.result_type == "application/x-git-upload-pack-result"
    rp = service_for("git-receive-pack")
    assert (rp.subcommand, rp.right) == ("receive-pack", WRITE)


@pytest.mark.parametrize("name", ["git-upload-archive", "upload-pack", "git-shell", "", "git-upload-pack "])
def test_unknown_or_non_http_services(name):
    assert service_for(name, transport="http") is None


def test_upload_archive_is_offered_off_http():
    assert service_for("git-upload-archive", transport="ssh").right == READ


@pytest.mark.parametrize(
    "value",
    [
        "version=2",
        "version=1",
        "version=0",
        "version=2:object-format=sha1",
        "version=3",
        "side-band",
        "a.b-c_d=x.y",
    ],
)
def test_valid_git_protocol(value):
    assert valid_git_protocol(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "version=2;rm -rf",
        "version=2 ",
        "version==2",
        ":version=2",
        "version=2:",
        "ver sion=2",
        "version=$(id)",
        "x" * 300,
        "version=2\nGIT_DIR=/etc",
    ],
)
def test_malformed_git_protocol(value):
    assert not valid_git_protocol(value)


def test_protocol_version():
    assert protocol_version(None) == 0
    assert protocol_version("version=2") == 2
    assert protocol_version("version=1:version=2") == 2
    assert protocol_version("side-band") == 0


# -- SSH_ORIGINAL_COMMAND (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "command, service, path",
    [
        ("git-upload-pack '/app.git'", "git-upload-pack", "app.git"),  # ssh://host/app.git
        ("git-upload-pack 'app.git'", "git-upload-pack", "app.git"),  # host:app.git
        ("git-upload-pack '~/app.git'", "git-upload-pack", "app.git"),  # ssh://host/~/app.git
        ("git-receive-pack '/team/app.git'", "git-receive-pack", "team/app.git"),
        ("git-upload-archive '/app.git'", "git-upload-archive", "app.git"),  # git archive --remote
        ("git upload-pack '/app.git'", "git-upload-pack", "app.git"),  # space form
        ("git receive-pack app", "git-receive-pack", "app"),  # unquoted
        ("git-upload-pack /app.git", "git-upload-pack", "app.git"),
        ("git-upload-pack ~/w", "git-upload-pack", "w"),
        ('git-upload-pack "/app.git"', "git-upload-pack", "app.git"),  # double quotes
        ("git-upload-pack 'app.git/'", "git-upload-pack", "app.git"),  # trailing slash
        ("git-upload-pack  'app'  ", "git-upload-pack", "app"),  # extra spaces
        ("git-upload-pack 'a_b/c-d.e+f@g.git'", "git-upload-pack", "a_b/c-d.e+f@g.git"),
        ("git-upload-pack 'dépôt'", "git-upload-pack", "dépôt"),  # non-ASCII letters
    ],
)
def test_parse_ssh_command(command, service, path):
    from gittornado.protocol.services import parse_ssh_command

    parsed = parse_ssh_command(command)
    assert (parsed.service.name, parsed.path) == (service, path)


@pytest.mark.parametrize(
    "command",
    [
        # not a git service
        "",
        " ",
        "ls",
        "sh -c 'id'",
        "bash",
        "git",
        "git-shell -c 'git-upload-pack app'",
        "git-upload-packx 'app'",
        "git-http-backend",
        "git upload-archive2 app",
        "scp -t /tmp",
        "git-upload-pack",
        "git upload-pack",
        "git-receive-pack",
        "GIT-UPLOAD-PACK 'app'",
        "/usr/bin/git-upload-pack 'app'",
        "git-receive-pack\t'app'",
        # option injection and extra arguments
        "git-upload-pack '--help'",
        "git-upload-pack --help",
        "git-upload-pack -h",
        "git-upload-pack '-app'",
        "git-upload-pack '/-app'",
        "git-upload-pack 'team/--x'",
        "git-upload-pack --upload-pack='touch x' app",
        "git-receive-pack 'app' --stateless-rpc",
        "git-upload-pack --strict 'app'",
        "git --exec-path=/tmp upload-pack app",
        "git -c core.sshCommand=id upload-pack app",
        "git-upload-pack 'app' 'other'",
        # shell metacharacters, quoting tricks, control characters
        "git-upload-pack 'app'; id",
        "git-upload-pack 'app';id",
        "git-upload-pack 'app' && id",
        "git-upload-pack 'app' || id",
        "git-upload-pack 'app' | id",
        "git-upload-pack 'app' &",
        "git-upload-pack '$(id)'",
        "git-upload-pack 'a$(id)'",
        "git-upload-pack `id`",
        "git-upload-pack 'a`id`'",
        "git-upload-pack '${HOME}'",
        "git-upload-pack '$HOME/app'",
        "git-upload-pack 'app' > /tmp/x",
        "git-upload-pack 'app' < /etc/passwd",
        "git-upload-pack 'a>b'",
        "git-upload-pack 'a*'",
        "git-upload-pack 'a?'",
        "git-upload-pack '[a]'",
        "git-upload-pack '{a,b}'",
        "git-upload-pack '(app)'",
        "git-upload-pack 'a!b'",
        "git-upload-pack 'a\\b'",
        "git-upload-pack 'a#b'",
        "git-upload-pack 'a%b'",
        "git-upload-pack 'a=b'",
        "git-upload-pack 'app'\nid",
        "git-upload-pack 'app\nid'",
        "git-upload-pack 'app'\rid",
        "git-upload-pack 'ap\x00p'",
        "git-upload-pack 'a\x1b[2Jb'",
        "git-upload-pack 'a\tb'",
        "git-upload-pack 'my app'",
        "git-upload-pack 'app",
        "git-upload-pack app'",
        "git-upload-pack '\"app\"'",
        "git-upload-pack \"app'",
        "git-upload-pack 'it'\\''s'",
        "git-upload-pack ''",
        'git-upload-pack ""',
        # paths escaping the root, or not paths under it
        "git-upload-pack '../app.git'",
        "git-upload-pack '/../etc'",
        "git-upload-pack 'team/../../x'",
        "git-upload-pack 'team/./app'",
        "git-upload-pack './app'",
        "git-upload-pack '.'",
        "git-upload-pack '..'",
        "git-upload-pack '//app'",
        "git-upload-pack 'team//app'",
        "git-upload-pack '/'",
        "git-upload-pack '~'",
        "git-upload-pack '~/'",
        "git-upload-pack '~root/app'",
        "git-upload-pack '~/~/app'",
        "git-upload-pack '/~/app'",
        "git-upload-pack 'app//'",
        "git-upload-pack '" + "a/" * 600 + "'",
    ],
)
def test_refused_ssh_command(command):
    from gittornado.errors import BadRequest
    from gittornado.protocol.services import parse_ssh_command

    with pytest.raises(BadRequest) as info:
        parse_ssh_command(command)
    message = str(info.value)
    assert message and "\n" not in message and len(message) < 100  # one line for the user


def test_refusal_messages_do_not_echo_the_command():
    from gittornado.errors import BadRequest
    from gittornado.protocol.services import parse_ssh_command

    with pytest.raises(BadRequest) as info:
        parse_ssh_command("git-upload-pack 'evil\x1b]0;owned\x07'")
    assert "\x1b" not in str(info.value) and "evil" not in str(info.value)
