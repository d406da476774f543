"""What the figures mean, written after looking at a real run (kept beside the generator).

Re-running ``make bench`` refreshes every figure; re-read this text against the new tables.
"""

ANALYSIS: dict[str, str] = {
    "snapshots": """\
**Reading it.** Snapshot and restore times stay flat from 256 MiB to 8 GiB while full copies
grow linearly with the data (about 1.1-1.5 s per GiB on this disk, the same order as the
anchors' ~1 minute per GB once network and object storage are added). At 2 GiB vpsd is
26-42x faster than either copy, at 8 GiB 32-91x; the 8 GiB / 256 MiB ratio stays under 3x.
The figures are request → `completed` through the API: the POST, the runner picking the
operation up and recording it (three SQLite commits), the qcow2 work, then our 5 ms polling.

**Target not met, and what it would take.**
- *Snapshot ≤ 100 ms at every size*: met at 256 MiB and 2 GiB (64-95 ms medians), missed at
  8 GiB (128 ms stopped, 153 ms running). The qcow2 work grows with allocated data because
  creating an internal snapshot increments the refcount of every allocated cluster (part 2:
  `qemu-img snapshot -c` alone takes 10 ms at 256 MiB and 34 ms at 8 GiB), and measuring its
  size walks the same metadata. Disks
  created with larger clusters (`qemu-img create -o cluster_size=2M`) have 32x fewer clusters
  to walk, at the cost of coarser copy-on-write; making that a per-host setting is the next
  step. The driver already spawns a single `qemu-img measure` per disk for the size (the
  virtual size comes from the qcow2 header), down from three processes.
""",
    "guest": """\
**Reading it.** Only the first write to a cluster still shared with a snapshot pays the
copy-on-write (a new cluster plus refcount updates): here 0.48-0.83x of a plain rewrite after
the 1st to 5th snapshot, falling as snapshots accumulate; once rewritten, the cluster is the
disk's own again and writes return to 0.85-1.0x. Deleting a snapshot walks its tables: tens
of milliseconds while it shares its data with the disk, up to ~2 s at 8 GiB when it owns all
of it; it runs in the background (the API hides the snapshot at once). Single passes of 1 GiB
vary by about ±20% from run to run.
""",
    "api": """\
**What changed, found by profiling (py-spy on a loaded `vpsd serve`, cProfile in-process):**
- Snapshot `list`/`get` select the nine columns the API shows and return plain values instead
  of ORM objects with a joined server: ~70% of a 100-row list was SQLAlchemy building
  instances.
- The SQLite pool keeps 48 connections: with 20 concurrent clients the default pool opened
  and closed an overflow connection per request, each paying the connect PRAGMAs (~12% of
  samples). No `pool_pre_ping` on SQLite (a `SELECT 1` per checkout on a local file).
- Live tokens are cached for `VPSD_TOKEN_CACHE_SECONDS` (2 s): the token lookup was about a
  third of a simple GET; a revocation now takes effect within the TTL.
- The VM monitor checks only servers believed running: it read 10,000 stopped servers'
  pidfiles every 2 s.
- The queries use `ix_servers_account_id_id` and `ix_snapshots_server_id_status`
  (`EXPLAIN QUERY PLAN`); in SQLite a 100-row page plus its count takes 0.8 ms.

Together: list 25 → 91 req/s, list-filtered 80 → 161, get 143 → 244 (the "before" run was on
a loaded machine, the "after" one on a quiet one, so the ratios are approximate).

**Targets not met, and what it would take.** One Python process serves a 100-row page in
~11 ms of CPU and a single snapshot in ~4 ms: in-process, `SnapshotService.list` is 4.4 ms
(0.8 ms of it SQLite, most of the rest SQLAlchemy's row and type processing: timestamps are
parsed from SQLite's text per row), building and serializing the 100 response objects ~1.2 ms,
and FastAPI's request handling (dependencies, thread hand-off, response validation) the rest.
The GIL keeps one process on one core, and the load generator shares the two cores. So
≥ 1,000 req/s and a p99 ≤ 50 ms at 300 req/s are not reachable from one process on this
machine with this stack; at rates above saturation the fixed-rate figures only measure the
queue. What it would take: several uvicorn workers per host (`--workers N`; the service is
stateless apart from the runner, which would move to one worker or to `vpsd agent`), integer
epoch timestamps instead of SQLite text dates, a Core-only read path that renders JSON
straight from rows, and smaller default pages for lists (`page_size=20` would cut list cost
about 4x).
""",
}
