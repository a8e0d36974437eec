"""The service table and Git-Protocol validation (pure)."""

import pytest

from gittornado.services import READ, WRITE, protocol_version, service_for, valid_git_protocol


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


@pytest.mark.parametrize("value", ["version=2", "version=1", "version=0", "version=2:object-format=sha1",
                                   "version=3", "side-band", "a.b-c_d=x.y"])
def test_valid_git_protocol(value):
    assert valid_git_protocol(value)


@pytest.mark.parametrize("value", ["", "version=2;rm -rf", "version=2 ", "version==2", ":version=2",
                                   "version=2:", "ver sion=2", "version=$(id)", "x" * 300,
                                   "version=2\nGIT_DIR=/etc"])
def test_malformed_git_protocol(value):
    assert not valid_git_protocol(value)


def test_protocol_version():
    assert protocol_version(None) == 0
    assert protocol_version("version=2") == 2
    assert protocol_version("version=1:version=2") == 2
    assert protocol_version("side-band") == 0
