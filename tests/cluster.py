"""Many hosts behind one API, on one machine: ``vpsd serve --workers 2`` and a ``vpsd agent``
per host, on a PostgreSQL database of their own and the real RabbitMQ.

Each agent has its own data dir and host name (unique per test, so are its queues, deleted
afterwards). Every start of an agent writes its own log, so the operations each process ran,
and when, can be read back (``executions``): the per-operation execution log.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pika
import pytest
from sqlalchemy import create_engine, text

from tests import netns
from tests import qemu_helpers as qh
from tests.conftest import fresh_pg_database
from tests.helpers import wait_for
from tests.live_server import VPSD, LiveServer
from tests.netns import Namespace

BROKER_URL = os.environ.get("VPSD_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
LINE = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ vpsd\.operations\.\w+: "
    r"operation (?P<id>\d+)\b(?P<rest>.*)$"
)
ENDED = ("completed", "failed:", "crashed", "lease was taken back", "could not be recorded")


def broker_available() -> bool:
    """RabbitMQ answers at ``BROKER_URL``."""
    from vpsd.operations.publisher import pika_url

    try:
        pika.BlockingConnection(pika.URLParameters(pika_url(BROKER_URL))).close()
    except pika.exceptions.AMQPError:
        return False
    return True


def require_broker() -> None:
    """Skip without RabbitMQ, except in CI, where every test must run."""
    if not broker_available():
        if os.environ.get("CI"):
            pytest.fail(f"RabbitMQ is not reachable at {BROKER_URL} (scripts/services starts it)")
        pytest.skip(f"RabbitMQ is not reachable at {BROKER_URL}")


@dataclass
class Execution:
    """One process's run of one operation: from its start line to its end line, or to the
    kill of the process (``None``: it was still running when the log ended)."""

    operation_id: int
    host: str
    log: str
    """The log file of the agent process that ran it."""
    started: float
    ended: float | None
    outcome: str


@dataclass
class Agent:
    """One host's ``vpsd agent``; each start logs to a file of its own."""

    name: str
    data_dir: Path
    env: dict[str, str]
    args: tuple[str, ...] = ()
    """More ``vpsd agent`` options."""
    namespace: Namespace | None = None
    """Its network namespace (when this machine can make them)."""
    process: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)
    kills: dict[Path, float] = field(default_factory=dict)
    """Log file -> when its process was SIGKILLed (the end of its unfinished work)."""

    def start(self) -> None:
        """Start the agent (again, on the same data dir)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir.parent / f"agent-{self.name}-{len(self.logs)}.log"
        self.logs.append(log_path)
        command = [VPSD, "agent", "--host", self.name, *self.args]
        if self.namespace is not None:
            command = self.namespace.command(*command)
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def kill(self) -> None:
        """SIGKILL the agent, as a crash would; its VMs (here: the fake's file) stay."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.kills[self.logs[-1]] = time.time()

    def stop(self) -> int:
        """SIGTERM, and the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    @property
    def address(self) -> str:
        """Where this machine reaches the agent's listening ports."""
        return self.namespace.inner if self.namespace is not None else "127.0.0.1"

    def log(self) -> str:
        """Everything every start of this agent printed."""
        return "\n".join(path.read_text(errors="replace") for path in self.logs if path.exists())


class Cluster:
    """The API (two workers) and the agents, on one database and the broker."""

    def __init__(self, root: Path, database_url: str, **settings: str) -> None:
        self.root = root
        self.database_url = database_url
        self.prefix = f"t{os.getpid()}x{int(time.time() * 1000) % 10**6}"
        self.settings = {
            "VPSD_DATABASE_URL": database_url,
            "VPSD_BROKER_URL": BROKER_URL,
            "VPSD_HOST_HEARTBEAT_SECONDS": "0.5",
            "VPSD_HOST_DOWN_AFTER_SECONDS": "4",
            "VPSD_REPUBLISH_AFTER_SECONDS": "3",
            "VPSD_STOP_TIMEOUT": "1",
            "VPSD_DEFAULT_IMAGE": "blank",
            **settings,
        }
        self.api = LiveServer(
            root / "api", database_url=database_url,
            **{key.removeprefix("VPSD_").lower(): value for key, value in self.settings.items()
               if key != "VPSD_DATABASE_URL"},
        )  # fmt: skip
        self.api.args = ("--workers", "2")
        self.agents: dict[str, Agent] = {}
        self.namespaces: list[Namespace] = []
        self.engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))

    def host(self, n: int) -> str:
        """The name of the n-th host of this cluster."""
        return f"{self.prefix}-{n}"

    def add_agent(self, n: int, *args: str, **settings: str) -> Agent:
        """Start the n-th host's agent with options ``args`` (``settings`` as ``VPSD_*``,
        after the cluster's), in a network namespace of its own that reaches only the
        database and the broker, where this machine can make one (as root)."""
        name = self.host(n)
        data_dir = self.root / name
        env = {
            **self.api.env,
            **self.settings,
            "VPSD_DATA_DIR": str(data_dir),
            "VPSD_IMAGE_CACHE_DIR": str(data_dir / "image-cache"),
            **{f"VPSD_{key.upper()}": value for key, value in settings.items()},
        }
        namespace = None
        if netns.available():
            namespace = Namespace(f"vpsd-{self.prefix}-{n}", n)
            self.namespaces.append(namespace)
            for key in ("VPSD_DATABASE_URL", "VPSD_BROKER_URL"):
                env[key] = namespace.url(env[key])
        agent = self.agents[name] = Agent(name, data_dir, env, args, namespace)
        agent.start()
        return agent

    def wait_hosts_up(self, admin: Any, count: int, timeout: float = 60) -> None:
        """Until admins see ``count`` hosts ``up``."""

        def up() -> bool:
            hosts = admin.get("/hosts/").json()["results"]
            return sum(h["state"] == "up" for h in hosts) == count

        wait_for(up, timeout, interval=0.2, what=f"{count} hosts up")

    def query(self, sql: str, **params: Any) -> list[Any]:
        """Rows of a read-only query on the cluster's database."""
        with self.engine.connect() as connection:
            return list(connection.execute(text(sql), params))

    def host_of(self, server_id: int) -> str:
        """The name of the host a server was placed on."""
        rows = self.query(
            "SELECT h.name FROM servers s JOIN hosts h ON h.id = s.host_id WHERE s.id = :id",
            id=server_id,
        )
        return str(rows[0][0])

    def operation(self, operation_id: int) -> Any:
        """One operation's row."""
        return self.query("SELECT * FROM operations WHERE id = :id", id=operation_id)[0]

    def last_operation(self, server_id: int) -> Any:
        """The newest operation of a server."""
        return self.query(
            "SELECT * FROM operations WHERE server_id = :id ORDER BY id DESC LIMIT 1",
            id=server_id,
        )[0]

    def executions(self) -> list[Execution]:
        """Every run of every operation by every agent process, from their logs."""
        runs: list[Execution] = []
        for agent in self.agents.values():
            for path in agent.logs:
                open_runs: dict[int, Execution] = {}
                for line in path.read_text(errors="replace").splitlines():
                    match = LINE.match(line)
                    if match is None:
                        continue
                    at = datetime.strptime(match["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    operation_id, rest = int(match["id"]), match["rest"]
                    if rest.endswith(" started"):
                        open_runs[operation_id] = Execution(
                            operation_id, agent.name, path.name, at, None, ""
                        )
                    elif operation_id in open_runs and any(word in rest for word in ENDED):
                        run = open_runs.pop(operation_id)
                        run.ended, run.outcome = at, rest.strip()
                        runs.append(run)
                for run in open_runs.values():  # cut short by a kill
                    run.ended, run.outcome = agent.kills.get(path), "killed"
                    runs.append(run)
        return runs

    def close(self) -> None:
        """Stop everything, delete this cluster's queues."""
        for agent in self.agents.values():
            with suppress(AssertionError):
                agent.stop()
        self.api.close()
        self.engine.dispose()
        qh.kill_qemus_under(self.root)
        for namespace in self.namespaces:
            namespace.close()
        delete_queues([f"vpsd.host.{name}" for name in self.agents])
        if not os.environ.get("VPSD_TEST_KEEP"):
            shutil.rmtree(self.root, ignore_errors=True)


def worker_pids(serve: subprocess.Popen[bytes]) -> set[int]:
    """The pids of ``vpsd serve --workers``'s worker processes."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == serve.pid and b"multiprocessing.spawn" in cmdline:
                pids.add(int(entry.name))
    return pids


def assert_never_twice_at_once(runs: list[Execution]) -> None:
    """No operation ran in two processes at the same time, and none completed twice."""
    by_operation: dict[int, list[Execution]] = {}
    for run in runs:
        by_operation.setdefault(run.operation_id, []).append(run)
    for operation_id, its_runs in by_operation.items():
        its_runs.sort(key=lambda run: run.started)
        for earlier, later in itertools.pairwise(its_runs):
            assert earlier.ended is not None and earlier.ended <= later.started, (
                f"operation {operation_id} ran twice at once: {earlier} and {later}"
            )
        completed = [run for run in its_runs if run.outcome == "completed"]
        assert len(completed) <= 1, f"operation {operation_id} completed twice: {completed}"


def delete_queues(names: list[str]) -> None:
    """Delete queues (and Dramatiq's delay and dead-letter queues beside them)."""
    from vpsd.operations.publisher import pika_url

    with suppress(pika.exceptions.AMQPError):
        connection = pika.BlockingConnection(pika.URLParameters(pika_url(BROKER_URL)))
        channel = connection.channel()
        for name in names:
            for queue in (name, f"{name}.DQ", f"{name}.XQ"):
                channel.queue_delete(queue)
        connection.close()


@contextmanager
def cluster(**settings: str) -> Iterator[Cluster]:
    """A started API (two workers) on a new PostgreSQL database and the broker; agents are
    the test's to add. Everything is stopped and removed afterwards."""
    require_broker()
    root = qh.short_tmpdir()
    with fresh_pg_database() as url:
        running = Cluster(root, url, **settings)
        try:
            running.api.start()
            yield running
        finally:
            running.close()
