"""What the figures mean, written after looking at a real run (kept beside the generator).

Re-running ``make bench`` refreshes every figure; re-read this text against the new tables.
"""

ANALYSIS: dict[str, str] = {
    "snapshots": """\
**Reading it.** Snapshot and restore times stay flat from 256 MiB to 8 GiB while full copies
grow linearly with the data (about 1.1-1.5 s per GiB on this disk, the same order as the
anchors' ~1 minute per GB once network and object storage are added). At 2 GiB vpsd is over
40x faster than either copy; the 8 GiB / 256 MiB ratio stays under 2x. The figures are
request → `completed` through the API: the POST, the runner picking the operation up and
recording it (SQLite commits), the qcow2 work, then our 2 ms polling.

**What got the 8 GiB snapshot from 128-153 ms to under 40 ms**, profiled step by step:
`qemu-img measure` for the snapshot's size cost a process and 12 ms at 8 GiB (40-60 ms on a
disk backed by an image, where it walks the backing chain): the driver now reads the
snapshot's L1/L2 tables itself (`hypervisor/qemu/qcow2.py`, 3 ms at 8 GiB, checked against
qemu-img on every layout vpsd makes). A `qemu-img info` looking for a leftover of an earlier
attempt (8-11 ms) is skipped on an operation's first attempt, since tags are never reused.
What remains at 8 GiB is mostly `qemu-img snapshot -c` itself (20-30 ms: it increments the
refcount of every allocated cluster).

**Beside libvirt.** On copies of the same disks, vpsd (through HTTP, its runner and database)
is as fast as `virsh` on a shut-off domain: 0.72-0.95 of libvirt's time everywhere except the
8 GiB create, at parity (1.05, inside both tools' spread of a few ms: both pay the same
`qemu-img snapshot -c`). libvirtd had to be started with `/dev/kvm` hidden: where `/dev/kvm`
opens but cannot run a guest (this machine's nested, paravirtual KVM), libvirt finds its
QEMU capabilities stale on every call and probes QEMU again, 4-8 s per `virsh` call, a
figure no real host would see.
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
    "guests": """\
**Reading it.** On these machines guests run under TCG (software emulation: `/dev/kvm` here
cannot run a Linux kernel), so a boot to SSH takes 22-25 s, most of it the kernel and
systemd emulated. No machine here runs KVM with a real guest, so the KVM figure is not
measured; the same bench measures it (`VMs on KVM` in the machine line) on a host that does.
Creating a server is a copy-on-write overlay of the image plus a QEMU start: about
0.1-0.15 s to `running`.

A snapshot of a running guest freezes its filesystems briefly, idle or under a `dd` loop
writing 256 MiB files, and the guest's writes wait that long at most: idle, 56 ms median and
95 ms worst; under writes, 76 ms median and one freeze of 557 ms in eight. Before freezing,
vpsd reads the guest's dirty memory through the agent (`/proc/meminfo`, ~10 ms, no process in
the guest); above 4 MiB it runs `sync` first, so the freeze has little left to flush. An
unconditional `sync` cost 60-250 ms of each snapshot under TCG (spawning a process in an
emulated guest) and missed the 200 ms idle target (221-298 ms); with no `sync` at all, or
with a 16 MiB threshold, a freeze under writes reached 1.1 s. Under heavy writes
the `sync` can take seconds (the guest keeps dirtying pages); it runs before the freeze, so
the guest is not held meanwhile.

A graceful stop is an ACPI power-down the Debian guest honours in about 2 s; a reboot is a
graceful power cycle.
""",
    "api": """\
**Beside the lean twin (issue 14).** The twin (bench/twin.py) does the same work as vpsd's
three reads with nothing in between: the very SQL statements vpsd sends (it imports them from
`vpsd.services.snapshots`), the same tenancy filter and token check with its 2 s cache, bodies
byte-identical to vpsd's (tests/bench/test_twin.py checks 19 queries on both databases, with
and without `VPSD_PUBLIC_URL`), on uvicorn with uvloop and httptools, stdlib sqlite3 or
psycopg 3, orjson. It is what one Python process can do for that work on this machine, so the
ratio vpsd/twin says how much of vpsd's time is its own stack. vpsd and the twin alternate
A/B/A/B on each read in the same minutes, so the ratios hold when the machine is loaded.

**Before** (vpsd as committed before this work, `api-before.json`): on SQLite 0.22x the twin
on the 100-row list and 0.05x on get and the filtered list (622 req/s against 11,749 for get);
on PostgreSQL 0.16-0.27x; at 300 req/s vpsd fell behind on every read.

**What the profiles said, and what changed** (py-spy on a loaded `vpsd serve`, pyinstrument
on the ASGI app called directly; per request, no sockets):
1. The service call of the 100-row list took 3.98 ms against 1.1 ms for its SQL alone: an ORM
   session per request, each statement's cache key rebuilt, 100 times a datetime parsed by
   the column type then formatted by the response model. Now: precompiled `text()`
   statements, stored times formatted by slicing SQLite's text (`api_time`), rows made
   straight into named tuples: 1.69 ms.
2. Pydantic built and validated 100 `SnapshotOut` models, then serialized them (0.9 ms). Now
   the list and show endpoints build plain dicts in the model's field order (a unit test holds
   them byte-identical to the model's JSON) rendered by orjson; `response_model` stays for the
   OpenAPI document.
3. Sync handlers and dependencies went through a worker thread (the issue's profile: 24%).
   The three reads and the dependencies are `async` now: their queries are short (an index
   lookup; the list's 1 ms sort) and run on the event loop.
4. `Connection.execute` cost ten times the query: a pool checkout, SQLAlchemy's `BEGIN`
   event, the result machinery. Now `Database.fetch` runs the compiled statement on a DB-API
   connection each thread keeps (autocommit; an explicit transaction when a list's count and
   page must see one snapshot; on PostgreSQL no pool ping, and a connection found broken is
   replaced and the read run again, tested with `pg_terminate_backend`). get's service call:
   0.39 ms -> 0.09 ms.
5. Authentication was three dependency layers (HTTPBearer, the services, the check): now one,
   parsing the header with FastAPI's own parser; the OpenAPI document is unchanged (its
   security requirement is added in `vpsd.api.openapi`, compared before and after). The
   body-size middleware no longer builds its 413 answer on every request.
Together, ASGI-level get went from 346 to 139 us per request, and the list to 1.5 ms, of
which the SQL is 1.1 ms. A second round (py-spy on a loaded `vpsd serve`, the ASGI app
called in-process; measured beside the twin each time):
6. On PostgreSQL the reads held the event loop for each round trip (a sync driver), so eight
   clients' queries ran one after another. They now await psycopg's async pool
   (`Database.afetch`, opened in the app's lifespan): list 0.40x -> 0.59-0.65x the twin, p99
   at 300 req/s 73 -> 6-7 ms. SQLite has no round trip to await and keeps its in-process call.
7. Routing tried the servers' routes before the snapshots' (a fifth of get's time in route
   matching); the snapshot routes are now matched first: ASGI get 180 -> 140 us.
8. The token is checked by the route class (`ApiRoute`) before FastAPI reads the route's
   parameters, not by a dependency FastAPI solves per request: ASGI get 140 -> 122 us. (A
   stranger now gets 401 before any 400 or 415, tested.)
9. At the default log level uvicorn wrote an access line per request: 16% of get's busy time
   in a loaded `vpsd serve` (the bench ran at `--log-level warning`, so its figures did not
   show it). The access log is off by default now (`VPSD_ACCESS_LOG`, `--access-log`):
   pollers would also drown the log, and journald drops a service's lines past 10,000 per
   30 s.

**Where it stands** (the tables above, and four runs of `python -m bench api` this session
on the same machine). On SQLite the list is 0.74-0.78x the twin, the filtered list
0.31-0.35x, get 0.26-0.30x (3,858-4,234 req/s against 14,061-15,009), every read's p99 at
300 req/s under 5 ms. On PostgreSQL the list is 0.55-0.65x, the filtered list 0.31-0.33x,
get 0.26-0.34x, p99 at 300 req/s at most 14 ms. So two targets are met in some runs and
missed in others by a few percent: get on SQLite (0.3x) and the list on PostgreSQL (0.7x).
A py-spy profile of get under wrk (SQLite, 3,000 req/s with py-spy attached) says where the
rest of vpsd's time goes, beside work the twin does too (the socket's read and write, 24%;
the SQL, 12%): FastAPI's parameter solving for the one path parameter 16%, route matching 8%
(FastAPI 0.165 matches the app's router, then the included router, then the route), ten
middleware layers 9% (two are vpsd's: the body-size limit and the error net; FastAPI's own
body limit and OpenTelemetry check, Starlette's error and exception middlewares), the token
check 5%. What the twin does not have is the framework: each remaining layer is a few
percent, none a hot spot. uvloop, which the twin runs on, measured +24% for get beside
asyncio in the same session (3,854 against 3,097 req/s); vpsd keeps asyncio's loop on
purpose, since its accept loop takes at most `backlog` connections per wake-up and so bounds
a connection flood's overshoot of the descriptor cap (issue 10), where uvloop accepts until
the queue is empty. On PostgreSQL the list's remaining gap is the same framework cost plus
the 100 dicts and page links, over a round trip the twin pays too.

**Since then (issue 13):** the run in the tables above was made after `GET /metrics` added
its request histogram (a pure-ASGI middleware, about 2.3 µs per request measured alone) and
stays within those ranges: get on SQLite 0.28x (4,381 req/s), the list on PostgreSQL 0.63x.
`vpsd serve --workers 2` on PostgreSQL, the API processes that run beside the hosts' agents
on a broker, served get at 3,713 req/s against 2,344 from one process (target: 2,500), with
wrk on the same 2 cores. The lists gain nothing from the second worker here: their time is
PostgreSQL's and the JSON's, on the same two cores.

**Earlier read-path fixes (before issue 14), found by profiling (py-spy on a loaded
`vpsd serve`, cProfile in-process):**
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
- The HTTP server fixes of issue 10: the listening socket had no `TCP_NODELAY` (40 ms per
  keep-alive request, Nagle against delayed ACKs), and the event loop is asyncio's (bounded
  accepts under floods).

Together they took list from 25 to 91-236 req/s, list-filtered from 80 to 161-448, get from
143 to 244-648 (the before/after table compares the vpsd-only run kept in
`bench/results/api-before.json`; runs on a loaded and a quiet machine, so ratios are
approximate).
""",
    "backups": """\
*The vpsd rows of the run above (2026-11-27) were measured before incremental backups
(part 6): vpsd then streamed every disk whole through nbdcopy into `restic backup --stdin`.
The baselines (raw reads, restic alone, the pipe) still hold; part 6 measures the chunked
engine.*

**Reading it.** A backup is CPU-bound in restic, not in reading the disk. The same 2 GiB of
random data reads in 0.2 s with qemu-img and 1.6 s through vpsd's reader (nbdcopy into a
pipe), but restic alone, fed from a file, takes 11.5 s (187 MB/s) and 18 CPU-seconds: it
chunks, hashes (SHA-256), encrypts and packs every byte, about 9 CPU-s per GiB, so even
with both cores to itself it cannot pass ~240 MB/s here (the anchors' one published run:
≈249 MB/s). Fed through the pipe it needs 23 CPU-s and 15.2 s; vpsd's first backup, 17.5 s
median (123 MB/s, 15.2 s at best), is that pipeline plus ~2 s of its own (the temporary
internal snapshot, a second restic process listing the repository to record the snapshot's
full id, the runner). The spread (15-24 s) is other work on the 2 cores: the load average
stood at 1.5-3 during the run, other engineers' test suites running beside it.

The second backup of the unchanged disk stores 1 MiB (0.05% of the disk; target < 1%), but
still takes 8.8 s: restic must read and hash all 2 GiB from the pipe to find that nothing
changed (8 CPU-s, a third of the first's: no new chunks to encrypt and write). Its time
grows with the disk's size, not with what changed; only reading changed clusters alone (QEMU
dirty bitmaps, as Proxmox Backup Server does) would make it proportional to the change.
Likewise a blank disk's backup streams 2 GiB of zeros through restic (6.5 s, 1 MiB stored;
that first one also created the repository).

A restore (10.3 s, 208 MB/s) is mostly `restic dump` (6.3 s alone to /dev/null); writing the
same bytes over the disk's clusters takes 0.7 s with qemu-img, and the rest is nbdcopy and
qemu-nbd sharing the 2 cores with restic. A new server from the backup (18 s median, 13 s
at best) also allocates every cluster of a new qcow2 (2.1 s with qemu-img against 0.7 s in
place, up to 5.6 s) and starts the VM.

**New servers from a snapshot** reach `running` in 0.26-0.28 s at 8 GiB (target ≤ 2 s), of
which the copy is ~0.15 s: vpsd's `qemu-img convert` of the snapshot copies only allocated
data, here the 256 MiB the source wrote (on a server from the image, only its overlay:
`-B image`). The copy grows with the server's own data, not its disk size: a server that had
written all 8 GiB would pay about a full copy (4.2 s for 8 GiB in part 1).
""",
    "incremental": """\
**Reading it.** This run shared its 2 cores with other engineers' work: the load average
stood near 20 throughout (the machine line), and vpsd's own integration and end-to-end tests
ran beside the third repetition and the chain. Every time above is several times what the
same step takes on a quiet machine, and the spread between repetitions (44-100 s for the
same restic run) is that load, not vpsd. Read the figures side by side within a
repetition, as the targets do; a run on a quiet machine is still owed.

What changed is what is read. A backup of the unchanged disk read nothing (0 bytes of 8 GiB,
every repetition) and stored nothing (restic's tree of the chunk files was the parent's,
byte for byte); after 1% of
the disk was rewritten in 4 MiB runs it read 1.2% (the runs' chunks, at most two 1 MiB chunk
files more than the run each), and stored about what was written. Neither grows with the
disk: a backup's reading is the chunks the dirty bitmap marks, and its time restic's per-file
metadata work plus what it reads.

The unchanged backup's time is mostly restic's own floor, not reading: restic 0.14 opens the
repository (scrypt), takes its lock (and waits a fixed 200 ms before trusting it), loads the
index and the parent's trees, and walks every chunk file (lstat, no read) before writing the
new snapshot. Measured apart under a similar load (load average 14, not in this run):
restic alone backing up an unchanged directory of 1,024 files of 1 MiB with its parent took
0.7-0.8 s (0.2 s of it CPU), of 4,096 files 0.9 s, of 256 files 0.45 s; vpsd's own steps,
timed in-process, were 30-60 ms for the backup point (QMP transaction, the frozen bitmap's
NBD map), 25-50 ms to start qemu-nbd, 10-100 ms for its allocation map, 10-60 ms to finish.
The bench now measures restic's floor beside each unchanged backup (the row "restic alone:
an unchanged directory", from its next run on). A second run right after this one (load
average 12-16, a chain of 2, its results not kept here) did: restic alone took 0.66, 1.00
and 0.81 s for 2,048, 3,057 and 3,944 unchanged files, vpsd's unchanged backups 2.10, 1.29
and 2.23 s. So vpsd's path adds 0.3-1.4 s to restic's floor under this load (the FUSE
metadata its Python threads serve, the starts of qemu-nbd and nbdinfo, the transaction, the
database), not yet profiled further. The ≤ 1 s target is not met: restic 0.14's own floor
is near it at this file count, and vpsd's part must shrink too.

Scattered writes are the worst case of 1 MiB chunks: 1% of the disk as 64 KiB writes at
random offsets touches about 1,300 chunk files, so the backup reads 15% of the disk (and
hashes it) to store the 1% that changed. Larger chunks would make that worse (4 MiB: most
of the data), smaller ones would multiply restic's per-file work and blob count; 1 MiB is
restic's mean blob size. Real guests write in clusters (files, journals, databases), between
these two cases.

A full backup (no base) reads every chunk holding data through the FUSE view: restic reads
two chunk files at a time, each as 512 KiB direct-I/O requests that vpsd's threads answer
from qemu-nbd, so it chunks and hashes on both cores where `restic backup --stdin` of one
file feeds one stream. Pair by pair (each full backup beside restic alone on the same data)
the ratio went 0.75, 1.09 and 1.42 as the load moved; a quieter comparison on 1 GiB (load
average 12, twice each, not in this run) gave 11.6 and 12.6 s through the view against 17.2
and 14.3 s for `--stdin` of the same bytes, and vpsd's threads used under 1 CPU-s per GiB
beside restic's 8. It reads only chunks that hold data: the raw disk of 8 GiB
holding 2 GiB costs restic alone far more than the 2 GiB (the zeros are hashed too), and
vpsd never reads them.

Every restore in the chain was byte-exact, including after 28 of the 30 backups had been
forgotten and pruned. The 30th restored no slower than the 1st (best of two each; the first
pair took 4-5 minutes under the heaviest load, the second 1.5-2): restic dump reads each
file's blobs wherever they are, so a chain adds no work. A restore still writes the whole
disk through the pipe into qemu-nbd, zeros between chunk files included (vpsd makes them, the
repository does not hold them): writing only the chunks into a new disk is the next step.
""",
}
