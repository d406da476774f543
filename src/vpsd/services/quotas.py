"""Quotas per account and admission control per host: the rules a new server must pass.

An account's servers (every one not deleted, stopped ones included: they may start at any
time) may together use at most its quota of servers, vCPUs, memory and disk: the settings'
defaults (``VPSD_QUOTA_*``) unless ``vpsd account set-quota`` stored its own. All servers of
a host together may use at most its capacity times the overcommit ratios
(``VPSD_*_OVERCOMMIT``): its CPUs, its memory less a reserve for the host, and the free space
of the data dir's filesystem, as its agent last recorded them (``vpsd.agent.heartbeat``;
``vpsd.services.hosts`` places servers).

``admit`` runs inside the transaction that inserts the server, after locking the account's
row and (on PostgreSQL) an advisory lock for admissions, so concurrent creates cannot both
pass: SQLite's ``BEGIN IMMEDIATE`` already serializes writers. Tenants are told which quota
they hit, never the host's numbers; those go to the log.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from vpsd.config import Settings
from vpsd.db.models import Account, Server, ServerStatus
from vpsd.db.session import Database
from vpsd.services.errors import Invalid, LimitReached, NotFound

log = logging.getLogger(__name__)

PG_ADMISSION_LOCK = 7_205_830_412
"""The advisory lock every create on PostgreSQL takes: placement reads every host's use."""
HOST_FULL = "vpsd cannot run a server of that size right now; try a smaller size or later"


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of each limited resource: one server's, an account's, a host's."""

    servers: int
    vcpus: int
    memory_mb: int
    disk_gb: int

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.servers + other.servers,
            self.vcpus + other.vcpus,
            self.memory_mb + other.memory_mb,
            self.disk_gb + other.disk_gb,
        )


UNITS = {
    "servers": "servers",
    "vcpus": "vCPUs",
    "memory_mb": "MiB of memory",
    "disk_gb": "GiB of disk",
}
RESOURCE_NAMES = tuple(field.name for field in fields(Resources))


@dataclass(frozen=True, slots=True)
class QuotaView:
    """An account's quota and use, for ``vpsd account show``."""

    account: str
    quota: Resources
    overridden: frozenset[str]
    """The resources whose quota is the account's own (the rest are the defaults)."""
    used: Resources


def overcommitted(
    cpus: int,
    memory_mb: int,
    disk_gb: float,
    cpu_ratio: float,
    memory_ratio: float,
    disk_ratio: float,
) -> Resources:
    """What all servers of a host together may use: each part of its capacity times its
    overcommit ratio."""
    return Resources(
        servers=2**31 - 1,
        vcpus=math.floor(cpus * cpu_ratio),
        memory_mb=math.floor(memory_mb * memory_ratio),
        disk_gb=math.floor(disk_gb * disk_ratio),
    )


def account_quota(settings: Settings, account: Account) -> Resources:
    """The account's quota: its own values where set, the settings' defaults elsewhere."""
    return Resources(
        servers=_either(account.quota_servers, settings.quota_servers),
        vcpus=_either(account.quota_vcpus, settings.quota_vcpus),
        memory_mb=_either(account.quota_memory_mb, settings.quota_memory_mb),
        disk_gb=_either(account.quota_disk_gb, settings.quota_disk_gb),
    )


def _either(own: int | None, default: int) -> int:
    return default if own is None else own


USED = (
    func.count(Server.id),
    func.coalesce(func.sum(Server.vcpus), 0),
    func.coalesce(func.sum(Server.memory_mb), 0),
    func.coalesce(func.sum(Server.disk_gb), 0),
)
"""Columns summing what servers use, in ``Resources``' order (count them not deleted)."""


def usage(session: Session, account_id: int) -> Resources:
    """What the account's servers not deleted use."""
    servers, vcpus, memory_mb, disk_gb = session.execute(
        select(*USED).where(Server.status != ServerStatus.DELETED, Server.account_id == account_id)
    ).one()
    return Resources(int(servers), int(vcpus), int(memory_mb), int(disk_gb))


def admit(session: Session, settings: Settings, account_id: int, wanted: Resources) -> None:
    """Lock the account and admissions, then raise LimitReached unless ``wanted`` fits the
    account's quota. Call it in the transaction that inserts the server, before the insert,
    then ``vpsd.services.hosts.place`` (under the same lock) for the host it goes to."""
    account = session.scalar(
        select(Account)
        .where(Account.id == account_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if account is None:
        raise NotFound("account not found")
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_ADMISSION_LOCK})
    _check_quota(account_quota(settings, account), usage(session, account_id), wanted)


SIZES = ("vcpus", "memory_mb", "disk_gb")


def check_sizes(session: Session, settings: Settings, account_id: int, wanted: Resources) -> None:
    """Raise Invalid, naming the field, for a size beyond what one server of the account may
    have: its quota of that resource, or the operator's largest size (``VPSD_MAX_*``). Said
    in the account's limits, never in a host's numbers."""
    account = session.get(Account, account_id)
    if account is None:
        raise NotFound("account not found")
    quota = account_quota(settings, account)
    for name in SIZES:
        offered = getattr(settings, f"max_{name}")
        allowed = getattr(quota, name)
        largest, why = (
            (offered, "the largest size offered")
            if offered is not None and offered < allowed
            else (allowed, "your account's quota")
        )
        if getattr(wanted, name) > largest:
            raise Invalid(f"body.{name}", f"must be at most {largest} {UNITS[name]} ({why})")


def _check_quota(quota: Resources, used: Resources, wanted: Resources) -> None:
    if used.servers + wanted.servers > quota.servers:
        raise LimitReached(
            f"server quota reached: your account may have {quota.servers} servers; "
            "delete one first or ask for a higher quota"
        )
    for name in RESOURCE_NAMES[1:]:
        total, allowed = getattr(used + wanted, name), getattr(quota, name)
        if total > allowed:
            unit = UNITS[name]
            raise LimitReached(
                f"quota exceeded: your servers would use {total} {unit}, your account's quota "
                f"is {allowed} {unit} ({getattr(used, name)} in use); choose a smaller size, "
                "delete a server or ask for a higher quota"
            )


def set_quota(
    db: Database,
    settings: Settings,
    account_name: str,
    values: dict[str, int | None],
    *,
    reset: bool = False,
) -> QuotaView:
    """Store the account's own quota for the resources in ``values`` (None: leave as is);
    ``reset`` first returns every resource to the default. Raises NotFound, Invalid."""
    unknown = set(values) - set(RESOURCE_NAMES)
    if unknown:
        raise Invalid(sorted(unknown)[0], "not a quota")
    for name, value in values.items():
        if value is not None and value < 0:
            raise Invalid(name, "a quota is 0 or more")
    with db.write() as session:
        account = _account(session, account_name, lock=True)
        if reset:
            for name in RESOURCE_NAMES:
                setattr(account, f"quota_{name}", None)
        for name, value in values.items():
            if value is not None:
                setattr(account, f"quota_{name}", value)
        session.flush()
        return _view(session, settings, account)


def show_quota(db: Database, settings: Settings, account_name: str) -> QuotaView:
    """The account's quota (own or default, per resource) and what its servers use."""
    with db.read() as session:
        return _view(session, settings, _account(session, account_name, lock=False))


def _account(session: Session, name: str, *, lock: bool) -> Account:
    query = select(Account).where(Account.name == name)
    account = session.scalar(query.with_for_update() if lock else query)
    if account is None:
        raise NotFound(f"no account named {name!r} (`vpsd token create --account` makes one)")
    return account


def _view(session: Session, settings: Settings, account: Account) -> QuotaView:
    own = frozenset(
        name for name in RESOURCE_NAMES if getattr(account, f"quota_{name}") is not None
    )
    quota = account_quota(settings, account)
    return QuotaView(account.name, quota, own, usage(session, account.id))
