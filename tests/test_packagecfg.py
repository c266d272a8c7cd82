"""The host's package configuration as `ifc run` carries it into the sandbox (`vmm.packagecfg`): what pip and
npm read on the host, what passes, what never does (credentials, auth tokens, host paths, a `proxy` that would
bypass the hook), and the line `ifc run` says for an index the policy refuses. End to end (pip installing from
an index named only in the host's config, in both isolations): tests/sandbox_cases.py `host_package_config`."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from tls_support import make_upstream_ca

from ifc.cli.run import _package_config
from ifc.policy import load_policy
from vmm.packagecfg import GUEST_NPMRC, GUEST_PIP_CONF, GUEST_TRUST, PackageConfigError, collect


def _home(tmp_path: Path, pip: str | None = None, npmrc: str | None = None) -> Path:
    home = tmp_path / "home"
    (home / ".config" / "pip").mkdir(parents=True)
    if pip is not None:
        (home / ".config" / "pip" / "pip.conf").write_text(pip)
    if npmrc is not None:
        (home / ".npmrc").write_text(npmrc)
    return home


def _env(home: Path, **more: str) -> dict[str, str]:
    """Only the variables given; no system-wide pip files unless `etc` is given (XDG_CONFIG_DIRS points at an
    empty directory)."""
    return {"HOME": str(home), "XDG_CONFIG_DIRS": str(home / "no-xdg"), **more}


def _pip_conf(config) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read_string(config.files[GUEST_PIP_CONF].decode())
    return parser


def test_pip_files_merge_in_pips_order_and_only_where_packages_come_from_passes(tmp_path):
    home = _home(tmp_path, "[global]\nindex-url = https://user.example/simple\ntimeout = 30\n"
                           "proxy = http://10.0.0.1:8080\nclient-cert = /root/me.pem\ntarget = /opt/x\n"
                           "[install]\ntrusted-host = user.example\n")
    (home / ".pip").mkdir()
    (home / ".pip" / "pip.conf").write_text("[global]\nindex-url = https://legacy.example/simple\nretries = 2\n")
    override = tmp_path / "override.conf"
    override.write_text("[global]\nextra-index-url = https://extra.example/simple https://more.example/s\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "pip.conf").write_text("[global]\nindex-url = https://system.example/simple\npre = 1\n")
    config = collect(_env(home, PIP_CONFIG_FILE=str(override), PIP_INDEX_URL="https://env.example/simple",
                          PIP_PROXY="http://10.0.0.2:3128", PIP_NO_CACHE_DIR="1"), etc=tmp_path / "etc")
    conf = _pip_conf(config)
    assert dict(conf.items("global")) == {  # the user's file over the legacy one; PIP_CONFIG_FILE's added
        "index-url": "https://user.example/simple", "pre": "1", "timeout": "30", "retries": "2",
        "extra-index-url": "https://extra.example/simple https://more.example/s"}
    assert dict(conf.items("install")) == {"trusted-host": "user.example"}
    assert config.env == {"PIP_INDEX_URL": "https://env.example/simple", "PIP_NO_CACHE_DIR": "1"}
    assert [(i.url, i.tool) for i in config.indexes] == [  # overridden values are never used, never named
        ("https://user.example/simple", "pip"), ("https://extra.example/simple", "pip"),
        ("https://more.example/s", "pip"), ("https://env.example/simple", "pip")]
    notice = "\n".join(config.notices())
    for key in ("proxy", "client-cert", "target"):
        assert f"pip `{key}`" in notice
    assert "10.0.0.1" not in config.files[GUEST_PIP_CONF].decode() and "PIP_PROXY" not in config.env


def test_pip_config_file_devnull_turns_every_file_off_as_for_pip(tmp_path):
    home = _home(tmp_path, "[global]\nindex-url = https://user.example/simple\n")
    assert collect(_env(home, PIP_CONFIG_FILE="/dev/null"), etc=home).files == {}
    assert GUEST_PIP_CONF in collect(_env(home), etc=home / "no-etc").files


def test_credentials_in_an_index_url_never_come_in_and_are_named(tmp_path):
    home = _home(tmp_path, "[global]\nindex-url = https://ci:s3cr3t-token@pkgs.example:8443/simple\n")
    config = collect(_env(home, PIP_EXTRA_INDEX_URL="https://__token__:pypi-AgEI@extra.example/simple"),
                     etc=home / "no-etc")
    carried = config.files[GUEST_PIP_CONF].decode() + repr(config.env)
    assert "s3cr3t-token" not in carried and "pypi-AgEI" not in carried
    assert _pip_conf(config).get("global", "index-url") == "https://pkgs.example:8443/simple"
    assert config.env["PIP_EXTRA_INDEX_URL"] == "https://extra.example/simple"
    notice = config.notices()[0]
    assert "the credentials in `https://pkgs.example:8443/simple`" in notice and "policy secret" in notice
    assert "s3cr3t" not in notice and "pypi-AgEI" not in notice


def test_host_paths_the_sandbox_cannot_see_are_left_out_and_usr_is_kept(tmp_path):
    home = _home(tmp_path, "[global]\nfind-links = /opt/wheels /usr/share/python-wheels\n"
                           "extra-index-url = file:///srv/pypi/simple\n")
    config = collect(_env(home), etc=home / "no-etc")
    assert _pip_conf(config).get("global", "find-links") == "/usr/share/python-wheels"
    assert not _pip_conf(config).has_option("global", "extra-index-url")
    notice = config.notices()[0]
    assert "pip `/opt/wheels`, pip `file:///srv/pypi/simple` (a host path" in notice


def test_a_ca_the_config_names_joins_the_sandboxs_trust_and_pip_points_there(tmp_path):
    ca, _, _ = make_upstream_ca(tmp_path, ["pkgs.example"])
    home = _home(tmp_path, f"[global]\ncert = {ca}\n", npmrc=f"cafile={ca}\n")
    config = collect(_env(home), etc=home / "no-etc")
    assert _pip_conf(config).get("global", "cert") == GUEST_TRUST
    assert config.cas == [ca.read_bytes().strip() + b"\n"]  # once, though both name it
    assert f"cafile={GUEST_TRUST}" in config.files[GUEST_NPMRC].decode()


def test_a_ca_file_that_cannot_be_read_is_an_error_naming_it(tmp_path):
    home = _home(tmp_path, f"[global]\ncert = {tmp_path / 'missing.pem'}\n")
    with pytest.raises(PackageConfigError, match=r"cannot read the CA file `.*missing\.pem` named by .*pip\.conf"):
        collect(_env(home), etc=home / "no-etc")
    (tmp_path / "empty.pem").write_text("not a certificate\n")
    home = _home(tmp_path / "2", f"[global]\ncert = {tmp_path / 'empty.pem'}\n")
    with pytest.raises(PackageConfigError, match="holds no PEM certificate"):
        collect(_env(home), etc=home / "no-etc")


def test_npm_registries_pass_and_auth_tokens_never_do_unless_a_policy_secret_is_referenced(tmp_path):
    home = _home(tmp_path, npmrc=(
        "registry=https://npm.corp.example/\n@acme:registry=https://npm.acme.example/\n"
        "//npm.corp.example/:_authToken=npm_LITERALtoken0123\n"
        "//npm.acme.example/:_authToken=${NPM_TOKEN}\n"
        "//other.example/:_authToken=${HOME}\n_auth=dXNlcjpwYXNz\nkeyfile=/root/.ssh/npm.key\n"
        "; a comment\nprefix=/root/.npm-global\nfund=false\n"))
    config = collect(_env(home), secrets={"NPM_TOKEN"}, etc=home / "no-etc")
    npmrc = config.files[GUEST_NPMRC].decode()
    assert npmrc.splitlines()[1:] == ["registry=https://npm.corp.example/", "@acme:registry=https://npm.acme.example/",
                                      "//npm.acme.example/:_authToken=${NPM_TOKEN}", "fund=false"]
    assert config.env["NPM_CONFIG_USERCONFIG"] == "/etc/" + GUEST_NPMRC
    assert [i.url for i in config.indexes] == ["https://npm.corp.example/", "https://npm.acme.example/"]
    notice = config.notices()[0]
    for key in ("//npm.corp.example/:_authToken", "//other.example/:_authToken", "_auth", "keyfile"):
        assert f"npm `{key}`" in notice
    assert "declare `secret HOME from env" in notice  # a reference to no policy secret: how to make it one
    assert "npm `prefix`" in notice
    assert "LITERALtoken" not in notice and "dXNlcjpwYXNz" not in notice


def test_ifc_run_names_each_index_the_policy_refuses(tmp_path):
    home = _home(tmp_path, "[global]\nindex-url = https://pypi.corp.example/simple\n"
                           "extra-index-url = https://allowed.example/simple\n")
    policy_file = tmp_path / "p.flow"
    policy_file.write_text('labels { secrecy public < internal }\nfiles { "**" internal }\n'
                           'endpoints { "https://allowed.example" clearance internal }\n')
    policy = load_policy(str(policy_file))
    _, lines = _package_config(policy, policy.agent_for("none"), _env(home), etc=home / "no-etc")
    refused = [line for line in lines if "refused by the policy" in line]
    assert refused == ["ifc run: pip's index `https://pypi.corp.example/simple` (named by "
                       f"{home / '.config/pip/pip.conf'}) is refused by the policy (no endpoint rule names "
                       "GET https://pypi.corp.example:443/simple: unknown endpoints are denied): add an endpoint rule "
                       "for it, or remove it from that configuration"]


def test_a_value_holding_a_token_shaped_string_stays_out_even_without_userinfo(tmp_path):
    token = "ghp_" + "Zq8Lm2Xv7Rt4Wp9Ks3Jd6Hf1Nb5Cg0Ya8Ue2"
    home = _home(tmp_path, f"[global]\nindex-url = https://pkgs.example/{token}/simple\ntimeout = 9\n",
                 npmrc="registry=https://npm.example/${REG_TOKEN}/\nfund=false\n")
    config = collect(_env(home, REG_TOKEN=token), etc=home / "no-etc")
    carried = b"".join(config.files.values()).decode() + repr(config.env)
    assert token not in carried and token not in "\n".join(config.notices())
    assert dict(_pip_conf(config).items("global")) == {"timeout": "9"}
    assert config.indexes == []  # what is not carried is not checked against the policy either
    assert "looks like a credential" in config.notices()[0]


def test_a_constraints_file_comes_in_by_content_unless_it_holds_a_credential(tmp_path):
    pins = tmp_path / "constraints.txt"
    pins.write_text("torch<=2.14.1\n")
    leaky = tmp_path / "leaky.txt"
    leaky.write_text("--index-url https://ci:Xk29fLq7Vb3@pkgs.example/simple\nrequests==2.0\n")
    home = _home(tmp_path, f"[global]\nconstraint = {pins} {leaky}\n")
    config = collect(_env(home), etc=home / "no-etc")
    (guest_path,) = _pip_conf(config).get("global", "constraint").split()
    assert config.files[guest_path.removeprefix("/etc/")] == b"torch<=2.14.1\n"
    assert b"Xk29fLq7Vb3" not in b"".join(config.files.values())
    assert f"pip constraints `{leaky}`" in config.notices()[0]
