"""``recstream status`` renders what is in Redis in a form a person reads at a glance."""

from __future__ import annotations

from recstream.status import render


def test_render_shows_model_quality_gate_and_versions() -> None:
    status = {
        "current": 7,
        "versions": {
            6: {"events_learned": 900},
            7: {
                "created": "2026-11-23T10:00:00+00:00",
                "events_learned": 1200,
                "events_labelled": 800,
                "events_rejected": 3,
                "progressive_auc": 0.8123,
                "progressive_logloss": 0.4567,
                "model": {"kind": "item_cooccurrence"},
            },
        },
        "gate": {"duplicate": 40, "user_rate": 10},
        "guard": {"state": "learning", "since": None, "reference": 0.61, "reference_count": 2000},
        "offsets": {"events/0": 600, "events/1": 603},
        "writer": {"holder": "host-a:12:ab12cd34", "expires_in": 8.4, "lease_seconds": 10.0},
    }
    now = 1_795_428_030.0  # 30 s after the checkpoint above
    text = render(status, now=now)
    assert "v7 (item_cooccurrence), checkpoint 30 s ago" in text
    assert "1,200 events (800 labelled), 3 rejected" in text
    assert "AUC 0.812, log loss 0.457" in text
    assert "50 held or dropped" in text and "duplicate" in text and "user_rate" in text
    assert "v6 (900), v7* (1,200)" in text
    assert "events/0=600, events/1=603" in text
    assert "writer     host-a:12:ab12cd34 (its lease runs 8 s more unless renewed)" in text


def test_render_says_when_there_is_no_model_yet() -> None:
    text = render({"current": None, "versions": {}, "gate": {}, "guard": {}, "offsets": {}}, now=0)
    assert "none yet" in text and "nothing held" in text and "guard      learning" in text
    assert "writer     none: no worker holds the writer lease" in text


def test_render_says_when_the_writer_stopped_renewing_its_lease() -> None:
    """A worker renews its lease every third of it: a lease left to run down past half says its worker may be gone
    (killed: nobody gives the lease back), before a standby takes over."""
    status = {"current": None, "versions": {}, "gate": {}, "guard": {}, "offsets": {}}
    writer = {"holder": "host-a:12:ab12cd34", "expires_in": 2.2, "lease_seconds": 10.0}
    text = render({**status, "writer": writer}, now=0)
    assert "writer     host-a:12:ab12cd34 (not renewed for 8 s, where a running worker renews it every 3 s" in text
    assert "RECSTREAM_WORKER_LEASE_SECONDS=10: it may have stopped; the lease runs out in 2 s" in text
    renewed = render({**status, "writer": {**writer, "expires_in": 6.0}}, now=0)
    assert "(its lease runs 6 s more unless renewed)" in renewed


def test_render_says_since_when_the_model_guard_paused_learning() -> None:
    status = {"current": None, "versions": {}, "gate": {}, "offsets": {}}
    paused = {"state": "paused", "since": 1_795_428_000.0, "reference": 0.61, "reference_count": 2000}
    text = render({**status, "guard": paused}, now=1_795_428_090.0)
    assert "guard      paused since 2026-11-23 10:00:00 UTC (90 s ago)" in text
    odd = render({**status, "guard": {**paused, "since": 1e300}}, now=0.0)  # as Redis held it: shown, no crash
    assert "guard      paused since 1e+300 (Unix seconds)" in odd
