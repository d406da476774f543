"""API throughput at scale: 10,000 servers x 5 snapshots, read by one ``vpsd serve``.

Rows are bulk-inserted into a migrated SQLite database in a fresh data dir; the service then
runs on the fake driver (no VMs) and the snapshot read endpoints are loaded on loopback.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from bench import load
from bench.serve import Serve
from bench.util import ResultTable, console, fmt_s, target

RPS_TARGET = 1000.0
P99_TARGET = 0.050
SNAPSHOTS_PER_SERVER = 5


def seed(serve: Serve, servers: int, accounts: int) -> None:
    """Migrate the data dir's database and insert the accounts, servers and snapshots.

    Server ``i`` belongs to account ``i % accounts`` and snapshots are inserted round by
    round, so one account's rows are spread over the tables as real traffic would leave them.
    """
    from vpsd.db.models import Account, Server, Snapshot
    from vpsd.db.session import Database

    serve.cli("db", "upgrade", "--data-dir", str(serve.data_dir))
    db = Database(f"sqlite:///{serve.data_dir / 'vpsd.db'}")
    now = datetime.now(UTC)
    try:
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
    finally:
        db.dispose()


def run(
    servers: int, duration: float, rates: list[float], work_root: Path | None
) -> dict[str, Any]:
    """Seed, serve, and measure each endpoint at saturation and at each fixed rate."""
    root = Path(tempfile.mkdtemp(prefix="vpsd-bench-api-", dir=work_root or "/tmp"))
    accounts = min(100, servers)
    # The monitor would ask the (fake) driver about 10,000 servers every interval; VMs are
    # not what this part measures.
    serve = Serve(root, log_level="warning", driver="fake", monitor_interval="3600")
    results: dict[str, Any] = {
        "servers": servers,
        "accounts": accounts,
        "duration": duration,
        "endpoints": {},
    }
    try:
        console.print(
            f"[bold]api[/bold]: seeding {servers} servers x {SNAPSHOTS_PER_SERVER} snapshots"
        )
        seed(serve, servers, accounts)
        token = serve.create_token("bench-000")
        serve.start()
        headers = {"Authorization": f"Bearer {token}"}
        base = f"{serve.base_url}/api/v1/snapshots/"
        import httpx

        listed = httpx.get(base, headers=headers, params={"page_size": 1}).json()
        newest = listed["results"][0]
        results["account_snapshots"] = listed["count"]
        urls = {
            "list": base,
            "list-filtered": f"{base}?server_id={newest['server']['id']}",
            "get": f"{base}{newest['id']}/",
        }
        for name, url in urls.items():
            console.print(f"[bold]api[/bold]: {name} {url}")
            entry: dict[str, Any] = {"url": url.removeprefix(serve.base_url)}
            entry["saturation"] = load.saturation(url, headers, duration)
            entry["rates"] = [load.constant_rate(url, headers, rate, duration) for rate in rates]
            results["endpoints"][name] = entry
    finally:
        serve.stop()
        shutil.rmtree(root, ignore_errors=True)
    return results


def tables(
    data: dict[str, Any], before: dict[str, Any] | None = None
) -> tuple[list[ResultTable], list[dict[str, Any]]]:
    """The part's tables and targets; ``before`` is an earlier run (before the fixes)."""
    rates = sorted({r["rate"] for e in data["endpoints"].values() for r in e["rates"]})
    columns = ["endpoint", "req/s at saturation"]
    for rate in rates:
        columns += [f"p50 @ {rate:.0f}/s", f"p99 @ {rate:.0f}/s"]
    table = ResultTable(
        f"Snapshot reads, {data['servers']:,} servers x {SNAPSHOTS_PER_SERVER} snapshots in "
        f"{data['accounts']} accounts (the loaded account sees {data.get('account_snapshots', '?')}"
        " snapshots; lists return the default page of 100)",
        columns,
    )
    for name, entry in data["endpoints"].items():
        row = [f"{name} `{entry['url']}`", f"{entry['saturation']['rps']:,.0f}"]
        for fixed in entry["rates"]:
            errors = f" ({fixed['errors']} errors)" if fixed["errors"] else ""
            row += [fmt_s(fixed["p50"]), fmt_s(fixed["p99"]) + errors]
        table.rows.append(row)
    sat_tool = next(iter(data["endpoints"].values()))["saturation"]
    table.notes += [
        f"Saturation: {sat_tool['tool']}, {data['duration']:g} s per endpoint. Fixed rates: a "
        "constant-rate generator (bench/load.py, httpx + asyncio), latency counted from each "
        f"request's due time, {data['duration']:g} s per rate.",
        "The load generator runs on the same 2 cores as the server, so every figure is a lower "
        "bound of what the server alone would do.",
        *([sat_tool["note"]] if "note" in sat_tool else []),
    ]
    tables_ = [table]
    if before:
        compare = ResultTable(
            "Before/after the read-path fixes (same machine, same seed)",
            [
                "endpoint",
                "req/s before",
                "req/s after",
                "p99 @ max rate before",
                "p99 @ max rate after",
            ],
        )
        for name, entry in data["endpoints"].items():
            old = before["endpoints"].get(name)
            if old is None:
                continue
            compare.rows.append(
                [
                    name,
                    f"{old['saturation']['rps']:,.0f}",
                    f"{entry['saturation']['rps']:,.0f}",
                    fmt_s(old["rates"][-1]["p99"]),
                    fmt_s(entry["rates"][-1]["p99"]),
                ]
            )
        tables_.append(compare)
    found = []
    worst_rps = min(e["saturation"]["rps"] for e in data["endpoints"].values())
    found.append(
        target(
            "≥ 1,000 req/s from one process on 2 cores (every endpoint)",
            f"worst {worst_rps:,.0f} req/s",
            worst_rps >= RPS_TARGET,
        )
    )
    at_300 = [r for e in data["endpoints"].values() for r in e["rates"] if r["rate"] == 300]
    if at_300:
        worst = max(r["p99"] for r in at_300)
        found.append(
            target("p99 ≤ 50 ms at 300 req/s", f"worst {fmt_s(worst)}", worst <= P99_TARGET)
        )
    return tables_, found
