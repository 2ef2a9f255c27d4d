"""The client's pure parts, no server: argument parsing, --param syntax, output formats, error printing and exit
codes, the configuration file."""

from __future__ import annotations

import json
import os
import stat

import pytest
import yaml

from apps.cli import config
from apps.cli.commands import API_CALLS, COMMANDS
from apps.cli.commands.base import parse_params
from apps.cli.errors import EXIT_USAGE, ApiError, CliError, UsageError
from apps.cli.main import build_parser, main
from apps.cli.output import Column, col, dump, fields, price_range, short_time, table


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private config directory, and no login in the environment."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("SKYPORT_URL", "SKYPORT_TOKEN", "SKYPORT_PROFILE", "SKYPORT_TRACE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


# --- arguments ----------------------------------------------------------------------------------------------------
def test_global_options_work_before_and_after_the_command():
    parser = build_parser()
    before = parser.parse_args(["-o", "json", "--profile", "lab", "deployments", "list", "--mine"])
    after = parser.parse_args(["deployments", "list", "--mine", "-o", "yaml", "-q"])
    assert (before.output, before.profile, before.mine) == ("json", "lab", True)
    assert (after.output, after.quiet, after.profile) == ("yaml", True, None)
    # given before the command and not repeated after it: the command's parser does not reset it
    assert parser.parse_args(["--url", "http://x", "catalog", "list"]).url == "http://x"


def test_launch_arguments():
    args = build_parser().parse_args([
        "launch", "two-tier-web-application", "--name", "shop", "--project", "web", "--param", "web_count=2",
        "--param", "admin_email=ops@acme.example", "--lease-days", "14", "--policy", "spread", "--wait",
        "--timeout", "90",
    ])
    assert args.item == "two-tier-web-application"
    assert args.param == ["web_count=2", "admin_email=ops@acme.example"]
    assert (args.lease_days, args.policy, args.wait, args.timeout) == (14, "spread", True, 90.0)


@pytest.mark.parametrize("argv", [
    ["launch", "x", "--name", "n", "--cloud", "sim-west", "--policy", "cheapest"],  # one or the other
    ["launch", "x"],  # --name is required
    ["launch", "x", "--name", "n", "--lease-days", "0"],
    ["launch", "x", "--name", "n", "--wait", "--timeout", "soon"],
    ["deployments", "list", "--state", "running"],  # a server state, not a deployment state
    ["deployments", "resize", "4"],  # --size is required
    ["images", "import", "--name", "n", "--version", "1"],  # --file or --url
    ["images", "push", "7"],  # --to is required
    ["teleport"],
])
def test_usage_errors_exit_2_before_anything_else(argv, home, capsys):
    assert main(argv) == EXIT_USAGE
    assert "usage: skyport" in capsys.readouterr().err


def test_a_group_without_its_command_shows_the_group_help(capsys):
    assert main(["deployments"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "watch" in err and "resize" in err


@pytest.mark.parametrize("name", [c.name for c in COMMANDS])
def test_every_command_has_help_with_a_description_and_examples(name, capsys):
    assert main([*name.split(), "--help"]) == 0
    out = capsys.readouterr().out
    command = next(c for c in COMMANDS if c.name == name)
    assert "examples:" in out and f"skyport {name}" in out
    assert command.description.split()[0] in out
    assert "-o {table,json,yaml}" in out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("skyport ")


def test_the_call_table_covers_every_command_with_schema_style_paths():
    assert set(API_CALLS) == {c.name for c in COMMANDS}
    for name, calls in API_CALLS.items():
        for method, path in calls:
            assert method in ("GET", "POST", "DELETE", "WS"), name
            assert path.startswith("/ws/" if method == "WS" else "/api/v1/") and path.endswith("/"), (name, path)


# --- --param ------------------------------------------------------------------------------------------------------
def test_params_stay_text_for_the_server_to_type():
    assert parse_params(["web_count=2", "note=a=b", "empty=", " spaced =x"]) == {
        "web_count": "2", "note": "a=b", "empty": "", "spaced": "x"}
    assert parse_params(None) == {}


@pytest.mark.parametrize("items, message", [
    (["web_count"], "NAME=VALUE"),
    (["=2"], "NAME=VALUE"),
    (["a=1", "a=2"], "given twice"),
])
def test_malformed_params_are_usage_errors(items, message):
    with pytest.raises(UsageError, match=message) as caught:
        parse_params(items)
    assert caught.value.exit_code == 2


def test_a_malformed_param_exits_2_without_needing_a_login(home, capsys):
    # no login saved anywhere: the --param check comes first, so it is the error reported
    assert main(["launch", "debian-12-server", "--name", "x", "--param", "oops"]) == 2
    err = capsys.readouterr().err
    assert err == "skyport: error: --param needs NAME=VALUE, not 'oops'\n"


# --- output -------------------------------------------------------------------------------------------------------
ROWS = [{"id": 1, "name": "shop", "ips": ["198.18.0.1", "10.0.0.1"], "note": None},
        {"id": 22, "name": "build-box", "ips": [], "note": "two  words\nand a line"}]


def test_table_aligns_columns_and_shows_missing_values_as_a_dash():
    text = table(ROWS, [col("id", "id"), col("name", "name"), col("addresses", "ips"), col("note", "note")])
    assert text.splitlines() == [
        "ID  NAME       ADDRESSES             NOTE",
        "1   shop       198.18.0.1, 10.0.0.1  -",
        "22  build-box  -                     two words and a line",
    ]


def test_table_columns_can_compute_their_cells():
    text = table(ROWS, [Column("servers", lambda r: len(r["ips"]))])
    assert text.splitlines() == ["SERVERS", "2", "0"]


def test_json_and_yaml_print_the_objects_unchanged():
    data = [{"id": 1, "price": "0.01600", "when": "2026-12-01T09:30:00Z", "tags": [], "ok": True, "none": None}]
    assert json.loads(dump(data, "json")) == data
    assert yaml.safe_load(dump(data, "yaml")) == data
    assert dump(data, "yaml").startswith("- id: 1\n  price: '0.01600'")  # key order kept, prices stay strings


def test_fields_prices_and_times():
    assert fields([("state", "active"), ("lease", None), ("owner", "connor")]) == "state  active\nowner  connor"
    assert price_range("0.01600", "0.02000") == "$0.01600-0.02000"
    assert price_range("11.68", "11.68") == "$11.68"
    assert price_range(None, None) is None
    assert short_time("2026-12-16T11:03:14.123456Z") == "2026-12-16 11:03Z"


# --- errors -------------------------------------------------------------------------------------------------------
def test_api_errors_print_the_message_every_field_problem_and_the_request_id():
    body = {"error": {"code": "invalid", "message": "The request has invalid fields.", "request_id": "abc123",
                      "fields": {"name": ["Too long.", "Bad character."], "non_field_errors": ["Give one."],
                                 "targets": [{}, {"region": ["Unknown region."]}]}}}
    error = ApiError.from_body(400, body, "fallback")
    assert (error.status, error.code) == (400, "invalid")
    assert error.lines() == [
        "The request has invalid fields.",
        "  name: Too long.",
        "  name: Bad character.",
        "  Give one.",
        "  targets[1].region: Unknown region.",
        "  (request id abc123)",
    ]


def test_an_answer_without_the_envelope_falls_back_to_the_status():
    error = ApiError.from_body(502, None, "HTTP 502 Bad Gateway from http://x")
    assert error.lines() == ["HTTP 502 Bad Gateway from http://x"]


def test_without_a_login_commands_exit_2_and_say_what_to_do(home, capsys):
    assert main(["deployments", "list"]) == 2
    assert capsys.readouterr().err == (
        "skyport: error: not logged in: run `skyport login` first (or set SKYPORT_URL and SKYPORT_TOKEN)\n")
    assert main(["--profile", "lab", "catalog", "list"]) == 2
    assert "skyport login --profile lab" in capsys.readouterr().err


def test_login_without_a_terminal_cannot_ask(home, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", open(os.devnull))  # noqa: SIM115
    assert main(["login", "--url", "http://127.0.0.1:9"]) == 2
    assert "API token" in capsys.readouterr().err
    assert not config.config_path().exists()


def test_an_unreachable_server_exits_1_naming_it_and_never_the_token(home, capsys, unused_port):
    url = f"http://127.0.0.1:{unused_port}"
    assert main(["--url", url, "--token", "sky_secretsecret", "deployments", "list"]) == 1
    err = capsys.readouterr().err
    assert err == f"skyport: error: cannot reach Skyport at {url}: connection refused\n"
    assert "sky_secret" not in err


def test_a_delete_off_a_terminal_without_yes_exits_2_before_any_request(home, capsys, monkeypatch, unused_port):
    monkeypatch.setattr("sys.stdin", open(os.devnull))  # noqa: SIM115
    # the server is unreachable: had it tried, the error would be "cannot reach" with exit 1
    assert main(["--url", f"http://127.0.0.1:{unused_port}", "--token", "t", "deployments", "delete", "4"]) == 2
    assert "refusing to delete without --yes" in capsys.readouterr().err


# --- configuration ------------------------------------------------------------------------------------------------
def test_the_saved_login_is_private_and_written_whole(home):
    path = config.config_path()
    config.store_login(path, "default", "http://127.0.0.1:8000", "sky_one")
    config.store_login(path, "lab", "https://lab.example", "sky_two")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.json"]  # no temporary file left behind
    assert json.loads(path.read_text())["profiles"]["lab"] == {"url": "https://lab.example", "token": "sky_two"}


def test_an_existing_lax_directory_is_made_private(home):
    path = config.config_path()
    path.parent.mkdir(parents=True, mode=0o755)
    os.chmod(path.parent, 0o755)
    config.store_login(path, "default", "http://x", "sky_one")
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_config_path_follows_xdg_then_home():
    assert str(config.config_path({"XDG_CONFIG_HOME": "/x"})) == "/x/skyport/config.json"
    assert str(config.config_path({"HOME": "/home/c"})) == "/home/c/.config/skyport/config.json"


def test_flags_beat_the_environment_which_beats_the_file(home):
    path = config.config_path()
    config.store_login(path, "default", "http://file", "sky_file")
    kwargs = {"profile": "default", "path": path}
    assert config.resolve(url=None, token=None, environ={}, **kwargs).token == "sky_file"
    env = {"SKYPORT_URL": "http://env/api/v1/", "SKYPORT_TOKEN": "sky_env"}
    assert config.resolve(url=None, token=None, environ=env, **kwargs) == config.Login(
        url="http://env", token="sky_env", profile="default")
    assert config.resolve(url="http://flag", token="sky_flag", environ=env, **kwargs).token == "sky_flag"
    # half from each place is fine: the URL from the file, the token from the environment
    mixed = config.resolve(url=None, token=None, environ={"SKYPORT_TOKEN": "sky_env"}, **kwargs)
    assert (mixed.url, mixed.token) == ("http://file", "sky_env")


def test_logout_forgets_one_profile_and_the_file_goes_with_the_last(home):
    path = config.config_path()
    config.store_login(path, "default", "http://a", "sky_a")
    config.store_login(path, "lab", "http://b", "sky_b")
    assert config.forget_login(path, "lab") == {"url": "http://b", "token": "sky_b"}
    assert list(config.load(path)["profiles"]) == ["default"]
    assert config.forget_login(path, "nope") is None
    config.forget_login(path, "default")
    assert not path.exists()


@pytest.mark.parametrize("given, expected", [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
    ("https://sky.example/api/v1/", "https://sky.example"),
    (" https://sky.example/portal/api/v1 ", "https://sky.example/portal"),
])
def test_urls_are_normalised(given, expected):
    assert config.normalize_url(given) == expected


def test_a_url_without_a_scheme_is_a_usage_error():
    with pytest.raises(UsageError, match="http:// or https://"):
        config.normalize_url("skyport.example.com")


def test_a_damaged_config_file_is_reported_not_a_traceback(home, capsys):
    path = config.config_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(CliError, match="not valid JSON"):
        config.load(path)
    assert main(["deployments", "list"]) == 1
    assert capsys.readouterr().err.startswith("skyport: error: ")
