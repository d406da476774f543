"""API throughput at scale: 10,000 servers x 5 snapshots, read by one ``vpsd serve`` and by
its lean twin (bench/twin.py) in the same run.

Rows are bulk-inserted into a migrated database (SQLite in a fresh data dir, then a fresh
PostgreSQL database); the service then runs on the fake driver (no VMs), the twin beside it
on the same database, and the three snapshot reads are loaded on loopback, vpsd and the twin
alternating (A/B/A/B), so both see the same machine state.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert

from bench import load
from bench.serve import Serve
from bench.util import ResultTable, console, fmt_s, target

if TYPE_CHECKING:
    from vpsd.db.session import Database

LIST_RATIO_TARGET = 0.7
OTHER_RATIO_TARGET = 0.3
P99_TARGET = 0.050
WORKERS = 2
WORKERS_GET_TARGET = 2500.0
"""req/s of get from ``vpsd serve --workers 2`` on PostgreSQL (issue 13)."""
SNAPSHOTS_PER_SERVER = 5
BACKENDS = ("sqlite", "postgresql")
BACKEND_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def seed(serve: Serve, servers: int, accounts: int) -> None:
    """Migrate the data dir's database and insert the accounts, servers and snapshots.

    Server ``i`` belongs to account ``i % accounts`` and snapshots are inserted round by
    round, so one account's rows are spread over the tables as real traffic would leave them.
    """
    from vpsd.db.session import Database

    serve.cli("db", "upgrade", "--data-dir", str(serve.data_dir))
    db = Database(serve.database_url)
    try:
        seed_database(db, servers, accounts)
    finally:
        db.dispose()


def seed_database(db: Database, servers: int, accounts: int) -> None:
    """Insert ``accounts`` accounts, ``servers`` servers and 5 snapshots each into a migrated
    database (see ``seed``)."""
    from vpsd.db.models import Account, Server, Snapshot

    now = datetime.now(UTC)
    with db.write() as session:
        session.execute(
            insert(Account),
            [{"name": f"bench-{a:03d}", "created_at": now} for a in range(accounts)],
        )
        account_ids = [row.id for row in session.query(Account.id).order_by(Account.id)]
        session.execute(
            insert(Server),
            [
                {
                    "account_id": account_ids[i % accounts],
                    "name": f"web-{i}",
                    "status": "stopped",
                    "memory_mb": 256,
                    "vcpus": 1,
                    "disk_gb": 10,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(servers)
            ],
        )
        server_ids = [row.id for row in session.query(Server.id).order_by(Server.id)]
        for round_ in range(SNAPSHOTS_PER_SERVER):
            session.execute(
                insert(Snapshot),
                [
                    {
                        "server_id": sid,
                        "name": f"nightly-{round_}",
                        "description": "seeded",
                        "status": "completed",
                        "size_mb": 1024,
                        "created_at": now,
                        "completed_at": now,
                    }
                    for sid in server_ids
                ],
            )


class TwinServer:
    """``python -m bench.twin`` on a free port, on the same database as a ``Serve``."""

    def __init__(self, database_url: str, env: dict[str, str], log_path: Path) -> None:
        from tests.live_server import free_port

        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start the twin and wait until it answers."""
        import httpx

        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.twin", "--database-url", self.database_url,
                 "--port", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=Path(__file__).resolve().parent.parent,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the twin exited: {self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"the twin did not answer on {self.base_url}")

    def stop(self) -> None:
        """SIGTERM the twin and wait for it."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def pg_available(admin_url: str = PG_ADMIN_URL) -> bool:
    """True when the PostgreSQL the tests use answers."""
    import psycopg

    try:
        with psycopg.connect(admin_url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several wrk runs of one app: mean rate and p50, worst p99, summed errors."""
    return {
        "rps": statistics.mean(r["rps"] for r in runs),
        "p50": statistics.mean(r["p50"] for r in runs),
        "p99": max(r["p99"] for r in runs),
        "errors": sum(r.get("errors", 0) for r in runs),
        "runs": runs,
    }


def _measure_backend(
    backend: str,
    servers: int,
    accounts: int,
    duration: float,
    rounds: int,
    rates: list[float],
    work_root: Path | None,
) -> dict[str, Any]:
    """Seed one database, serve it with vpsd and the twin, and load both A/B/A/B."""
    import httpx
    import psycopg

    root = Path(tempfile.mkdtemp(prefix="vpsd-bench-api-", dir=work_root or "/tmp"))
    pg_name = f"vpsd_bench_{uuid.uuid4().hex[:10]}" if backend == "postgresql" else None
    database_url = None
    if pg_name:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{pg_name}"')
        database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{pg_name}"
    # The monitor would ask the (fake) driver about 10,000 servers every interval; VMs are
    # not what this part measures.
    serve = Serve(root, database_url, log_level="warning", driver="fake", monitor_interval="3600")
    twin = TwinServer(serve.database_url, serve.env, root / "twin.log")
    out: dict[str, Any] = {"endpoints": {}}
    try:
        console.print(
            f"[bold]api[/bold] ({backend}): seeding {servers} servers x "
            f"{SNAPSHOTS_PER_SERVER} snapshots"
        )
        seed(serve, servers, accounts)
        token = serve.create_token("bench-000")
        serve.start()
        twin.start()
        headers = {"Authorization": f"Bearer {token}"}
        path = "/api/v1/snapshots/"
        listed = httpx.get(serve.base_url + path, headers=headers, params={"page_size": 1}).json()
        newest = listed["results"][0]
        out["account_snapshots"] = listed["count"]
        paths = {
            "list": path,
            "list-filtered": f"{path}?server_id={newest['server']['id']}",
            "get": f"{path}{newest['id']}/",
        }
        apps = {"vpsd": serve.base_url, "twin": twin.base_url}
        for name, url in paths.items():
            # Same status and bytes from both, over real HTTP, before any figure counts.
            answers = {app: httpx.get(base + url, headers=headers) for app, base in apps.items()}
            if len({(a.status_code, a.content) for a in answers.values()}) != 1:
                raise RuntimeError(f"vpsd and the twin answer {url} differently")
            for base in apps.values():  # warm both up
                for _ in range(20):
                    httpx.get(base + url, headers=headers)
            runs: dict[str, list[dict[str, Any]]] = {app: [] for app in apps}
            for round_ in range(rounds):
                for app, base in apps.items():
                    console.print(f"[bold]api[/bold] ({backend}): {name} {app} round {round_ + 1}")
                    runs[app].append(load.saturation(base + url, headers, duration / rounds))
            entry: dict[str, Any] = {"url": url, "bytes": len(answers["vpsd"].content)}
            entry.update({app: _combine(app_runs) for app, app_runs in runs.items()})
            entry["ratio"] = entry["vpsd"]["rps"] / entry["twin"]["rps"]
            entry["rates"] = [
                load.constant_rate(serve.base_url + url, headers, rate, duration) for rate in rates
            ]
            out["endpoints"][name] = entry
        if backend == "postgresql":
            twin.stop()
            out["workers"] = _measure_workers(serve, paths, headers, duration / rounds)
    finally:
        twin.stop()
        serve.stop()
        shutil.rmtree(root, ignore_errors=True)
        if pg_name:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
    return out


def _measure_workers(
    serve: Serve, paths: dict[str, str], headers: dict[str, str], duration: float
) -> dict[str, Any]:
    """The same reads from ``vpsd serve --workers 2`` (API processes only, as beside agents
    on a broker) on the same database: saturation, one run per read."""
    serve.stop()
    serve.args = ("--workers", str(WORKERS))
    serve.env["VPSD_BROKER_URL"] = "amqp://guest:guest@127.0.0.1:5672//"  # never contacted
    serve.start()
    console.print(f"[bold]api[/bold] (postgresql): --workers {WORKERS}")
    return {
        name: load.saturation(serve.base_url + url, headers, duration)
        for name, url in paths.items()
    }


def run(
    servers: int,
    duration: float,
    rates: list[float],
    work_root: Path | None,
    backends: list[str] | None = None,
    rounds: int = 2,
) -> dict[str, Any]:
    """Each backend: seed, serve with vpsd and the twin, load each read A/B/A/B with wrk
    (``duration`` s per app and read, in ``rounds`` runs), then vpsd at each fixed rate."""
    accounts = min(100, servers)
    results: dict[str, Any] = {
        "servers": servers,
        "accounts": accounts,
        "duration": duration,
        "rounds": rounds,
        "backends": {},
    }
    for backend in backends or list(BACKENDS):
        if backend == "postgresql" and not pg_available():
            skipped = f"PostgreSQL not reachable at {PG_ADMIN_URL}"
            results["backends"][backend] = {"skipped": skipped}
            continue
        results["backends"][backend] = _measure_backend(
            backend, servers, accounts, duration, rounds, rates, work_root
        )
    return results


def _ratio_target(read: str) -> float:
    return LIST_RATIO_TARGET if read == "list" else OTHER_RATIO_TARGET


def tables(
    data: dict[str, Any], before: dict[str, Any] | None = None
) -> tuple[list[ResultTable], list[dict[str, Any]]]:
    """The part's tables and targets; ``before`` is an earlier run (before the fixes)."""
    found: list[dict[str, Any]] = []
    tables_: list[ResultTable] = []
    for backend, result in data["backends"].items():
        if "skipped" in result:
            found.append(target(f"{backend}: targets", "not measured", None, result["skipped"]))
            continue
        endpoints = result["endpoints"]
        rates = sorted({r["rate"] for e in endpoints.values() for r in e["rates"]})
        columns = [
            "read", "vpsd req/s", "twin req/s", "vpsd/twin", "vpsd p50", "vpsd p99",
            "twin p50", "twin p99",
        ]  # fmt: skip
        for rate in rates:
            columns += [f"vpsd p50 @ {rate:.0f}/s", f"vpsd p99 @ {rate:.0f}/s"]
        table = ResultTable(
            f"Snapshot reads on {BACKEND_NAMES.get(backend, backend)}, vpsd beside the lean "
            f"twin: {data['servers']:,} servers x {SNAPSHOTS_PER_SERVER} snapshots in "
            f"{data['accounts']} accounts (the loaded account sees "
            f"{result.get('account_snapshots', '?')} snapshots; lists return the default page "
            "of 100)",
            columns,
        )
        for name, entry in endpoints.items():
            vpsd, twin = entry["vpsd"], entry["twin"]
            errors = vpsd["errors"] + twin["errors"]
            row = [
                f"{name} `{entry['url']}`",
                f"{vpsd['rps']:,.0f}",
                f"{twin['rps']:,.0f}",
                f"{entry['ratio']:.2f}x" + (f" ({errors} errors)" if errors else ""),
                fmt_s(vpsd["p50"]),
                fmt_s(vpsd["p99"]),
                fmt_s(twin["p50"]),
                fmt_s(twin["p99"]),
            ]
            for fixed in entry["rates"]:
                note = f" ({fixed['errors']} errors)" if fixed["errors"] else ""
                row += [fmt_s(fixed["p50"]), fmt_s(fixed["p99"]) + note]
            table.rows.append(row)
            found.append(
                target(
                    f"{backend}: {name} ≥ {_ratio_target(name):g}x the twin",
                    f"{entry['ratio']:.2f}x ({vpsd['rps']:,.0f} / {twin['rps']:,.0f} req/s)",
                    entry["ratio"] >= _ratio_target(name),
                )
            )
        first = next(iter(endpoints.values()))
        tool = first["vpsd"]["runs"][0]
        table.notes += [
            f"Saturation: {tool['tool']}, vpsd and the twin alternating A/B/A/B on each read, "
            f"{data['rounds']} runs of {data['duration'] / data['rounds']:g} s per app; req/s "
            "and p50 are the runs' mean, p99 the worst run's. Both serve the same database at "
            "the same time and answered each URL with the same bytes before the load began. "
            "Fixed rates (vpsd only): a constant-rate generator (bench/load.py, raw HTTP/1.1 on "
            "asyncio streams over 64 keep-alive connections), latency counted from each "
            f"request's due time, {data['duration']:g} s per rate.",
            "The twin (bench/twin.py) is a raw ASGI app on uvicorn with uvloop and httptools, "
            "the stdlib sqlite3 or psycopg 3, and orjson: vpsd's SQL, tenancy filter and token "
            "check with its 2 s cache, bodies byte-identical to vpsd's "
            "(tests/bench/test_twin.py), no response cache.",
            "The load generator runs on the same 2 cores as the server, so every figure is a "
            "lower bound of what the server alone would do.",
            *([tool["note"]] if "note" in tool else []),
        ]
        tables_.append(table)
        if "workers" in result:
            tables_.append(_workers_table(result))
            get = result["workers"]["get"]["rps"]
            found.append(
                target(
                    f"{backend}: get ≥ {WORKERS_GET_TARGET:,.0f} req/s with {WORKERS} workers",
                    f"{get:,.0f} req/s",
                    get >= WORKERS_GET_TARGET,
                )
            )
        at_300 = [r for e in endpoints.values() for r in e["rates"] if r["rate"] == 300]
        if at_300:
            worst = max(r["p99"] for r in at_300)
            found.append(
                target(
                    f"{backend}: p99 ≤ 50 ms at 300 req/s (every read)",
                    f"worst {fmt_s(worst)}",
                    worst <= P99_TARGET,
                )
            )
    if before:
        tables_ += _before_after(data, before)
    return tables_, found


def _workers_table(result: dict[str, Any]) -> ResultTable:
    table = ResultTable(
        f"The same reads from `vpsd serve --workers {WORKERS}` on PostgreSQL (API processes "
        "only, as beside hosts' agents on a broker)",
        ["read", "req/s", "one process req/s", "p50", "p99"],
    )
    for name, run in result["workers"].items():
        single = result["endpoints"][name]["vpsd"]["rps"]
        table.rows.append(
            [name, f"{run['rps']:,.0f}", f"{single:,.0f}", fmt_s(run["p50"]), fmt_s(run["p99"])]
        )
    table.notes.append(
        f"Saturation: {next(iter(result['workers'].values()))['tool']}, one run per read, after "
        "the one-process runs above. wrk and both workers share the machine's 2 cores."
    )
    return table


def _vpsd_rps(data: dict[str, Any], backend: str) -> dict[str, float]:
    """vpsd's saturation rate per read in a result of this or the older (vpsd-only) shape."""
    if "backends" not in data:
        return {n: e["saturation"]["rps"] for n, e in data["endpoints"].items()}
    result = data["backends"].get(backend, {})
    return {n: e["vpsd"]["rps"] for n, e in result.get("endpoints", {}).items()}


def _before_after(data: dict[str, Any], before: dict[str, Any]) -> list[ResultTable]:
    old = _vpsd_rps(before, "sqlite")
    new = _vpsd_rps(data, "sqlite")
    compare = ResultTable(
        "vpsd on SQLite before/after the read-path fixes (same machine, same seed; "
        "bench/results/api-before.json)",
        ["read", "req/s before", "req/s after"],
    )
    for name, rps in new.items():
        if name in old:
            compare.rows.append([name, f"{old[name]:,.0f}", f"{rps:,.0f}"])
    return [compare] if compare.rows else []
