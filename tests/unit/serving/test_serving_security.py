"""The server's start-up rules and where its tokens come from (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeloop.serving.errors import ServerConfigError
from edgeloop.serving.security import check_startup, is_loopback, read_token_file, token_from


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.53", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.4", False),
        ("my-host.example", False),
    ],
)
def test_only_loopback_addresses_count_as_local(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20"])
def test_admin_without_a_token_on_a_reachable_address_does_not_start(host):
    with pytest.raises(ServerConfigError, match="without an admin token"):
        check_startup(host, admin_enabled=True, admin_token=None, auth_token=None)


def test_admin_on_loopback_or_with_a_token_starts():
    assert check_startup("127.0.0.1", admin_enabled=True, admin_token=None, auth_token=None) == []
    assert check_startup("0.0.0.0", admin_enabled=True, admin_token="t" * 32, auth_token=None, tls=True) == []
    assert check_startup("0.0.0.0", admin_enabled=False, admin_token=None, auth_token=None) == []


def test_tokens_in_clear_text_and_one_token_for_both_roles_are_warned_about():
    (clear,) = check_startup("0.0.0.0", admin_enabled=True, admin_token="a", auth_token="b")
    assert "clear text" in clear
    (same,) = check_startup("0.0.0.0", admin_enabled=True, admin_token="same", auth_token="same", tls=True)
    assert "every client can administer" in same


def test_a_token_file_is_read_without_its_newline(tmp_path: Path):
    f = tmp_path / "token"
    f.write_text("s3cret-token\n")
    assert read_token_file(f, "admin token") == "s3cret-token"
    f.write_text("\n")
    with pytest.raises(ServerConfigError, match="empty"):
        read_token_file(f, "admin token")
    f.write_text("two words\n")
    with pytest.raises(ServerConfigError, match="whitespace"):
        read_token_file(f, "admin token")
    with pytest.raises(ServerConfigError, match="cannot read"):
        read_token_file(tmp_path / "missing", "admin token")


def test_a_token_comes_from_a_file_then_the_environment(tmp_path: Path, monkeypatch):
    f = tmp_path / "token"
    f.write_text("from-file")
    monkeypatch.setenv("T_ENV", "from-env")
    assert token_from(f, "T_ENV", "T_FILE_ENV", "token") == "from-file"
    assert token_from(None, "T_ENV", "T_FILE_ENV", "token") == "from-env"
    monkeypatch.setenv("T_FILE_ENV", str(f))
    assert token_from(None, "T_ENV", "T_FILE_ENV", "token") == "from-file"
    monkeypatch.delenv("T_FILE_ENV")
    monkeypatch.delenv("T_ENV")
    assert token_from(None, "T_ENV", "T_FILE_ENV", "token") is None


def test_no_token_is_taken_on_the_command_line():
    from edgeloop.serving.__main__ import build_parser
    from edgeloop.serving.cli import serve

    result = CliRunner().invoke(serve, ["--model", "x", "--admin-token", "s3cret"])
    assert result.exit_code == 2 and "No such option" in result.output
    flags = {opt for action in build_parser()._actions for opt in action.option_strings}
    assert "--admin_token_file" in flags
    assert not [f for f in flags if "token" in f and not f.endswith("_file")]


def test_a_malformed_expected_digest_stops_edgeloop_serve_before_loading(tmp_path: Path):
    from edgeloop.serving.cli import serve

    result = CliRunner().invoke(serve, ["--model", str(tmp_path), "--expected-digest", "unset"])
    assert result.exit_code == 2 and "not a sha256 digest" in result.output


@pytest.mark.parametrize(
    ("uri", "allowed"),
    [
        ("models:/inspection@champion", True),
        ("models:/inspection/7", True),
        ("models:/other@champion", False),
        ("az://models/inspection/abc", True),
        ("az://models/inspection/../../secrets", False),
        ("az://modelsx/inspection/abc", False),
        ("az://payloads/inspection/abc", False),
        ("/srv/models/v3", True),
        ("file:///srv/models/v3", True),
        ("/srv/models/../secrets", False),
        ("/srv/modelsx/v3", False),
        ("/etc", False),
    ],
)
def test_admin_sources_are_matched_by_container_name_and_directory(uri, allowed):
    from edgeloop.serving.sources import source_allowed

    prefixes = ("models:/inspection", "az://models/inspection/", "/srv/models")
    assert source_allowed(uri, prefixes) is allowed


def test_by_default_admin_loads_come_from_the_registry_and_the_models_container():
    from edgeloop.core.config import Settings
    from edgeloop.serving.sources import default_admin_sources, source_allowed

    defaults = default_admin_sources(Settings())
    assert source_allowed("models:/anything@champion", defaults)
    assert source_allowed("az://models/inspection/abc", defaults)
    assert not source_allowed("/tmp/some-model", defaults)
