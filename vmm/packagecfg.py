"""The host's package configuration, carried into the sandbox: pip's index URLs, find-links, trusted hosts and
CA file, npm's registries and CA — so `pip install` and `npm install` in the sandbox use the indexes the
user's own tools use. Without this the guest's fresh /etc and home would silently drop them.

What is carried, and what never is:

* **pip**: the configuration files pip itself reads on the host, merged in pip's order (`/etc/xdg/pip/pip.conf`
  and the rest of `$XDG_CONFIG_DIRS`, `/etc/pip.conf`, `~/.pip/pip.conf`, `$XDG_CONFIG_HOME/pip/pip.conf`,
  `$PIP_CONFIG_FILE`; `PIP_CONFIG_FILE=/dev/null` turns them all off, as for pip), becomes the guest's
  `/etc/pip.conf`; the host's `PIP_*` variables become the guest's. Only the options in `PIP_KEYS` pass:
  where packages come from, and harmless behaviour. Others (`proxy`, which would bypass the hook;
  `client-cert`, a private key; `target`, `prefix`, `cache-dir`, host paths) are left out and named.
* **npm**: the user's npmrc (`$NPM_CONFIG_USERCONFIG`, else `~/.npmrc`) becomes the guest's user config
  (`/etc/ifc/npmrc`, named by `NPM_CONFIG_USERCONFIG`), with only the keys in `NPM_KEYS`; the host's
  global npmrc lives under /usr, which the guest sees as it is. Auth entries (`//host/:_authToken`,
  `_auth`, `_password`, `certfile`, `keyfile`, ...) are secrets and are never copied: an entry whose value
  is exactly `${NAME}` for a secret the policy declares is kept as written (the guest's `NAME` is that
  secret's sentinel, which the hook swaps for the real value only towards the hosts the secret is bound
  to); any other is left out, with a line saying how to declare it.
* **Credentials in an index URL** (`https://user:token@host/simple`) are removed from the URL and named.
* **Local paths** (`find-links = /opt/wheels`, `file://` indexes) exist in the sandbox only under /usr (the
  host's, read-only); others are left out and named.
* **CAs** the configuration names (pip's `cert`, npm's `cafile` and `ca`) join the sandbox's trust store
  (`vmm.sandbox.trust_bundle`), and pip's and npm's settings point there. The hook trusts them too for the
  servers behind the tunnels it terminates (a secret bound to a private registry).

The files are root's and read-only in the guest. Every http(s) index named here is returned with where it
was named (`Index`), so `ifc run` can say, before it starts, which of them the policy would refuse.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

GUEST_PIP_CONF = "pip.conf"  # under the guest's /etc: pip's global configuration there
GUEST_NPMRC = "ifc/npmrc"  # under the guest's /etc, named by NPM_CONFIG_USERCONFIG
GUEST_TRUST = "/etc/ssl/certs/ca-certificates.crt"  # vmm.sandbox.SANDBOX_TRUST (not imported: no cycle)
HOST_TRUST = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")  # the host's roots
GUEST_VISIBLE = ("/usr/",)  # host paths the sandbox sees (read-only) besides the workspace

# pip options that say where packages come from (`URL_KEYS`) or how pip behaves, nothing host-specific
URL_KEYS = ("index-url", "extra-index-url", "find-links")
PIP_KEYS = frozenset({*URL_KEYS, "trusted-host", "no-index", "cert", "timeout", "default-timeout", "retries",
                      "pre", "prefer-binary", "only-binary", "no-binary", "disable-pip-version-check",
                      "progress-bar", "no-build-isolation", "no-cache-dir", "use-pep517", "require-hashes",
                      "upgrade-strategy", "break-system-packages", "constraint", "no-input", "require-virtualenv",
                      "root-user-action", "no-color", "quiet", "verbose"})
NPM_KEYS = frozenset({"registry", "strict-ssl", "fetch-retries", "fetch-retry-factor", "fetch-retry-mintimeout",
                      "fetch-retry-maxtimeout", "fetch-timeout", "audit", "fund", "update-notifier", "progress",
                      "loglevel", "save-exact", "save-prefix", "engine-strict", "legacy-peer-deps",
                      "omit-lockfile-registry-resolved", "prefer-offline", "prefer-online", "package-lock",
                      "cafile", "ca", "ca[]", "always-auth"})
NPM_AUTH = frozenset({"_auth", "_authtoken", "_password", "username", "email", "certfile", "keyfile", "otp",
                      "cert", "key"})
HOST_SPECIFIC = "host-specific settings"
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_ENV_ANY = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class PackageConfigError(Exception):
    """A configuration file named by the host's settings that cannot be read or parsed."""


@dataclass(frozen=True)
class Index:
    """An http(s) package index the host's configuration names (credentials removed), and where."""

    url: str
    tool: str  # pip | npm
    source: str  # the file or variable that names it


@dataclass
class PackageConfig:
    files: dict[str, bytes] = field(default_factory=dict)  # under the guest's /etc → content (root's, 0444)
    env: dict[str, str] = field(default_factory=dict)  # the guest's variables
    cas: list[bytes] = field(default_factory=list)  # PEM certificates the sandbox must trust
    indexes: list[Index] = field(default_factory=list)
    left_out: dict[str, list[str]] = field(default_factory=dict)  # why → what was not carried

    def leave_out(self, what: str, why: str) -> None:
        items = self.left_out.setdefault(why, [])
        if what not in items:
            items.append(what)

    def notices(self) -> list[str]:
        """One line for `ifc run` when something was left out, else nothing."""
        if not self.left_out:
            return []
        parts = [f"{', '.join(items)} ({why})" for why, items in self.left_out.items()]
        return ["ifc run: not carried into the sandbox from the host's package configuration: " + "; ".join(parts)]


def collect(environ: Mapping[str, str], secrets: Collection[str] = (), etc: Path = Path("/etc")) -> PackageConfig:
    """Read the host's pip and npm configuration as the user's tools would (`environ`: the host's variables,
    HOME among them; `secrets`: the names of the policy's secrets, the only auth references kept; `etc`: the
    host's system configuration directory)."""
    home = Path(environ.get("HOME") or os.path.expanduser("~"))
    out = PackageConfig()
    _pip(environ, home, etc, out)
    _npm(environ, home, secrets, out)
    return out


# ------------------------------------------------------------------------------------------ pip

def pip_files(environ: Mapping[str, str], home: Path, etc: Path) -> list[Path]:
    """The configuration files pip reads, lowest precedence first (pip's `Configuration` order on Linux)."""
    config_file = environ.get("PIP_CONFIG_FILE")
    if config_file == os.devnull:
        return []
    xdg_dirs = [d for d in (environ.get("XDG_CONFIG_DIRS") or str(etc / "xdg")).split(":") if d]
    files = [Path(d) / "pip" / "pip.conf" for d in xdg_dirs] + [etc / "pip.conf"]
    xdg_home = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
    files += [home / ".pip" / "pip.conf", xdg_home / "pip" / "pip.conf"]
    if config_file:
        files.append(Path(config_file))
    return [f for f in files if f.is_file()]


def _pip(environ: Mapping[str, str], home: Path, etc: Path, out: PackageConfig) -> None:
    merged: dict[str, dict[str, tuple[str, str]]] = {}  # section → key → (value, source)
    for path in pip_files(environ, home, etc):
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError, OSError) as exc:
            raise PackageConfigError(f"cannot read pip's configuration `{path}`: {_first_line(exc)}") from None
        for section in parser.sections():
            for key, value in parser.items(section):
                merged.setdefault(section, {})[key.replace("_", "-")] = (value, str(path))
    parser = configparser.RawConfigParser()
    for section, items in merged.items():
        for key, (value, source) in items.items():
            kept = _unless_token(_pip_option(key, value, source, out), f"pip `{key}` ({source})", out)
            if kept is not None:
                if not parser.has_section(section):
                    parser.add_section(section)
                parser.set(section, key, kept)
    for name, value in sorted(environ.items()):
        if not name.startswith("PIP_") or name == "PIP_CONFIG_FILE" or not value.strip():
            continue  # an empty variable sets nothing
        key = name[4:].lower().replace("_", "-")
        kept = _unless_token(_pip_option(key, value, f"${name}", out), f"pip `${name}`", out)
        if kept is not None:
            out.env[name] = kept
    if parser.sections():
        lines = ["# the host's pip configuration, as `ifc run` carried it (vmm/packagecfg.py)\n"]
        for section in parser.sections():
            lines.append(f"[{section}]\n")
            lines += [f"{key} = {' '.join(value.split())}\n" for key, value in parser.items(section)]
        out.files[GUEST_PIP_CONF] = "".join(lines).encode()


def _pip_option(key: str, value: str, source: str, out: PackageConfig) -> str | None:
    """The value the guest gets for one pip option, or None (left out, and named in `out.left_out`)."""
    if key not in PIP_KEYS:
        out.leave_out(f"pip `{key}`", HOST_SPECIFIC)
        return None
    if key == "cert":
        _add_ca_file(value.strip(), source, out)
        return GUEST_TRUST
    if key == "constraint":  # pinned versions: the file's content, at a path of the guest's
        kept = []
        for path in value.split():
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise PackageConfigError(f"cannot read the constraints file `{path}` named by {source}: "
                                         f"{(exc.strerror or str(exc)).lower()}") from None
            if _unless_token(data.decode("utf-8", "replace"), f"pip constraints `{path}`", out) is None:
                continue
            name = f"ifc/pip-constraints-{len(out.files)}.txt"
            out.files[name] = data
            kept.append("/etc/" + name)
        return " ".join(kept) or None
    if key not in URL_KEYS:
        return value
    kept = [item for item in (_location(raw, "pip", f"`{key}` in {source}", out) for raw in value.split())
            if item is not None]
    return " ".join(kept) if kept else None


def _unless_token(value: str | None, what: str, out: PackageConfig) -> str | None:
    """`value`, unless it holds a token-shaped string (the workspace audit's patterns: a token in an index URL's
    path, an expanded `${VAR}`): the guest's configuration is no labelled file, so reading it taints nothing, and
    a credential there could leave through any allowed endpoint. Then None, and the index is not named."""
    from ifc.check.workspace import scan_content

    if value is None or scan_content(value.encode()) is None:
        return value
    out.indexes = [index for index in out.indexes if index.url not in value.split()]
    out.leave_out(what, "it holds what looks like a credential")
    return None


def _location(raw: str, tool: str, where: str, out: PackageConfig) -> str | None:
    """An index or find-links location as the guest may use it: an http(s) URL without credentials
    (recorded as an `Index`), a path or `file://` URL the sandbox sees; else None."""
    parts = urlsplit(raw)
    if parts.scheme in ("http", "https"):
        if parts.username is not None or parts.password is not None:
            netloc = parts.hostname or ""
            netloc = f"[{netloc}]" if ":" in netloc else netloc
            netloc += f":{parts.port}" if parts.port else ""
            raw = urlunsplit(parts._replace(netloc=netloc))
            out.leave_out(f"the credentials in `{raw}` ({where})",
                          "a secret: declare it as a policy secret bound to that host")
        out.indexes.append(Index(raw, tool, where.split(" in ", 1)[-1]))
        return raw
    path = parts.path if parts.scheme == "file" else raw if not parts.scheme else None
    if path and os.path.isabs(path) and any(os.path.realpath(path).startswith(p) for p in GUEST_VISIBLE):
        return raw
    out.leave_out(f"{tool} `{raw}`", "a host path: the sandbox sees only /usr and the workspace")
    return None


def _add_ca_file(path: str, source: str, out: PackageConfig) -> None:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PackageConfigError(f"cannot read the CA file `{path}` named by {source}: "
                                 f"{(exc.strerror or str(exc)).lower()}") from None
    _add_cas(data, f"`{path}` named by {source}", out)


def _add_cas(data: bytes, what: str, out: PackageConfig) -> None:
    certs = _PEM.findall(data)
    if not certs:
        raise PackageConfigError(f"{what} holds no PEM certificate")
    roots = set(_PEM.findall(host_roots()))  # the sandbox trusts those anyway (`vmm.sandbox.trust_bundle`)
    out.cas += [cert + b"\n" for cert in certs if cert + b"\n" not in out.cas and cert not in roots]


def host_roots() -> bytes:
    """The host's public roots (PEM), or nothing."""
    for path in HOST_TRUST:
        with contextlib.suppress(OSError):
            return Path(path).read_bytes()
    return b""


# ------------------------------------------------------------------------------------------ npm

def _npm(environ: Mapping[str, str], home: Path, secrets: Collection[str], out: PackageConfig) -> None:
    userconfig = environ.get("NPM_CONFIG_USERCONFIG") or environ.get("npm_config_userconfig")
    path = Path(userconfig) if userconfig else home / ".npmrc"
    lines: list[str] = []
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PackageConfigError(f"cannot read npm's configuration `{path}`: {_first_line(exc)}") from None
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line[0] in "#;" or "=" not in line:
                continue
            key, value = (part.strip() for part in line.split("=", 1))
            kept = _npm_entry(key, value, str(path), environ, secrets, out)
            if not key.startswith("//") and key.rpartition(":")[2].lower() not in NPM_AUTH:  # a kept ${SECRET}
                kept = _unless_token(kept, f"npm `{key}` ({path})", out)
            if kept is not None:
                lines.append(f"{key}={kept}\n")
    for name in ("NPM_CONFIG_REGISTRY", "npm_config_registry"):
        if name in environ:
            kept = _unless_token(_location(environ[name], "npm", f"`registry` in ${name}", out), f"npm `${name}`",
                                 out)
            if kept is not None:
                out.env[name] = kept
    if lines:
        out.files[GUEST_NPMRC] = ("; the host's npm user configuration, as `ifc run` carried it\n"
                                  + "".join(lines)).encode()
        out.env["NPM_CONFIG_USERCONFIG"] = "/etc/" + GUEST_NPMRC


def _npm_entry(key: str, value: str, source: str, environ: Mapping[str, str], secrets: Collection[str],
               out: PackageConfig) -> str | None:
    """The value the guest's npmrc gets for one entry, or None."""
    scope, _, name = key.rpartition(":")
    if key.startswith("//") or name.lower() in NPM_AUTH:  # an auth entry, for a registry or for all
        ref = _ENV_REF.match(value)
        if ref and ref.group(1) in secrets:
            return value  # the guest's variable is the secret's sentinel
        name = ref.group(1) if ref else "NPM_TOKEN"
        out.leave_out(f"npm `{key}` in {source}",
                      f"a secret: to use it, declare `secret {name} from env \"{name}\" to \"https://REGISTRY\"` "
                      f"in the policy and write `{key}=${{{name}}}` there")
        return None
    value = _ENV_ANY.sub(lambda m: environ.get(m.group(1), ""), value)  # npm expands these when it reads
    if name == "registry" and (not scope or scope.startswith("@")):
        return _location(value, "npm", f"`{key}` in {source}", out)
    if key not in NPM_KEYS:
        out.leave_out(f"npm `{key}`", HOST_SPECIFIC)
        return None
    if key == "cafile":
        _add_ca_file(value, f"`cafile` in {source}", out)
        return GUEST_TRUST
    if key in ("ca", "ca[]"):
        _add_cas(value.strip('"').replace("\\n", "\n").encode(), f"`{key}` in {source}", out)
        return None  # the guest's cafile (its trust store) holds it
    return value


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.splitlines()[0].lower() if text else type(exc).__name__


def check_indexes(config: PackageConfig, allowed) -> list[str]:
    """One line per index the policy would refuse: `allowed(url)` is (allowed, why), from the monitor."""
    lines = []
    for index in config.indexes:
        ok, why = allowed(index.url)
        if not ok:
            lines.append(f"ifc run: {index.tool}'s index `{index.url}` (named by {index.source}) is refused by the "
                         f"policy ({why}): add an endpoint rule for it, or remove it from that configuration")
    return lines
