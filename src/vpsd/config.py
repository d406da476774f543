"""Settings, read from ``VPSD_*`` environment variables (and flags that override them)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path("/var/lib/vpsd")
"""Where servers' disks and the default SQLite database live when run as root."""

# A QMP unix socket path must fit in sockaddr_un (108 bytes) with room for the server's folder.
MAX_DATA_DIR_LENGTH = 72


def default_data_dir() -> Path:
    """``/var/lib/vpsd`` for root, ``~/.local/share/vpsd`` for everyone else."""
    import os

    if os.geteuid() == 0:
        return DEFAULT_DATA_DIR
    return Path.home() / ".local" / "share" / "vpsd"


class Settings(BaseSettings):
    """vpsd's configuration. Every field can be set as ``VPSD_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="VPSD_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None
    """SQLAlchemy URL; default ``sqlite:///<data_dir>/vpsd.db``."""

    driver: Literal["qemu", "fake"] = "qemu"
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    """``auto`` uses KVM when /dev/kvm can be opened, TCG emulation otherwise."""

    stop_timeout: float = Field(default=60.0, ge=0)
    """Seconds a graceful (ACPI) power-down may take before the VM is forced off."""

    default_memory_mb: int = 256
    default_vcpus: int = 1
    max_memory_mb: int = 65536
    max_vcpus: int = 64
    max_disk_gb: int = 2048

    token_cache_seconds: float = Field(default=2.0, ge=0)
    """Seconds a live token is remembered: a revocation takes effect within this time."""

    keep_alive_seconds: int = Field(default=75, ge=1)
    """How long an idle HTTP connection stays open. Longer than clients' and proxies' own
    idle limits (nginx 75 s, httpx 5 s), so a client never sends on a connection the server
    is closing at that moment."""

    max_snapshots_per_server: int = 5
    max_body_bytes: int = 64 * 1024
    runner_threads: int = 16
    monitor_interval: float = Field(default=2.0, gt=0)
    """Seconds between checks that running VMs are still alive."""

    @field_validator("data_dir")
    @classmethod
    def _data_dir_short_enough(cls, value: Path) -> Path:
        value = value.expanduser().absolute()
        if len(str(value)) > MAX_DATA_DIR_LENGTH:
            raise ValueError(
                f"data dir {str(value)!r} is longer than {MAX_DATA_DIR_LENGTH} characters; "
                "QEMU's QMP sockets live below it and unix socket paths are limited to 108 bytes"
            )
        return value

    @property
    def servers_dir(self) -> Path:
        """The folder holding one sub-folder per server (disks, QMP socket, pidfile)."""
        return self.data_dir / "servers"

    @property
    def effective_database_url(self) -> str:
        """The configured database URL, or the SQLite file in the data dir."""
        return self.database_url or f"sqlite:///{self.data_dir / 'vpsd.db'}"


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once from the environment (override in tests)."""
    return Settings()
