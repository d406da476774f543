"""Changes on a real Debian guest (issue 23, point 5): a command that fails, one that never
ends, one whose health check fails (each rolled back: the guest resumes as it was before),
and one that passes; hostile output (a flood, binary bytes) breaks nothing. Runs on the
package's one booted guest and leaves it running, SSH answering."""

from __future__ import annotations

from typing import Any

from tests.guest.conftest import Guest
from tests.helpers import wait_for

TERMINAL = ("succeeded", "rolled_back", "failed")


def change(guest: Guest, command: str, **body: Any) -> dict[str, Any]:
    """Run a change on the guest's server and wait for its end; the change."""
    created = guest.client.post(
        "/changes/", json={"server_id": guest.server_id, "command": command, **body}
    )
    assert created.status_code == 201, created.text
    change_id = created.json()["id"]

    def ended() -> dict[str, Any] | None:
        found: dict[str, Any] = guest.client.get(f"/changes/{change_id}/").json()
        return found if found["status"] in TERMINAL else None

    result: dict[str, Any] = wait_for(ended, 300, interval=1.0, what=f"change {change_id}")
    guest.client.wait_server(guest.server_id, "running", timeout=120)
    guest.wait_ssh(timeout=120)
    return result


def forget(guest: Guest, found: dict[str, Any]) -> None:
    """Delete the change's snapshot (the server keeps at most 5)."""
    assert guest.client.delete(f"/snapshots/{found['snapshot_id']}/").status_code == 204


def test_a_failing_flooding_command_is_rolled_back(guest: Guest) -> None:
    guest.ssh("echo before > /root/change-marker")
    flood = (
        "rm /root/change-marker; head -c 3000000 /dev/urandom; "
        "yes 'a line of output' | head -c 20000000; printf 'the end\\000\\n'; exit 3"
    )
    found = change(guest, flood, health_check={"ssh": True})
    assert found["status"] == "rolled_back", found
    assert found["exit_code"] == 3
    assert "exit code 3" in found["status_reason"]
    assert len(found["output"]) <= 65536 and found["output"].endswith("the end\n")
    assert found["output_length"] > 65536  # most of the flood was skipped, never held
    assert guest.ssh("cat /root/change-marker").strip() == "before"
    forget(guest, found)


def test_a_command_that_never_ends_is_killed_and_rolled_back(guest: Guest) -> None:
    found = change(guest, "touch /root/half-done; sleep 100000", timeout_seconds=5)
    assert found["status"] == "rolled_back", found
    assert "did not end within 5 s" in found["status_reason"]
    assert guest.ssh("test -e /root/half-done || echo gone").strip() == "gone"
    forget(guest, found)


def test_a_failed_health_check_rolls_back_and_a_passing_one_keeps_the_work(
    guest: Guest,
) -> None:
    broken = change(guest, "touch /root/changed", health_check={"tcp_port": 81})
    assert broken["status"] == "rolled_back", broken
    assert broken["exit_code"] == 0 and broken["health"]["passed"] is False
    assert "nothing accepts connections on port 81" in broken["status_reason"]
    assert guest.ssh("test -e /root/changed || echo gone").strip() == "gone"
    forget(guest, broken)

    good = change(
        guest,
        "echo updated > /root/updated",
        health_check={"command": "grep -q updated /root/updated"},
    )
    assert good["status"] == "succeeded", good
    assert good["health"]["passed"] is True
    assert guest.ssh("cat /root/updated").strip() == "updated"
    forget(guest, good)
