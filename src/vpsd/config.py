"""Settings, read from ``VPSD_*`` environment variables (and flags that override them)."""

from __future__ import annotations

import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path("/var/lib/vpsd")
"""Where servers' disks and the default SQLite database live when run as root."""

# A QMP unix socket path must fit in sockaddr_un (108 bytes) with room for the server's folder.
MAX_DATA_DIR_LENGTH = 72


def default_image_cache_dir() -> Path:
    """``/var/cache/vpsd/images`` for root, ``~/.cache/vpsd/images`` for everyone else."""
    import os

    if os.geteuid() == 0:
        return Path("/var/cache/vpsd/images")
    return Path.home() / ".cache" / "vpsd" / "images"


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
    max_memory_mb: int | None = Field(default=None, ge=64)
    """The largest server's memory; None: what the host can run (its memory for guests)."""
    max_vcpus: int | None = Field(default=None, ge=1)
    """The largest server's vCPUs; None: the host's CPU count."""
    max_disk_gb: int | None = Field(default=None, ge=1)
    """The largest server's disk; None: what the host can hold (see ``disk_overcommit``)."""

    quota_servers: int = Field(default=10, ge=0)
    """Servers (not deleted) an account may have, unless ``vpsd account set-quota`` says."""
    quota_vcpus: int = Field(default=16, ge=0)
    """vCPUs summed over an account's servers."""
    quota_memory_mb: int = Field(default=32768, ge=0)
    """Memory summed over an account's servers."""
    quota_disk_gb: int = Field(default=1024, ge=0)
    """Disk sizes summed over an account's servers."""

    cpu_overcommit: float = Field(default=4.0, gt=0)
    """vCPUs of all servers per host CPU: idle guests share CPUs well (a busy one is slower)."""
    memory_overcommit: float = Field(default=1.0, gt=0)
    """Guest memory per byte of host memory for guests: above 1 a host can run out of memory
    and the kernel kills a VM, so 1 (none) by default."""
    disk_overcommit: float = Field(default=3.0, gt=0)
    """Disk sizes of all servers per free byte of the data dir's filesystem. qcow2 disks are
    thin (they take only what guests wrote), and the free space already excludes what they
    hold; guests that fill their disks, and snapshots that keep old data, are why it is not
    higher."""
    host_reserved_memory_mb: int = Field(default=1024, ge=0)
    """Host memory kept out of the guests' reach (the host, vpsd, QEMU's own overhead)."""

    token_cache_seconds: float = Field(default=2.0, ge=0)
    """Seconds a live token is remembered: a revocation takes effect within this time."""

    web_session_hours: float = Field(default=12.0, gt=0, le=366 * 24)
    """How long a web panel sign-in lasts; signing out, a new password or revoking the
    token signed in with ends it sooner. At most a year."""
    web_secure_cookies: bool = True
    """Send the panel's cookies with ``Secure``: browsers return them only over HTTPS (and
    to ``localhost``). Set false only to use the panel over plain HTTP on a network you
    trust; put it behind TLS otherwise (docs/deployment.md)."""
    sign_in_attempts: int = Field(default=10, ge=1)
    """Failed panel sign-ins allowed per client address and per account name within
    ``sign_in_window_seconds``; further attempts get 429 until the window has passed."""
    sign_in_window_seconds: float = Field(default=300.0, gt=0, le=7 * 86400)
    """The window ``sign_in_attempts`` are counted in (at most a week)."""

    access_log: bool = False
    """Log a line per HTTP request. Off by default: clients poll (``--wait`` loops, dashboards)
    hundreds of times a second, which would drown the log (journald drops a service's lines
    past 10,000 per 30 s, its real messages with them) and cost a sixth of a read's time. A
    reverse proxy in front keeps its own access log."""

    keep_alive_seconds: int = Field(default=75, ge=1)
    """How long an idle HTTP connection stays open. Longer than clients' and proxies' own
    idle limits (nginx 75 s, httpx 5 s), so a client never sends on a connection the server
    is closing at that moment."""

    header_timeout_seconds: float = Field(default=20.0, gt=0)
    """Seconds a client has to send a request's line and headers, from connecting (or from
    the first byte of a later request on a kept-alive connection), and then as long again
    for its body; a slower one gets 408 and is closed, so slow clients cannot hold
    connections open."""

    max_connections: int = Field(default=1024, ge=1)
    """HTTP connections open at once, at most; lowered at start to what the open files limit
    leaves after the database, QMP sockets and qemu-img pipes. Beyond it the longest-idle
    connection is closed to make room, or the new request gets 503."""

    default_image: str = "debian-12"
    """The image of servers created without one; ``blank`` for an empty disk and no guest."""
    image_cache_dir: Path = Field(default_factory=default_image_cache_dir)
    """Where ``vpsd image build`` keeps builds, by recipe hash; data dirs link to them."""

    public_url: str | None = None
    """The API's public base URL (``https://vpsd.example``): absolute links the API gives
    (``next``/``previous``, trailing-slash redirects) start with it. Default: relative links.
    Never taken from the request's ``Host`` header, which any client can set."""

    console_log_max_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    """A running server's console log is cut to its last half when it grows past this."""

    ssh_listen_address: str = "127.0.0.1"
    """Host address each server's SSH port forward listens on."""
    ssh_public_host: str | None = None
    """The host name or address shown to users for SSH; default: ``ssh_listen_address``."""
    ssh_ports: str = "22000-22999"
    """The host ports servers' SSH forwards are allocated from, ``FIRST-LAST``."""

    host_name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=64)
    """This hypervisor host's name in the hosts table (``/api/v1/hosts/``, for admins)."""
    host_heartbeat_seconds: float = Field(default=5.0, gt=0)
    """How often the host records that it is alive, with its capacity."""
    host_down_after_seconds: float = Field(default=30.0, gt=0)
    """A host silent this long shows ``down`` and gets no new servers; an operation whose
    agent has not renewed its lease for this long is taken back (``operations.leases``)."""

    broker_url: str | None = None
    """A RabbitMQ URL (``amqp://guest:guest@127.0.0.1:5672//``): operations are published to
    one queue per host and run by that host's ``vpsd agent``; ``vpsd serve`` then runs the API
    only. Default: none, and ``vpsd serve`` runs this host's agent in its own process."""
    republish_after_seconds: float = Field(default=30.0, gt=0)
    """With a broker: an operation still pending this long after it was published is
    published again (a lost message only delays it)."""

    max_snapshots_per_server: int = 5
    snapshot_scheduler_interval: float = Field(default=60.0, gt=0)
    """Seconds between looks for automatic snapshots that are due (and rotation)."""
    snapshot_expiry_interval: float = Field(default=30.0, gt=0)
    """Seconds between looks for expired snapshots: one is deleted within this (plus the
    moment its deletion takes) of its ``expires_at``."""

    backup_repository: str | None = None
    """Where backups go: a restic repository, a path (on another filesystem than the data
    dir in production: a backup must outlive the host), ``sftp:user@host:/path`` or
    ``s3:...``. Default: ``<data dir>/backups``."""
    backup_password_file: Path | None = None
    """The repository's password, created 0600 with the repository on first use; keep a
    copy apart from the host. Default: ``<data dir>/backup-password``."""
    backup_sftp_command: str | None = None
    """The ssh command restic runs for an ``sftp:`` repository (``ssh -p 2222 -i KEY user@host
    -s sftp``); default: ssh with root's configuration."""
    max_manual_backups_per_server: int = Field(default=10, ge=0)
    backup_scheduler_interval: float = Field(default=60.0, gt=0)
    """Seconds between looks for automatic backups that are due."""
    backup_storage_check_seconds: float = Field(default=60.0, gt=0)
    """Seconds between looks at the backup repository (``restic cat config``: about half a
    second of CPU); what each agent found shows on the backups and in ``/metrics``."""
    change_health_seconds: float = Field(default=60.0, gt=0, le=3600)
    """Seconds a change's failing health check is tried again before the change is rolled
    back (its services may still be restarting after the command)."""

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

    @field_validator("broker_url")
    @classmethod
    def _broker_is_amqp(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("amqp://", "amqps://")):
            raise ValueError(
                "must be a RabbitMQ URL, amqp://USER:PASSWORD@HOST:5672// or amqps://..."
            )
        return value or None

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if not value:
            return None  # VPSD_PUBLIC_URL= (empty) means unset
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
        if (
            any(char.isspace() or not char.isprintable() for char in value)
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.username is not None
            or "?" in value
            or "#" in value
        ):
            raise ValueError(
                "must be an http(s) URL such as https://vpsd.example, "
                "without credentials, query or fragment"
            )
        return value.rstrip("/")

    @field_validator("ssh_ports")
    @classmethod
    def _port_range(cls, value: str) -> str:
        first, _, last = value.partition("-")
        if not (first.isdigit() and last.isdigit() and 1024 <= int(first) <= int(last) < 65536):
            raise ValueError("must be FIRST-LAST, two ports between 1024 and 65535 (22000-22999)")
        return value

    @property
    def ssh_port_range(self) -> range:
        """The ports of ``ssh_ports`` as a range."""
        first, _, last = self.ssh_ports.partition("-")
        return range(int(first), int(last) + 1)

    @property
    def ssh_host(self) -> str:
        """The SSH host shown in server objects."""
        return self.ssh_public_host or self.ssh_listen_address

    @property
    def images_dir(self) -> Path:
        """The images this data dir's servers boot from (``<slug>-<version>/`` each)."""
        return self.data_dir / "images"

    @property
    def quarantine_dir(self) -> Path:
        """Where the folders of servers no database record knows are moved at start."""
        return self.data_dir / "quarantine"

    @property
    def servers_dir(self) -> Path:
        """The folder holding one sub-folder per server (disks, QMP socket, pidfile)."""
        return self.data_dir / "servers"

    @property
    def effective_backup_repository(self) -> str:
        """The configured backup repository, or ``backups`` in the data dir."""
        return self.backup_repository or str(self.data_dir / "backups")

    @property
    def effective_backup_password_file(self) -> Path:
        """The configured password file, or ``backup-password`` in the data dir."""
        return self.backup_password_file or self.data_dir / "backup-password"

    @property
    def effective_database_url(self) -> str:
        """The configured database URL, or the SQLite file in the data dir."""
        return self.database_url or f"sqlite:///{self.data_dir / 'vpsd.db'}"


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once from the environment (override in tests)."""
    return Settings()
