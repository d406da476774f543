"""What ``vpsctl backups policy`` and ``vpsctl snapshots policy`` share: the schedule's
options, and showing a policy or changing only the options given."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel

from vpsd.cli.vpsctl_common import UsageProblem, merged, open_client
from vpsd.cli.vpsctl_output import WEEKDAYS, OutputFormat, note, print_json
from vpsd.client import Client

EnableOption = Annotated[
    bool | None, typer.Option("--enable/--disable", help="turn the automatic ones on or off")
]
HourOption = Annotated[
    int | None,
    typer.Option("--hour", min=0, max=23, metavar="H", help="the hour of the day, UTC"),
]
WeekdayOption = Annotated[
    str | None,
    typer.Option(
        "--weekday", metavar="DAY", help="weekly ones' day: mon ... sun, or 0-6 (0 is Monday)"
    ),
]
PolicyT = TypeVar("PolicyT", bound=BaseModel)


def parse_weekday(value: str) -> int:
    """``0``-``6`` (0 is Monday) or a day's name, whole or its first three letters."""
    text = value.strip().lower()
    if text.isdigit() and int(text) < len(WEEKDAYS):
        return int(text)
    for number, day in enumerate(WEEKDAYS):
        if len(text) >= 3 and day.startswith(text):
            return number
    raise UsageProblem(f"--weekday {value!r}: give 0-6 (0 is Monday) or a day: mon, tue, ... sun")


def show_or_change(
    ctx: typer.Context,
    server_id: int,
    changes: dict[str, Any],
    *,
    read: Callable[[Client], Callable[[int], dict[str, Any]]],
    write: Callable[[Client], Callable[..., dict[str, Any]]],
    model: type[PolicyT],
    show: Callable[[int, PolicyT], None],
    output: OutputFormat,
    what: str,
) -> None:
    """Show the server's policy (``read``), or ``PUT`` it (``write``) with the ``changes``
    given (not None) and the rest as they are; ``what`` names the automatic ones."""
    if changes.get("weekday") is not None:
        changes["weekday"] = parse_weekday(changes["weekday"])
    with open_client(ctx) as client:
        body = read(client)(server_id)
        if any(value is not None for value in changes.values()):
            current = model.model_validate(body)
            body = write(client)(server_id, **merged(current, **changes))
    shown = model.model_validate(body)
    if output is OutputFormat.json:
        print_json(body)
        return
    show(server_id, shown)
    given = any(value is not None for value in changes.values())
    if given and not body["enabled"] and changes.get("enabled") is None:
        note(f"{what} are disabled: pass --enable to turn them on")
