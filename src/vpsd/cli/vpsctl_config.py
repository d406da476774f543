"""vpsctl's configuration: the API URL and token from flags, environment or config file.

Precedence, per setting: ``--url``/``--token`` flags, then ``VPSD_URL``/``VPSD_TOKEN``, then
the config file that ``vpsctl login`` writes (``$VPSCTL_CONFIG``, else
``$XDG_CONFIG_HOME/vpsctl/config.toml``, else ``~/.config/vpsctl/config.toml``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

CONFIG_ENV = "VPSCTL_CONFIG"
URL_ENV = "VPSD_URL"
TOKEN_ENV = "VPSD_TOKEN"  # noqa: S105 (a variable name, not a secret)


class ConfigError(Exception):
    """vpsctl is not configured well enough to run (exit code 2)."""


@dataclass(frozen=True)
class Connection:
    """Where the API is and the token to use."""

    url: str
    token: str


def config_path() -> Path:
    """The config file's path (it need not exist)."""
    if explicit := os.environ.get(CONFIG_ENV):
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / "vpsctl" / "config.toml"


def read_config(path: Path) -> dict[str, str]:
    """The file's ``url`` and ``token`` (absent keys left out); {} if there is no file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    return {key: data[key] for key in ("url", "token") if isinstance(data.get(key), str)}


def resolve(url_flag: str | None, token_flag: str | None) -> Connection:
    """The URL and token to use, by the documented precedence; ConfigError if one is missing.

    Flags arrive here already merged with their environment variables (Typer's ``envvar``),
    so an empty environment variable counts as unset.
    """
    file = read_config(config_path()) if not (url_flag and token_flag) else {}
    url = url_flag or file.get("url", "")
    token = token_flag or file.get("token", "")
    if not url:
        raise ConfigError(f"no API URL: pass --url, set {URL_ENV}, or run 'vpsctl login --url URL'")
    if not token:
        raise ConfigError(
            f"no API token: pass --token, set {TOKEN_ENV}, or run 'vpsctl login --url {url}'"
        )
    return Connection(url, token)


def _toml_string(value: str) -> str:
    # JSON string escapes (\" \\ \n \uXXXX) are all valid in TOML basic strings.
    return json.dumps(value, ensure_ascii=True)


def write_config(path: Path, url: str, token: str) -> None:
    """Save ``url`` and ``token`` to ``path``, readable by the owner only (mode 0600).

    The file is written beside its final name and renamed over it, so a crash never leaves
    half a file, and it is created 0600: the token is never readable by others, not even
    for an instant.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = (
        "# written by 'vpsctl login'; holds an API token: keep it private (mode 0600)\n"
        f"url = {_toml_string(url)}\n"
        f"token = {_toml_string(token)}\n"
    )
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        temporary.chmod(0o600)  # in case an ACL widened it
        temporary.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
