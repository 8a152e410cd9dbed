"""Settings: layering, provenance of each value, and validation errors that name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from jhansi.config import load_settings, parse_duration, parse_size
from jhansi.errors import ConfigError, ExitCode
from jhansi.paths import Paths
from jhansi.trust import trust


def _paths(home: Path) -> Paths:
    return Paths.from_environment({"JHANSI_HOME": str(home)})


def test_defaults_are_hardened(tmp_path: Path) -> None:
    settings = load_settings(start=tmp_path, environ={}, paths=_paths(tmp_path / "h"))
    assert settings.sandbox.backend == "auto"
    assert settings.sandbox.memory == 1 << 30
    assert settings.sandbox.pids == 256
    assert settings.sandbox.timeout == 300.0
    assert settings.sandbox.tmp_size == 256 << 20
    assert settings.sources["sandbox.memory"] == "default"
    assert settings.files == ()


def test_layers_apply_in_order_and_record_their_source(tmp_path: Path) -> None:
    paths = _paths(tmp_path / "h")
    paths.config.mkdir(parents=True)
    paths.user_config_file.write_text(
        '[sandbox]\nmemory = "2g"\npids = 100\ncpus = 2\ntimeout = "1m"\n'
    )
    project = tmp_path / "proj"
    (project / "sub").mkdir(parents=True)
    (project / "jhansi.toml").write_text(
        '[sandbox]\npids = 50\ncpus = 0.5\n[ledger]\npath = "led"\n'
    )
    trust(project / "jhansi.toml", paths=paths)  # its ledger.path needs trust
    settings = load_settings(
        start=project / "sub",
        environ={"JHANSI_SANDBOX_CPUS": "1.5", "JHANSI_REQUIRE_ENGINES": "1"},
        flags={("sandbox", "timeout"): "30s", ("sandbox", "backend"): None},
        paths=paths,
    )
    assert settings.sandbox.memory == 2 << 30
    assert settings.sources["sandbox.memory"] == f"user config ({paths.user_config_file})"
    assert settings.sandbox.pids == 50
    assert settings.sources["sandbox.pids"] == f"project config ({project / 'jhansi.toml'})"
    assert settings.sandbox.cpus == 1.5
    assert settings.sources["sandbox.cpus"] == "environment (JHANSI_SANDBOX_CPUS)"
    assert settings.sandbox.timeout == 30.0
    assert settings.sources["sandbox.timeout"] == "command line"
    assert settings.sandbox.backend == "auto"  # a flag that was not given changes nothing
    # a relative path in a file is relative to that file
    assert settings.ledger.path == str(project / "led")
    assert settings.files == (paths.user_config_file, project / "jhansi.toml")


def test_pyproject_tool_table_is_project_config(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.jhansi.sandbox]\nbackend = "bwrap"\n'
    )
    settings = load_settings(start=tmp_path, environ={}, paths=_paths(tmp_path / "h"))
    assert settings.sandbox.backend == "bwrap"


def test_pyproject_without_table_ends_the_search(tmp_path: Path) -> None:
    (tmp_path / "jhansi.toml").write_text('[sandbox]\nbackend = "bwrap"\n')
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "pyproject.toml").write_text('[project]\nname = "inner"\n')
    settings = load_settings(start=inner, environ={}, paths=_paths(tmp_path / "h"))
    assert settings.sandbox.backend == "auto"


def test_ledger_alias_and_mask_list_from_environment(tmp_path: Path) -> None:
    settings = load_settings(
        start=tmp_path,
        environ={"JHANSI_LEDGER": "/srv/ledger", "JHANSI_SANDBOX_MASK": "a/*, *.p12"},
        paths=_paths(tmp_path / "h"),
    )
    assert settings.ledger.path == "/srv/ledger"
    assert settings.sources["ledger.path"] == "environment (JHANSI_LEDGER)"
    assert settings.sandbox.mask == ("a/*", "*.p12")


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("[sandbox]\nmemroy = '1g'\n", ["unknown key [sandbox] memroy", "did you mean 'memory'"]),
        ("[sandbx]\n", ["unknown section [sandbx]", "did you mean 'sandbox'"]),
        ("[sandbox]\npids = 'many'\n", ["[sandbox] pids = 'many'", "a positive whole number"]),
        ("[sandbox]\nmemory = -5\n", ["[sandbox] memory = -5", "a size such as 512m"]),
        ("[sandbox]\nbackend = 'vm'\n", ["[sandbox] backend = 'vm'", "one of auto, docker, bwrap"]),
        ("[sandbox]\ncpus = true\n", ["[sandbox] cpus = True", "number of CPUs"]),
        ("sandbox = 3\n", ["sandbox must be a table"]),
        ("[sandbox\nmemory = 1\n", ["is not valid TOML", "line 1"]),
    ],
)
def test_malformed_project_config_names_file_key_and_form(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    config = tmp_path / "jhansi.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(start=tmp_path, environ={}, paths=_paths(tmp_path / "h"))
    error = caught.value
    assert error.exit_code == ExitCode.USAGE
    assert str(config) in error.message
    for fragment in fragments:
        assert fragment in error.message
    assert error.hint


def test_non_utf8_config_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "jhansi.toml").write_bytes(b"[sandbox]\nimage = '\xff'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(start=tmp_path, environ={}, paths=_paths(tmp_path / "h"))


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            start=tmp_path, environ={"JHANSI_SANDBOX_PIDS": "0"}, paths=_paths(tmp_path / "h")
        )
    assert "JHANSI_SANDBOX_PIDS" in caught.value.message


@pytest.mark.parametrize(
    ("text", "size"),
    [("512m", 512 << 20), ("1g", 1 << 30), ("256MiB", 256 << 20), ("2 GB", 2 << 30), (4096, 4096)],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "lots", "-1m", 0, True, "1x"])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90.0), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("30d", 2592000.0)],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_policy_network_and_secrets_sections(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "jhansi.toml").write_text(
        "[policy]\n"
        'advisory_db = "osv"\n'
        "min_package_age_days = 0\n"
        'allow = ["my-lib"]\n'
        'ignore = [{id = "PYSEC-2018-28", reason = "not reachable", until = 2026-12-31}]\n'
        'licenses.deny = ["GPL-3.0-only"]\n'
        'licenses.unknown = "deny"\n'
        "[network]\n"
        'allow = ["api.example.com", "example.org:8443"]\n'
        'allow_private = ["10.0.0.0/8"]\n'
        "[secrets.API_KEY]\n"
        'hosts = ["api.example.com"]\n'
        'header = "Authorization"\n'
    )
    paths = _paths(tmp_path / "h")
    trust(project / "jhansi.toml", paths=paths)  # network, secrets and policy data need it
    settings = load_settings(start=project, environ={}, paths=paths)
    policy = settings.policy
    assert policy.advisory_db == str(project / "osv")  # relative to the file that set it
    assert policy.min_package_age_days == 0
    assert policy.allow == ("my-lib",)
    (rule,) = policy.ignore
    assert (rule.id, rule.reason, str(rule.until)) == (
        "PYSEC-2018-28",
        "not reachable",
        "2026-12-31",
    )
    assert policy.licenses.deny == ("GPL-3.0-only",)
    assert policy.licenses.unknown == "deny"
    assert settings.network.allow == ("api.example.com", "example.org:8443")
    assert settings.secrets["API_KEY"].hosts == ("api.example.com",)
    assert settings.secrets["API_KEY"].header == "Authorization"
    assert settings.sources["secrets.API_KEY"].startswith("project config")
    assert settings.as_json()["policy"]["ignore"][0]["until"] == "2026-12-31"


def test_policy_defaults_are_strict(tmp_path: Path) -> None:
    settings = load_settings(start=tmp_path, environ={}, paths=_paths(tmp_path / "h"))
    assert settings.policy.vulnerabilities == "deny"
    assert settings.policy.young_packages == "deny"
    assert settings.policy.min_package_age_days == 30
    assert settings.network.allow == ()
    assert settings.secrets == {}


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ('[policy]\nignore = [{id = "X"}]\n', "reason"),
        ('[policy]\nignore = [{id = "X", reason = "r", until = "soon"}]\n', "until"),
        ('[policy]\nlicenses.unknown = "maybe"\n', "unknown"),
        ('[network]\nallow_private = ["not-a-net"]\n', "allow_private"),
        ("[secrets.API_KEY]\nhosts = []\n", "secrets.API_KEY"),
        ('[secrets."bad-name"]\nhosts = ["a.example"]\n', "not a valid name"),
        ("[secrets.K]\nport = 1\n", "secrets.K"),
    ],
)
def test_policy_and_secret_errors_name_the_key(tmp_path: Path, toml: str, named: str) -> None:
    (tmp_path / "jhansi.toml").write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(start=tmp_path, environ={}, paths=_paths(tmp_path / "h"))
    assert named in caught.value.message
    assert caught.value.exit_code == ExitCode.USAGE
