"""What a replay overrides for each quarantine record: the rule replayed and those an earlier replay overrode for it,
never ``model_paused`` (the model's state when it was held, not a verdict on the event)."""

from __future__ import annotations

from stream.processor import OVERRIDE_HEADER, carried_overrides
from stream.quarantine import override_headers


def test_a_replay_overrides_the_rule_replayed_and_those_overridden_before() -> None:
    record = {"reason": "watch_exceeds_duration", "overrides": ["future_timestamp"], "event": {}}
    assert override_headers(record, "watch_exceeds_duration") == [
        (OVERRIDE_HEADER, b"future_timestamp,watch_exceeds_duration")
    ]
    assert override_headers(record, None) == [(OVERRIDE_HEADER, b"future_timestamp")]  # --reason all
    assert override_headers({"reason": "too_late", "event": {}}, None) is None


def test_model_paused_is_never_carried_to_a_later_replay() -> None:
    # held by user_rate after a model_paused replay: its user_rate replay must not also skip a later pause
    record = {"reason": "user_rate", "overrides": ["model_paused", "too_late"], "event": {}}
    assert override_headers(record, "user_rate") == [(OVERRIDE_HEADER, b"too_late,user_rate")]
    # nor named by a replay of what a pause held: a pause while it is learned holds those events again
    assert override_headers({"reason": "model_paused", "event": {}}, "model_paused") is None
    assert override_headers({"reason": "model_paused", "overrides": ["too_late"], "event": {}}, "model_paused") == [
        (OVERRIDE_HEADER, b"too_late")
    ]
    # and the worker does not write it into the record of an event held again
    assert carried_overrides(frozenset({"model_paused", "too_late"})) == ["too_late"]
    assert carried_overrides(frozenset({"model_paused"})) == []
