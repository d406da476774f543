"""The composition root: the one place that assembles vpsd, for each role a process plays.

- **embedded** (``vpsd serve`` with no broker): the API and this host's agent in one
  process, on SQLite by default. The agent records what the API reads (heartbeats with the
  host's capacity, the mirrored consoles, operations' results) exactly as a remote agent
  does, so there is one behaviour to test.
- **API** (``vpsd serve`` with a broker, and every ``vpsd serve --workers N`` process): the
  API alone; new operations go to their hosts' queues (``operations.publisher``) or, with no
  broker, to the agent that polls the database.
- **host agent** (``vpsd agent``, and the parent of ``vpsd serve --workers N`` with no
  broker): one host's worker alone (``vpsd.agent``).

``assembly`` builds the parts of a role, ``app`` the ASGI application of a process with an
API (the web panel included), ``agent_process`` the ``vpsd agent`` process; ``instance``,
``http_protocol`` and ``workers`` are how ``vpsd serve`` claims its data dir, speaks HTTP
and runs its worker processes. Nothing below this package imports it.
"""
