"""The panel's snapshot lifecycle, in-process: protecting and unprotecting, an expiry chosen
when taking one and shown, the snapshot policy form and a skipped slot's reason, and deleting
a server whose snapshots are protected."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import update

from tests.helpers import ApiClient
from tests.unit import test_panel
from tests.unit.test_panel import signed_in, text_of
from vpsd.db.models import SnapshotPolicy
from vpsd.db.session import Database

client = test_panel.client
"""The app over HTTPS, as the panel's tests have it (``database``: its database)."""
database = test_panel.database


def _words(page: str) -> str:
    return " ".join(page.split())


def test_protect_and_unprotect_a_snapshot(
    client: TestClient,
    database: Database,
    alice: ApiClient,
) -> None:
    server = alice.create_server("web-1")["id"]
    sid = alice.create_snapshot(server, "keep-me")["id"]
    panel = signed_in(client, database, "alice")
    page = text_of(panel.get(f"/servers/{server}"))
    assert f'id="snapshot-delete-{sid}"' in page and ">Protect<" in page.replace("<span", "<")

    protected = panel.submit(f"/snapshots/{sid}/protection", {"protected": "true"})
    assert protected.status_code == 303, protected.text
    assert alice.get(f"/snapshots/{sid}/").json()["protected"] is True
    page = text_of(panel.get(protected.headers["location"]))
    assert "Snapshot keep-me is protected: it is never deleted, expired or rotated." in page
    assert f'id="snapshot-delete-{sid}"' not in page  # no way to delete it from here
    assert "Unprotect" in page and "protected" in _words(page)
    refused = panel.submit(f"/snapshots/{sid}/delete")  # as a stale page would
    assert refused.status_code == 400
    assert "keep-me is protected: remove its protection first" in text_of(refused)

    panel.submit(f"/snapshots/{sid}/protection", {"protected": "false"})
    assert alice.get(f"/snapshots/{sid}/").json()["protected"] is False
    odd = panel.submit(f"/snapshots/{sid}/protection", {"protected": "maybe"})
    assert odd.status_code == 400 and "choose Protect or Unprotect" in text_of(odd)


def test_a_snapshot_taken_with_an_expiry_shows_it(
    client: TestClient,
    database: Database,
    alice: ApiClient,
) -> None:
    server = alice.create_server("web-1")["id"]
    panel = signed_in(client, database, "alice")
    taken = panel.submit(f"/servers/{server}/snapshots", {"name": "brief", "expires_in": "24"})
    assert taken.status_code == 303, taken.text
    [snapshot] = alice.get(f"/snapshots/?server_id={server}").json()["results"]
    expires = datetime.fromisoformat(snapshot["expires_at"].replace("Z", "+00:00"))
    assert abs(expires - (datetime.now(UTC) + timedelta(days=1))) < timedelta(minutes=2)
    page = _words(text_of(panel.get(f"/servers/{server}")))
    assert f"expires {expires:%Y-%m-%d %H:%M} UTC" in page

    wrong = panel.submit(f"/servers/{server}/snapshots", {"name": "odd", "expires_in": "5"})
    assert wrong.status_code == 400
    assert "choose when the snapshot expires from the list" in text_of(wrong)
    assert alice.get(f"/snapshots/?server_id={server}").json()["count"] == 1


def test_the_snapshot_policy_form_and_a_skipped_slot(
    client: TestClient,
    database: Database,
    alice: ApiClient,
) -> None:
    server = alice.create_server("web-1")["id"]
    panel = signed_in(client, database, "alice")
    saved = panel.submit(
        f"/servers/{server}/snapshot-policy",
        {"enabled": "on", "frequency": "hourly", "minute": "20", "hour": "3", "keep": "2"},
    )
    assert saved.status_code == 303, saved.text
    policy = alice.get(f"/servers/{server}/snapshot-policy/").json()
    assert (policy["frequency"], policy["minute"], policy["keep"]) == ("hourly", 20, 2)
    page = _words(text_of(panel.get(saved.headers["location"])))
    assert "Automatic snapshots are on." in page
    assert "Next automatic snapshot: " in page and ":20 UTC" in page

    refused = panel.submit(
        f"/servers/{server}/snapshot-policy",
        {"enabled": "on", "frequency": "hourly", "minute": "20", "hour": "3", "keep": "9"},
    )
    assert refused.status_code == 400
    assert "keep: Input should be less than or equal to 5" in _words(text_of(refused))
    assert alice.get(f"/servers/{server}/snapshot-policy/").json() == policy

    # What the agent records when manual snapshots fill the five, the page shows.
    with database.write() as session:
        session.execute(
            update(SnapshotPolicy)
            .where(SnapshotPolicy.server_id == server)
            .values(
                skipped_slot=datetime(2026, 11, 2, 3, 20, tzinfo=UTC),
                skipped_reason="not taken: the server already has its 5 snapshots (5 manual)",
            )
        )
    page = _words(text_of(panel.get(f"/servers/{server}")))
    assert (
        "The automatic snapshot of 2026-11-02 03:20 UTC was skipped: not taken: the server "
        "already has its 5 snapshots (5 manual)" in page
    )


def test_deleting_a_server_with_a_protected_snapshot_says_so_first(
    client: TestClient,
    database: Database,
    alice: ApiClient,
) -> None:
    server = alice.create_server("web-1")["id"]
    sid = alice.create_snapshot(server, "keep-me")["id"]
    alice.request("PATCH", f"/snapshots/{sid}/", json={"protected": True})
    panel = signed_in(client, database, "alice")
    asked = _words(text_of(panel.get(f"/servers/{server}/delete")))
    assert "Protected snapshots lose their protection and are deleted too: keep-me." in asked
    deleted = panel.submit(f"/servers/{server}/delete", {"force": "true"})
    assert deleted.status_code == 303, deleted.text
    page = _words(text_of(panel.get(deleted.headers["location"])))
    assert (
        "Server web-1 is being deleted. The protection of its snapshots keep-me was removed."
        in page
    )
    alice.wait_server(server, None)


def test_without_the_confirmation_a_protected_snapshot_stops_the_delete(
    client: TestClient,
    database: Database,
    alice: ApiClient,
) -> None:
    server = alice.create_server("web-1")["id"]
    sid = alice.create_snapshot(server, "keep-me")["id"]
    panel = signed_in(client, database, "alice")
    asked = panel.get(f"/servers/{server}/delete")  # asked before it was protected
    assert 'name="force"' not in asked.text
    alice.request("PATCH", f"/snapshots/{sid}/", json={"protected": True})
    refused = panel.submit(f"/servers/{server}/delete")
    assert refused.status_code == 400
    assert "has protected snapshots: keep-me" in text_of(refused)
    assert alice.server_status(server) == "running"
