"""Durable operations: the slow work (boot, stop, snapshot, restore, delete) and its runners.

A service writes an ``Operation`` row in the same transaction as the state change; a runner
claims pending rows and executes them with ``vpsd.operations.handlers.execute``. Every
handler is idempotent, so recovery after a crash only has to run unfinished ones again.
"""
