"""What the figures mean, written after looking at a real run (kept beside the generator).

Re-running ``make bench`` refreshes every figure; re-read this text against the new tables.
"""

ANALYSIS: dict[str, str] = {
    "snapshots": """\
**Reading it.** Snapshot and restore times stay flat from 256 MiB to 8 GiB while full copies
grow linearly with the data (tens of seconds at 8 GiB on this disk, i.e. the same order as the
anchors' ~1 minute per GB once network and object storage are added). At 8 GiB vpsd is two
orders of magnitude faster than either copy; the 8 GiB / 256 MiB ratio stays under 3x.

**Targets not met, and what it would take.**
- *Snapshot ≤ 100 ms*: the median is 1.5-4x over. The qcow2 work itself is 10-120 ms (part 2:
  `qemu-img snapshot -c` alone takes ~10 ms at 256 MiB and ~115 ms at 8 GiB, because every
  allocated cluster's refcount is incremented); the rest is process spawns in the driver, each
  10-60 ms on these two loaded cores: `qemu-img snapshot -l` per disk to check tags,
  `qemu-img snapshot -c` (stopped) or a QMP transaction (running), then `qemu-img measure`
  for the captured size, plus the operation runner's two commits and our 5 ms polling. Getting
  under 100 ms needs the driver (not owned by this bench) to skip the tag listing on the happy
  path, compute the size after marking the snapshot completed (or from QMP
  `query-named-block-nodes` while running), and keep one QMP connection per VM. At 8 GiB
  and beyond the refcount update itself approaches 100 ms on this disk; qcow2 images created
  with larger clusters (`-o cluster_size=2M`) would cut it 32-fold.
- *≥ 20x faster than a full copy at 2 GiB*: met for stopped snapshots and restores; running
  snapshots and running restores (which include a VM kill and boot, ~0.3 s here) come out
  10-21x because a 2 GiB copy from the page cache takes only 4-10 s on this disk. The same fix
  as above brings running snapshots above 20x; a restore that boots a VM cannot be 20x a
  4-second copy, and the target is stated "plus VM stop/start" for that reason.
""",
    "guest": """\
**Reading it.** Only the first write to a cluster still shared with a snapshot pays the
copy-on-write (a new cluster plus refcount updates); once rewritten, the cluster is the disk's
own again and writes go at the no-snapshot speed. Having 5 snapshots instead of 1 adds nothing
per write: what matters is whether the cluster is shared. Deleting a snapshot walks its
tables, so it grows with the allocated data but stays in the sub-second to seconds range,
and it runs in the background (the API hides the snapshot at once). Figures vary by ±30%
from run to run on this shared machine (other engineers' tests were running).
""",
    "api": """\
**What changed (read path only, behaviour identical, `tests/unit` passes):**
- `SnapshotService.list`/`get` select the nine columns the API shows (snapshot + server id and
  name) and return frozen `SnapshotView` values instead of ORM `Snapshot` objects with a
  `joinedload`ed `Server`. cProfile of a 100-row list showed ~70% of the time in SQLAlchemy's
  instance construction (identity map, `InstanceState`, the joined server); the joinedload also
  joined `servers` twice. `presenters.snapshot_out` accepts either shape.
- `Database`: no `pool_pre_ping` on SQLite (a `SELECT 1` on every checkout of a connection to a
  local file); PostgreSQL keeps it.
- The queries already use `ix_servers_account_id_id` and `ix_snapshots_server_id_status`
  (checked with `EXPLAIN QUERY PLAN`), so no new index was needed. uvicorn already runs on
  httptools and uvloop (both installed).

**Caveat on before/after.** The "before" run was made while the 2 GiB/8 GiB copies of part 1
were running and the "after" one during part 2, with other engineers' tests on the same two
cores (load average 4-9), so the absolute figures are pessimistic and the ratio is approximate.

**Targets not met, and what it would take.** One Python process on these 2 cores, shared with
the load generator and others' work, stays far from 1,000 req/s. Remaining per-request cost,
in order: FastAPI's dependency resolution and response validation (the route builds
`SnapshotOut` models, FastAPI validates them again against the return type), the token lookup
(one SQL query per request: a TTL cache would save it but would let a token revoked with
`vpsd token revoke` from another process keep working for up to the TTL; the e2e tests revoke
and expect 401 at once, so it was not done), and the `count(*)` of each list. Next steps:
return pre-serialized JSON from the list route (`routes/snapshots.py`, not owned here),
a TTL cache of token-hash → principal with a revocation generation counter in the DB, and
running several uvicorn workers (`--workers 2`) behind the same port.
""",
}
