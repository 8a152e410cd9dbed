"""Project configuration is untrusted input: trust classes, comparisons, the store,
executable paths and the provenance each load records."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from jhansi import trust_store as store
from jhansi.config import (
    ADDS_ONLY,
    DEFAULT_MASK,
    NEEDS_TRUST,
    NEUTRAL,
    SCHEMA,
    TIGHTEN_ONLY,
    LicensePolicy,
    load_settings,
)
from jhansi.errors import ConfigError, ExitCode
from jhansi.paths import Paths
from jhansi.trust import trust

#: The decisions, key by key: a change to a key's class must change this table too.
CLASSES = {
    "sandbox.backend": NEUTRAL,
    "sandbox.engine_url": NEEDS_TRUST,
    "sandbox.runtime": NEEDS_TRUST,
    "sandbox.image": NEEDS_TRUST,
    "sandbox.bwrap": NEEDS_TRUST,
    "sandbox.python": NEEDS_TRUST,
    "sandbox.memory": TIGHTEN_ONLY,
    "sandbox.cpus": TIGHTEN_ONLY,
    "sandbox.pids": TIGHTEN_ONLY,
    "sandbox.tmp_size": TIGHTEN_ONLY,
    "sandbox.timeout": TIGHTEN_ONLY,
    "sandbox.output_limit": TIGHTEN_ONLY,
    "sandbox.max_script_size": TIGHTEN_ONLY,
    "sandbox.mask": ADDS_ONLY,
    "policy.advisory_db": NEEDS_TRUST,
    "policy.vulnerability_service": NEEDS_TRUST,
    "policy.osv_url": NEEDS_TRUST,
    "policy.require_audit": TIGHTEN_ONLY,
    "policy.vulnerabilities": TIGHTEN_ONLY,
    "policy.min_package_age_days": TIGHTEN_ONLY,
    "policy.young_packages": TIGHTEN_ONLY,
    "policy.unpopular_packages": TIGHTEN_ONLY,
    "policy.allow": NEEDS_TRUST,
    "policy.ignore": NEEDS_TRUST,
    "policy.licenses": TIGHTEN_ONLY,
    "network.allow": NEEDS_TRUST,
    "network.allow_private": NEEDS_TRUST,
    "network.upstream_ca": NEEDS_TRUST,
    "ledger.path": NEEDS_TRUST,
}


def test_every_key_has_its_decided_class() -> None:
    found = {f"{s}.{k}": o.trust for s, opts in SCHEMA.items() for k, o in opts.items()}
    assert found == CLASSES
    for options in SCHEMA.values():
        for option in options.values():
            assert (option.tighter is not None) == (option.trust == TIGHTEN_ONLY)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths.from_environment({"JHANSI_HOME": str(tmp_path / "home")})


def _project(tmp_path: Path, text: str, name: str = "jhansi.toml") -> Path:
    project = tmp_path / "proj"
    project.mkdir(exist_ok=True)
    (project / name).write_text(text)
    return project


@pytest.mark.parametrize(
    "text",
    [
        '[sandbox]\nmemory = "512m"\ncpus = 0.5\npids = 10\ntmp_size = "1m"\n',
        '[sandbox]\ntimeout = "10s"\noutput_limit = "1k"\nbackend = "bwrap"\n',
        "[sandbox]\nmask = ['secrets/*']\n",
        '[policy]\nrequire_audit = true\nunpopular_packages = "deny"\n',
        '[policy]\nvulnerabilities = "deny"\nyoung_packages = "deny"\n',
        "[policy]\nmin_package_age_days = 90\n",
        '[policy]\nlicenses = {allow = ["MIT"], deny = ["GPL-3.0-only"], unknown = "deny"}\n',
        '[sandbox]\nimage = "python:3.12-slim"\n',  # the lower layers' own value
    ],
)
def test_tightening_needs_no_trust(tmp_path: Path, paths: Paths, text: str) -> None:
    settings = load_settings(start=_project(tmp_path, text), environ={}, paths=paths)
    (entry,) = settings.provenance
    assert entry.layer == "project"
    assert entry.trusted is None
    assert entry.needed_trust == ()
    assert not store.store_path(paths).exists()  # the store was not even read


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[sandbox]\npython = "python3"\n', "sandbox.python"),
        ('[sandbox]\nbwrap = "/usr/bin/bwrap"\n', "sandbox.bwrap"),
        ('[sandbox]\nbwrap = "bundled"\n', "sandbox.bwrap"),
        ('[sandbox]\nengine_url = "tcp://evil:2375"\n', "sandbox.engine_url"),
        ('[sandbox]\nruntime = "runc"\n', "sandbox.runtime"),
        ('[sandbox]\nimage = "evil/python"\n', "sandbox.image"),
        ('[sandbox]\nmemory = "2g"\n', "sandbox.memory"),
        ("[sandbox]\ncpus = 2\n", "sandbox.cpus"),
        ("[sandbox]\npids = 257\n", "sandbox.pids"),
        ('[sandbox]\ntimeout = "301"\n', "sandbox.timeout"),
        ('[sandbox]\noutput_limit = "2m"\n', "sandbox.output_limit"),
        ('[sandbox]\ntmp_size = "1g"\n', "sandbox.tmp_size"),
        ('[policy]\nadvisory_db = "osv"\n', "policy.advisory_db"),
        ('[policy]\nvulnerability_service = "osv"\n', "policy.vulnerability_service"),
        ('[policy]\nosv_url = "https://x.example/v1/query"\n', "policy.osv_url"),
        ('[policy]\nvulnerabilities = "warn"\n', "policy.vulnerabilities"),
        ('[policy]\nyoung_packages = "warn"\n', "policy.young_packages"),
        ('[policy]\nunpopular_packages = "ignore"\n', "policy.unpopular_packages"),
        ("[policy]\nmin_package_age_days = 0\n", "policy.min_package_age_days"),
        ('[policy]\nallow = ["x"]\n', "policy.allow"),
        ('[policy]\nignore = [{id = "X-1", reason = "r"}]\n', "policy.ignore"),
        ('[policy]\nlicenses = {unknown = "warn", deny = []}\n', None),  # the defaults
        ('[network]\nallow = ["example.org"]\n', "network.allow"),
        ('[network]\nallow_private = ["10.0.0.0/8"]\n', "network.allow_private"),
        ('[network]\nupstream_ca = "/etc/ssl/x.pem"\n', "network.upstream_ca"),
        ('[ledger]\npath = "led"\n', "ledger.path"),
        ('[secrets.GITHUB_TOKEN]\nhosts = ["evil.example"]\n', "secrets.GITHUB_TOKEN"),
    ],
)
def test_widening_is_refused_naming_the_file_key_and_command(
    tmp_path: Path, paths: Paths, text: str, key: str | None
) -> None:
    project = _project(tmp_path, text)
    if key is None:
        load_settings(start=project, environ={}, paths=paths)
        return
    with pytest.raises(ConfigError) as caught:
        load_settings(start=project, environ={}, paths=paths)
    error = caught.value
    assert error.exit_code == ExitCode.USAGE == 2
    assert str(project / "jhansi.toml") in error.message
    assert key in error.message
    assert error.hint.endswith(f"jhansi trust {(project / 'jhansi.toml').absolute()}")
    # config show's way: no error, the value left out and said why
    shown = load_settings(start=project, environ={}, paths=paths, strict=False)
    assert [r.key for r in shown.refused] == [key]
    assert shown.sources.get(key, "default") in ("default",)


def test_compared_with_the_users_layer_not_the_defaults(tmp_path: Path, paths: Paths) -> None:
    paths.config.mkdir(parents=True)
    paths.user_config_file.write_text(
        '[sandbox]\ntimeout = "1h"\n[network]\nallow = ["example.org"]\n'
        '[policy]\nlicenses = {allow = ["MIT", "BSD-3-Clause"]}\n'
    )
    ok = _project(
        tmp_path,
        '[sandbox]\ntimeout = "10m"\n[network]\nallow = ["example.org"]\n'
        '[policy]\nlicenses = {allow = ["MIT"]}\n',
    )
    settings = load_settings(start=ok, environ={}, paths=paths)
    assert settings.sandbox.timeout == 600.0
    assert settings.policy.licenses.allow == ("MIT",)
    for widening in (
        '[sandbox]\ntimeout = "2h"\n',
        '[policy]\nlicenses = {allow = ["MIT", "GPL-3.0-only"]}\n',
        "[policy]\nlicenses = {allow = []}\n",  # empty means any licence: looser
    ):
        (ok / "jhansi.toml").write_text(widening)
        with pytest.raises(ConfigError):
            load_settings(start=ok, environ={}, paths=paths)


def test_environment_and_flags_need_no_trust(tmp_path: Path, paths: Paths) -> None:
    settings = load_settings(
        start=tmp_path,
        environ={"JHANSI_SANDBOX_TIMEOUT": "1h", "JHANSI_NETWORK_ALLOW": "example.org"},
        flags={("sandbox", "python"): "/usr/bin/python3"},
        paths=paths,
    )
    assert settings.sandbox.timeout == 3600.0
    assert settings.sandbox.python == "/usr/bin/python3"
    # and over an untrusted project file, they are still the user's own choice
    project = _project(tmp_path, '[sandbox]\nmemory = "256m"\n')
    settings = load_settings(start=project, environ={"JHANSI_SANDBOX_MEMORY": "4g"}, paths=paths)
    assert settings.sandbox.memory == 4 << 30


def test_masks_only_add(tmp_path: Path, paths: Paths) -> None:
    paths.config.mkdir(parents=True)
    paths.user_config_file.write_text('[sandbox]\nmask = ["user-secret"]\n')
    project = _project(tmp_path, '[sandbox]\nmask = ["proj-secret"]\n')
    settings = load_settings(
        start=project, environ={"JHANSI_SANDBOX_MASK": "env-secret"}, paths=paths
    )
    assert settings.sandbox.mask == ("user-secret", "proj-secret", "env-secret")
    assert set(DEFAULT_MASK).isdisjoint(settings.sandbox.mask)  # added to by the runner


def test_trusted_content_applies_and_any_change_untrusts(tmp_path: Path, paths: Paths) -> None:
    project = _project(tmp_path, '[network]\nallow = ["example.org"]\n')
    config = project / "jhansi.toml"
    done = trust(config, paths=paths)
    assert done.needs_trust == ("network.allow",)
    settings = load_settings(start=project, environ={}, paths=paths)
    assert settings.network.allow == ("example.org",)
    (entry,) = settings.provenance
    assert (entry.trusted, entry.needed_trust) == (True, ("network.allow",))
    record = entry.as_record()
    assert record["blake3"] == done.entry.blake3
    assert record["layer"] == "project"
    json.dumps(record)

    file = store.store_path(paths)
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert str(config.resolve()) in json.loads(file.read_text())["files"]

    config.write_text(config.read_text() + "\n")
    with pytest.raises(ConfigError, match="changed since it was trusted"):
        load_settings(start=project, environ={}, paths=paths)
    trust(config, paths=paths)
    load_settings(start=project, environ={}, paths=paths)
    assert store.revoke(config, paths=paths) is not None
    assert store.revoke(config, paths=paths) is None
    with pytest.raises(ConfigError, match="not trusted"):
        load_settings(start=project, environ={}, paths=paths)


def test_trust_is_keyed_by_the_path_where_the_file_is_found(tmp_path: Path, paths: Paths) -> None:
    """Trusted content copied or linked elsewhere is not trusted there (no borrowed
    trust); relative paths in a trusted file resolve next to its real location."""
    project = _project(tmp_path, '[policy]\nadvisory_db = "osv"\n')
    trust(project / "jhansi.toml", paths=paths)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "jhansi.toml").write_bytes((project / "jhansi.toml").read_bytes())
    with pytest.raises(ConfigError):
        load_settings(start=elsewhere, environ={}, paths=paths)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "jhansi.toml").symlink_to(project / "jhansi.toml")
    with pytest.raises(ConfigError, match="not trusted"):
        load_settings(start=linked, environ={}, paths=paths)
    trust(linked / "jhansi.toml", paths=paths)  # trusted there, on purpose
    settings = load_settings(start=linked, environ={}, paths=paths)
    assert settings.policy.advisory_db == str(project.resolve() / "osv")


def test_pyproject_tool_table_is_trusted_as_a_whole_file(tmp_path: Path, paths: Paths) -> None:
    project = _project(
        tmp_path,
        '[project]\nname = "x"\n[tool.jhansi.sandbox]\nruntime = "runsc"\n',
        name="pyproject.toml",
    )
    with pytest.raises(ConfigError, match=r"sandbox\.runtime"):
        load_settings(start=project, environ={}, paths=paths)
    trust(project / "pyproject.toml", paths=paths)
    assert load_settings(start=project, environ={}, paths=paths).sandbox.runtime == "runsc"
    (project / "pyproject.toml").write_text(
        (project / "pyproject.toml").read_text().replace('"x"', '"y"')
    )
    with pytest.raises(ConfigError, match="changed since"):
        load_settings(start=project, environ={}, paths=paths)


def test_trust_refuses_what_is_not_configuration(tmp_path: Path, paths: Paths) -> None:
    bad = _project(tmp_path, "[sandbox]\nbogus = 1\n")
    with pytest.raises(ConfigError, match="unknown key"):
        trust(bad / "jhansi.toml", paths=paths)
    (bad / "pyproject.toml").write_text('[project]\nname = "x"\n')
    with pytest.raises(ConfigError, match=r"no \[tool\.jhansi\]"):
        trust(bad / "pyproject.toml", paths=paths)
    with pytest.raises(ConfigError, match="not a file"):
        trust(bad / "missing.toml", paths=paths)
    assert store.entries(paths) == []


def test_a_corrupt_store_is_an_error_with_a_hint(tmp_path: Path, paths: Paths) -> None:
    project = _project(tmp_path, '[network]\nallow = ["example.org"]\n')
    store.store_path(paths).parent.mkdir(parents=True)
    store.store_path(paths).write_text("{not json")
    with pytest.raises(ConfigError) as caught:
        load_settings(start=project, environ={}, paths=paths)
    assert "Remove" in caught.value.hint


@pytest.mark.parametrize("key", ["python", "bwrap"])
def test_executables_are_never_relative_to_a_file(tmp_path: Path, paths: Paths, key: str) -> None:
    paths.config.mkdir(parents=True)
    for value in ("./fakepy", "bin/python", "../x/bwrap"):
        paths.user_config_file.write_text(f'[sandbox]\n{key} = "{value}"\n')
        with pytest.raises(ConfigError, match="relative path") as caught:
            load_settings(start=tmp_path, environ={}, paths=paths)
        assert "never resolved relative to config.toml" in caught.value.hint
    # absolute paths and (for python) bare command names stay as written
    paths.user_config_file.write_text(f'[sandbox]\n{key} = "/opt/x/{key}"\n')
    assert getattr(load_settings(start=tmp_path, environ={}, paths=paths).sandbox, key) == (
        f"/opt/x/{key}"
    )
    if key == "python":
        paths.user_config_file.write_text('[sandbox]\npython = "python3.12"\n')
        loaded = load_settings(start=tmp_path, environ={}, paths=paths)
        assert loaded.sandbox.python == "python3.12"


def test_env_and_flags_resolve_relative_executables_against_the_cwd(
    tmp_path: Path, paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(
        start=tmp_path,
        environ={"JHANSI_SANDBOX_BWRAP": "bin/bwrap"},
        flags={("sandbox", "python"): "venv/bin/python"},
        paths=paths,
    )
    assert settings.sandbox.bwrap == str(tmp_path / "bin" / "bwrap")
    assert settings.sandbox.python == str(tmp_path / "venv" / "bin" / "python")


def test_jhansi_config_names_the_user_layer(tmp_path: Path, paths: Paths) -> None:
    workflow = tmp_path / "ci.toml"
    workflow.write_text('[network]\nallow = ["example.org"]\n')
    settings = load_settings(start=tmp_path, environ={"JHANSI_CONFIG": str(workflow)}, paths=paths)
    assert settings.network.allow == ("example.org",)
    (entry,) = settings.provenance
    assert (entry.path, entry.layer) == (workflow, "user")
    with pytest.raises(ConfigError, match="JHANSI_CONFIG"):
        load_settings(
            start=tmp_path, environ={"JHANSI_CONFIG": str(tmp_path / "no.toml")}, paths=paths
        )


def test_provenance_lists_every_file_with_its_hash(tmp_path: Path, paths: Paths) -> None:
    import blake3

    paths.config.mkdir(parents=True)
    paths.user_config_file.write_text('[sandbox]\nmemory = "2g"\n')
    project = _project(tmp_path, '[sandbox]\nmemory = "1g"\n')
    settings = load_settings(start=project, environ={}, paths=paths)
    user, proj = settings.provenance
    assert user.layer == "user"
    assert user.blake3 == blake3.blake3(paths.user_config_file.read_bytes()).hexdigest()
    assert proj.layer == "project"
    assert proj.blake3 == blake3.blake3((project / "jhansi.toml").read_bytes()).hexdigest()


def test_licence_comparison() -> None:
    tighter = SCHEMA["policy"]["licenses"].tighter
    assert tighter is not None
    base = LicensePolicy(allow=("MIT", "BSD-3-Clause"), deny=("GPL-3.0-only",), unknown="warn")
    assert tighter(LicensePolicy(("MIT",), ("GPL-3.0-only", "AGPL-3.0"), "deny"), base)
    assert not tighter(LicensePolicy(("MIT",), (), "warn"), base)  # drops a deny
    assert not tighter(LicensePolicy(("MIT",), ("GPL-3.0-only",), "warn"), replace_unknown(base))
    assert not tighter(LicensePolicy((), ("GPL-3.0-only",), "warn"), base)  # any licence
    assert tighter(LicensePolicy(("Apache-2.0",), (), "warn"), LicensePolicy())


def replace_unknown(policy: LicensePolicy) -> LicensePolicy:
    return LicensePolicy(policy.allow, policy.deny, "deny")


def test_a_config_in_or_above_a_directory_anyone_writes_is_not_read(
    tmp_path: Path, paths: Paths
) -> None:
    # Another user left a jhansi.toml in a shared directory (/tmp-like: 1777) above the
    # project: it must not configure the run, even with tightening values only.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "jhansi.toml").write_text('[sandbox]\ntimeout = "1s"\nbackend = "docker"\n')
    project = shared / "rootproj"
    project.mkdir()
    settings = load_settings(start=project, environ={}, paths=paths)
    assert settings.sandbox.timeout == 300.0
    assert settings.sandbox.backend == "auto"
    assert settings.provenance == ()
    # A config file anyone may write is refused where it is found.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "jhansi.toml").write_text('[sandbox]\ntimeout = "1s"\n')
    (mine / "jhansi.toml").chmod(0o666)
    with pytest.raises(ConfigError, match="any user"):
        load_settings(start=mine, environ={}, paths=paths)


def test_a_config_another_user_can_write_is_refused(tmp_path: Path, paths: Paths) -> None:
    # A file another uid owns (here: nobody's; handing it over needs root, as CI runs).
    project = _project(tmp_path, '[sandbox]\ntimeout = "3s"\n')
    if os.getuid() == 0:
        os.chown(project / "jhansi.toml", 65534, -1)
        with pytest.raises(ConfigError, match="belongs to uid 65534"):
            load_settings(start=project, environ={}, paths=paths)
    # A pyproject.toml without [tool.jhansi] configures nothing: whoever owns it.
    other = tmp_path / "other"
    other.mkdir()
    (other / "pyproject.toml").write_text('[project]\nname = "x"\n')
    (other / "pyproject.toml").chmod(0o666)
    assert load_settings(start=other, environ={}, paths=paths).provenance == ()
