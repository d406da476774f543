"""A test "host" in a network namespace of its own that reaches the database and the broker
and nothing else.

A veth pair joins it to this machine's namespace: ``<prefix>.1`` outside, ``<prefix>.2``
inside, and no other route (no default route: nothing beyond this machine, nor this
machine's other addresses). PostgreSQL and RabbitMQ listen on 127.0.0.1 only, so a forwarder
on the outer address relays their two ports to 127.0.0.1. Needs root and iproute2.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import threading
from urllib.parse import urlsplit, urlunsplit

FORWARDED_PORTS = (5432, 5672)
"""PostgreSQL's and RabbitMQ's."""


def available() -> bool:
    """Network namespaces can be made here (root, with ``ip``)."""
    return os.geteuid() == 0 and shutil.which("ip") is not None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Forwarder:
    """Relays TCP connections from ``listen`` to the same port on 127.0.0.1, for each port,
    from an event loop in a daemon thread."""

    def __init__(self, listen: str, ports: tuple[int, ...]) -> None:
        self.loop = asyncio.new_event_loop()
        self.servers: list[asyncio.Server] = []
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                for port in ports:
                    self.servers.append(
                        self.loop.run_until_complete(
                            asyncio.start_server(self._relay(port), listen, port)
                        )
                    )
            except BaseException as error:  # reported to the caller below
                errors.append(error)
            ready.set()
            self.loop.run_forever()
            relays = asyncio.all_tasks(self.loop)
            for task in relays:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*relays, return_exceptions=True))
            self.loop.close()

        self.thread = threading.Thread(target=run, name=f"forward-{listen}", daemon=True)
        self.thread.start()
        ready.wait(10)
        if errors:
            self.close()
            raise errors[0]

    def _relay(self, port: int):  # type: ignore[no-untyped-def]
        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

        return relay

    def close(self) -> None:
        """Stop listening and stop the loop."""

        def stop() -> None:
            for server in self.servers:
                server.close()
            self.loop.stop()

        if self.loop.is_running():
            self.loop.call_soon_threadsafe(stop)
            self.thread.join(10)
        elif not self.loop.is_closed():
            self.loop.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            writer.close()


class Namespace:
    """One network namespace, ``name``, joined to this one by a veth pair."""

    def __init__(self, name: str, index: int) -> None:
        self.name = name
        # Another run at the same time (CI beside a developer) picks another subnet.
        base = f"10.{random.randrange(100, 250)}.{index}"
        self.outer, self.inner = f"{base}.1", f"{base}.2"
        outside, inside = f"vo{os.getpid() % 10**6}{index}", f"vi{os.getpid() % 10**6}{index}"
        _ip("netns", "add", name)
        try:
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", name)
            _ip("addr", "add", f"{self.outer}/24", "dev", outside)
            _ip("link", "set", outside, "up")
            _ip("-n", name, "addr", "add", f"{self.inner}/24", "dev", inside)
            _ip("-n", name, "link", "set", inside, "up")
            _ip("-n", name, "link", "set", "lo", "up")  # the VMs' SSH forwards, the agent's own
            self.forwarder = Forwarder(self.outer, FORWARDED_PORTS)
        except BaseException:
            self.close()
            raise

    def command(self, *args: str) -> list[str]:
        """``args`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def url(self, url: str) -> str:
        """``url`` (of 127.0.0.1) as seen from inside: the forwarder's address."""
        parts = urlsplit(url)
        netloc = parts.netloc.replace("127.0.0.1", self.outer).replace("localhost", self.outer)
        return urlunsplit(parts._replace(netloc=netloc))

    def routes(self) -> str:
        """The namespace's routing table."""
        return subprocess.run(
            ["ip", "-n", self.name, "route"], check=True, capture_output=True, text=True
        ).stdout

    def close(self) -> None:
        """Remove the namespace (and with it the veth pair) and stop the forwarder."""
        forwarder = getattr(self, "forwarder", None)
        if forwarder is not None:
            forwarder.close()
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "delete", self.name)
