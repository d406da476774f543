"""What an operation handler is given (a ``Job``) and returns (a ``Result``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Executable, update

from vpsd.db.base import utcnow
from vpsd.db.models import OperationKind, Server, ServerStatus
from vpsd.hypervisor.base import DriverError, VmSpec
from vpsd.operations.context import OperationContext
from vpsd.operations.payloads import NoPayload, Payload, Restore, expect


@dataclass(frozen=True, slots=True)
class Job:
    """An operation as a handler sees it: plain values, no session attached."""

    id: int
    kind: OperationKind
    spec: VmSpec
    snapshot_id: int | None
    snapshot_tag: str | None
    """The snapshot's tag on disk; None when its row is gone (deleted with its server)."""
    attempts: int = 1
    """This run is the operation's attempts-th (1: no earlier run did any of its work)."""
    payload: Payload = field(default_factory=NoPayload)
    backup_id: int | None = None
    copied: bool = False
    """The server's disk is made from a snapshot or a backup (no blank disk will do)."""

    @property
    def server_id(self) -> int:
        """The server this operation acts on."""
        return self.spec.server_id

    @property
    def tag(self) -> str:
        """The internal snapshot tag of this operation's snapshot."""
        if self.snapshot_tag is None:
            raise DriverError(f"snapshot {self.snapshot_id} no longer exists")
        return self.snapshot_tag


Result = list[Executable]
"""What an operation changed, applied in the transaction that marks it finished."""
Handler = Callable[[OperationContext, Job], Result]
FailureHandler = Callable[[OperationContext, Job, str], Result]


def return_to_prior_power(ctx: OperationContext, job: Job) -> Result:
    """After a restore: boot the VM again if the server ran before (``power_state`` in the
    payload), and record the server's status."""
    if expect(job.payload, Restore).power_state == "running":
        ctx.driver.start(job.spec)
        return [set_server(job, ServerStatus.RUNNING, None)]
    return [set_server(job, ServerStatus.STOPPED, None)]


def set_server(job: Job, status: ServerStatus, reason: str | None) -> Executable:
    """The statement setting the job's server's status and reason."""
    return (
        update(Server)
        .where(Server.id == job.server_id)
        .values(status=status, status_reason=reason, updated_at=utcnow())
    )
