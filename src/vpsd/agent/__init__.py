"""One hypervisor host's worker (``host_agent.HostAgent``): recovery at start, the operation
runner (polling the database, or fed by the broker), the VM monitor, the automatic backups,
the heartbeat and the lease sweeper, for the servers of its own host only.

It talks to the rest of vpsd through the database alone: it records its heartbeat and
capacity, its servers' states and consoles, and its operations' results; API processes
anywhere read them. ``vpsd.runtime`` assembles it.
"""
