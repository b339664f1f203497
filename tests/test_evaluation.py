"""The replay evaluator on streams small enough to score by hand, and the ``evaluate`` command."""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from learner.evaluation import Recommend, ReplayEvent, gate_stream, log_loss, replay, roc_auc
from learner.event_weights import EventWeights
from learner.exploration import ThompsonExplorer
from learner.gate.gate import GateConfig, default_gate, default_stream_clock
from learner.item_cooccurrence import ItemCooccurrence
from learner.online_learner import OnlineLearner
from learner.popularity_models import AllTimePopularity
from learner.registry import DEFAULT_MODEL, build_model
from learner.serving import ServingModel
from recstream import evaluate

LIKES_ONLY = EventWeights(like=1.0, share=0.0, view=0.0, skip=0.0)


def _popularity_learner() -> OnlineLearner:
    return OnlineLearner(model=AllTimePopularity(), weights=LIKES_ONLY)


def _events(*rows: tuple[str, str, str]) -> list[ReplayEvent]:
    return [ReplayEvent(user, item, kind, float(t)) for t, (user, item, kind) in enumerate(rows, start=1)]


# Popularity by likes, k=2. Worked out event by event (counts are likes so far):
#  0 u1 like A   A unknown yet                                  -> miss (rank inf)
#  1 u2 like A   candidates A(1)                                -> rank 1
#  2 u2 like B   B unknown yet                                  -> miss (rank inf); u2 has 1 earlier item
#  3 u3 like B   candidates A(2) B(1)                           -> rank 2: hit, NDCG 1/log2(3), RR 1/2
#  4 u3 share B  second positive for (u3, B)                    -> not scored
#  5 u4 view C   a view                                         -> not scored; C now known, 0 likes
#  6 u1 like B   u1 saw A; candidates B(2) C(0)                 -> rank 1; u1 has 1 earlier item
#  7 u4 like C   ranked at u4's first interaction with C, event 5, when C was unknown yet -> miss (rank inf)
#  8 u5 view D   a view; D is never recommended                 -> not scored
STREAM = _events(
    ("u1", "A", "like"),
    ("u2", "A", "like"),
    ("u2", "B", "like"),
    ("u3", "B", "like"),
    ("u3", "B", "share"),
    ("u4", "C", "view"),
    ("u1", "B", "like"),
    ("u4", "C", "like"),
    ("u5", "D", "view"),
)


def test_hit_rate_ndcg_and_mrr_match_the_hand_computation() -> None:
    result = replay(STREAM, _popularity_learner(), k=2, active_min=1, curve_windows=3)
    overall = result.overall
    assert overall.scored == 6
    assert overall.hit_rate == pytest.approx(3 / 6)
    assert overall.ndcg == pytest.approx((1 + 1 / math.log2(3) + 1) / 6)
    assert overall.mrr == pytest.approx((1 + 1 / 2 + 1) / 6)
    # Second half: positions >= 9/2, i.e. events 6 and 7.
    assert (result.second_half.scored, result.second_half.hit_rate) == (2, 0.5)
    assert result.second_half.mrr == pytest.approx(1 / 2)  # (event 7 counts at its place in the stream)
    # At least one earlier item (the target itself does not count): events 2 and 6.
    assert (result.active_users.scored, result.active_users.hit_rate) == (2, 0.5)
    # Windows of 3 events: [0-2] one hit in three, [3-5] one in one, [6-8] one in two.
    assert [p["hr_at_2"] for p in result.curve] == pytest.approx([1 / 3, 1.0, 0.5])
    assert result.from_popularity == 1  # event 0: the model had no items yet
    assert result.coverage == pytest.approx(3 / 4)  # A, B, C shown; D never
    assert result.auc is None  # every label is a positive: AUC is undefined, not 0.5
    assert result.logloss is not None and result.logloss > 0


def test_events_of_one_interaction_are_scored_before_any_of_them_is_learned() -> None:
    learner = OnlineLearner(model=AllTimePopularity(), weights=EventWeights(view=2.0))
    events = [
        ReplayEvent("u0", "B", "like", 0.5),  # B: weight 1; a miss (B unknown before)
        ReplayEvent("u1", "A", "view", 1.0),  # one rating: view + like at the same time
        ReplayEvent("u1", "A", "like", 1.0),
        ReplayEvent("u2", "A", "view", 2.0),  # a view, then later a like: the view is learned first
        ReplayEvent("u2", "A", "like", 3.0),
    ]
    result = replay(events, learner, k=1)
    # u1's like is a miss: had its own view been learned first, A (weight 2) would have ranked first.
    # u2's like is ranked at u2's view (t=2), u2's first interaction with A: A (weight 3) beats B (1), a hit.
    assert (result.overall.scored, result.overall.hits) == (3, 1)


def test_a_like_after_a_view_is_ranked_at_the_view() -> None:
    # The API never shows an item the user saw, so the last moment it could have shown A to u1 is before u1's view.
    learner = OnlineLearner(model=AllTimePopularity(), weights=EventWeights(view=2.0))
    events = [
        ReplayEvent("u0", "B", "like", 1.0),  # B: weight 1; a miss (B unknown before)
        ReplayEvent("u1", "A", "view", 2.0),  # A unknown yet: u1's like of it, later, is a miss
        ReplayEvent("u1", "A", "like", 3.0),  # (ranked here, A (weight 2, u1's own view) would beat B: a hit)
    ]
    result = replay(events, learner, k=1)
    assert (result.overall.scored, result.overall.hits) == (2, 0)


def test_each_interaction_is_predicted_once_before_any_of_its_events_is_learned() -> None:
    # Ratings as a view and a like (and maybe a share) at one time, and skips: AUC and log loss take one label an
    # interaction, predicted by the model as it was before the interaction (its view learned first would leak).
    rng = np.random.default_rng(7)
    events = []
    for t in range(600):
        user, item = f"u{int(rng.integers(0, 30))}", f"i{int(rng.integers(0, 40))}"
        draw = rng.random()
        kinds = ["view", "like"] if draw < 0.4 else ["view", "like", "share"] if draw < 0.6 else ["skip"]
        events += [ReplayEvent(user, item, kind, float(t)) for kind in kinds]
    result = replay(events, OnlineLearner(model=ItemCooccurrence()), k=10)

    twin, leaky = OnlineLearner(model=ItemCooccurrence()), OnlineLearner(model=ItemCooccurrence())
    labels, predicted, leaky_labels, leaky_predicted = [], [], [], []
    for (user, item, _), grouped in itertools.groupby(events, key=lambda e: (e.user, e.item, e.ts)):
        group = list(grouped)
        ys = [twin.rule.label(e.type, None, None) for e in group]
        if any(y is not None for y in ys):
            labels.append(1.0 if 1.0 in ys else 0.0)
            predicted.append(twin.model.predict_one(user, item))
        for e in group:
            twin.learn(e.user, e.item, e.type, None, None, ts=e.ts)
            p = leaky.learn(e.user, e.item, e.type, None, None, ts=e.ts)
            if p is not None:  # the per-event protocol: a like predicted after its own view was learned
                leaky_labels.append(leaky.rule.label(e.type, None, None))
                leaky_predicted.append(p)
    assert result.auc == pytest.approx(roc_auc(np.array(labels), np.array(predicted)))
    assert result.logloss == pytest.approx(log_loss(np.array(labels), np.array(predicted)))
    assert result.logloss != pytest.approx(log_loss(np.array(leaky_labels), np.array(leaky_predicted)))


def test_seen_items_are_never_recommended_and_lists_match_the_serving_view() -> None:
    rng = np.random.default_rng(5)
    learner = OnlineLearner(model=build_model(DEFAULT_MODEL))
    recommend = Recommend(learner, k=10)
    seen: dict[str, set[str]] = {}
    for t in range(1500):
        user, item = f"u{int(rng.integers(0, 40))}", f"i{int(rng.integers(0, 60))}"
        kind = "like" if rng.random() < 0.5 else "view"
        learner.learn(user, item, kind, None, None, ts=float(t))
        if item not in seen.setdefault(user, set()):
            seen[user].add(item)
            recommend.add_seen(user, item)
        if t % 100 == 99:
            view = ServingModel.from_bytes(learner.to_bytes(), version=t)
            for probe in ("u1", "u7", "never-seen"):
                ids, _, from_popularity = recommend.top(probe)
                assert not set(ids) & seen.get(probe, set())
                served = view.recommend(probe, k=10, exclude=seen.get(probe, set()))
                assert ids == [i for i, _ in served.items]
                assert from_popularity == (served.source == "popular")


def test_a_targets_rank_counts_only_the_items_that_may_be_shown() -> None:
    """The rank of a missed target against a full sort of the rows the user may be shown (their seen items left
    out; the target is one they have not seen, as the replay ranks it), ties at their mid-rank: seen items scoring
    above the target never count."""
    rng = np.random.default_rng(9)
    learner = OnlineLearner(model=build_model(DEFAULT_MODEL))
    recommend = Recommend(learner, k=3)
    seen: dict[str, set[str]] = {}
    checked = above_seen = 0
    for t in range(3000):
        user, item = f"u{int(rng.integers(0, 30))}", f"i{int(rng.integers(0, 40))}"
        model = learner.model
        user_seen = seen.setdefault(user, set())
        if model.knows_user(user) and item in model.items and item not in user_seen:
            scores, index = model.score_all(user), model.items
            target = index.get(item)
            allowed = [r for r in range(len(index)) if index.ids[r] not in user_seen]
            ordered = sorted(allowed, key=lambda r: (-scores[r], r))
            position = ordered.index(target) + 1
            t_score = scores[target]
            mid = 1 + sum(scores[r] > t_score for r in allowed) + (sum(scores[r] == t_score for r in allowed) - 1) / 2
            expected = float(position) if position <= 3 else max(4.0, mid)
            rank, from_popularity = recommend.rank(user, item)
            assert not from_popularity
            assert rank == pytest.approx(expected), t
            checked += 1
            above_seen += any(scores[index.get(s)] > t_score for s in user_seen if s != item)
        learner.learn(user, item, "like", None, None, ts=float(t))
        if item not in user_seen:
            user_seen.add(item)
            recommend.add_seen(user, item)
    assert checked > 1000 and above_seen > 100  # many targets had seen items above them


def test_a_target_scored_minus_infinity_ties_only_with_rows_that_may_be_shown() -> None:
    """Ranking sets the excluded rows to -inf in the scores; they must not count as ties of a -inf target."""
    recommend = Recommend(OnlineLearner(), k=1)
    raw = np.array([1.0, -np.inf, 5.0, 5.0, 0.0, -np.inf])  # may be shown: rows 0, 4, 1 and the target 5
    best, rank = recommend._top_model(raw, np.array([2, 3]), target=5)
    assert best.tolist() == [0] and rank == 3.5  # 2 rows above it, 1 tie (row 1): 1 + 2 + 1/2


def test_a_brand_new_user_gets_the_most_liked_items() -> None:
    learner = OnlineLearner(model=build_model(DEFAULT_MODEL))
    for n, item in enumerate(["x"] * 5 + ["y"] * 3 + ["z"] * 1 + ["w"] * 2):
        learner.learn(f"u{n}", item, "like", None, None, ts=float(n))
    ids, _, from_popularity = Recommend(learner, k=3).top("brand-new-user")
    assert from_popularity and ids == ["x", "y", "w"]


def test_a_brand_new_item_is_recommended_once_it_has_been_liked() -> None:
    learner = OnlineLearner(model=ItemCooccurrence())
    for n in range(20):  # an established catalogue: everyone goes a -> b
        learner.learn(f"u{n}", "a", "like", None, None, ts=float(n))
        learner.learn(f"u{n}", "b", "like", None, None, ts=n + 0.5)
    learner.learn("early", "a", "like", None, None, ts=100.0)
    learner.learn("early", "fresh", "like", None, None, ts=101.0)  # "fresh" appears for the first time
    learner.learn("next", "a", "like", None, None, ts=102.0)
    recommend = Recommend(learner, k=2)
    recommend.add_seen("next", "a")
    ids, _, _ = recommend.top("next")
    assert ids == ["b", "fresh"]


def test_roc_auc_and_log_loss_by_hand() -> None:
    # Positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ordered right.
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)  # a tie counts half
    assert roc_auc(np.array([1, 1]), np.array([0.2, 0.9])) is None
    assert log_loss(np.array([1.0, 0.0]), np.array([0.8, 0.2])) == pytest.approx(-math.log(0.8))


def test_scoring_can_be_limited_to_some_users_and_split_at_a_time() -> None:
    # Same stream as the hand computation; only u1-u3 scored: events 0, 1, 2, 3, 6 (u4's like at 7 is not).
    result = replay(STREAM, _popularity_learner(), k=2, score_user=lambda user: user != "u4", second_half_from=7.0)
    assert (result.overall.scored, result.overall.hits) == (5, 3)
    assert (result.second_half.scored, result.second_half.hits) == (1, 1)  # ts >= 7: event 6 only (ts 7)


# -- the worker's checks in a replay ------------------------------------------------------------

T0 = 1_700_000_000.0


def _gate_run(events: list[ReplayEvent]) -> tuple[list[str], int, dict[str, int]]:
    gated = gate_stream(
        events, default_gate(GateConfig()), clock=default_stream_clock(), dedupe_retention_seconds=3_600.0
    )
    return [e.event_id for e in gated.accepted], gated.duplicates, dict(gated.held)


def test_a_re_sent_event_is_learned_once_within_the_retention_and_a_held_one_is_checked_again() -> None:
    events = [
        ReplayEvent("u1", "v1", "like", T0, event_id="e1"),
        ReplayEvent("u1", "v1", "like", T0, event_id="e1"),  # re-sent at once: duplicate
        ReplayEvent("u2", "v2", "like", T0 + 400 * 86_400, event_id="e2"),  # a year ahead of the stream: held
        ReplayEvent("u2", "v2", "like", T0 + 400 * 86_400, event_id="e2"),  # re-sent: held again, not a duplicate
        ReplayEvent("u3", "v3", "view", T0 + 1_800, event_id="e3"),  # the held event did not move the clock
        ReplayEvent("u1", "v1", "like", T0, event_id="e1"),  # 30 min of stream time later: still a duplicate
        ReplayEvent("u4", "v4", "view", T0 + 4_000, event_id="e4"),
        ReplayEvent("u4", "v4", "view", T0 + 4_000, event_id="e4"),
        ReplayEvent("u5", "v5", "view", T0 + 7_700, event_id="e5"),  # moves the clock past e4's retention
        ReplayEvent("u4", "v4", "view", T0 + 4_000, event_id="e4"),  # 1 h 2 min later: learned again
    ]
    accepted, duplicates, held = _gate_run(events)
    assert accepted == ["e1", "e3", "e4", "e5", "e4"]
    assert duplicates == 3
    assert held == {"future_timestamp": 2}


def test_with_arrival_times_a_forged_stamp_is_held_and_never_moves_the_replay_clock() -> None:
    """Now is the latest arrival (the broker's clock), so a stamp weeks ahead cannot make the stream after it late."""
    day = 86_400.0
    events = [
        ReplayEvent("u1", "v1", "view", T0, event_id="e1", arrival=T0),
        ReplayEvent("bot", "x", "like", T0 + 30 * day, event_id="f1", arrival=T0 + 60),  # a month ahead
        ReplayEvent("u1", "v2", "view", T0 + 120, event_id="e2", arrival=T0 + 120),
        ReplayEvent("u2", "v3", "view", T0 + 45 * day, event_id="e3", arrival=T0 + 45 * day),  # a real quiet spell
        ReplayEvent("u2", "v4", "view", T0 + 45 * day - 600, event_id="e4", arrival=T0 + 45 * day + 5),  # buffered
        ReplayEvent("u3", "v5", "view", T0 + 20 * day, event_id="e5", arrival=T0 + 45 * day + 9),  # weeks late
    ]
    accepted, _, held = _gate_run(events)
    assert accepted == ["e1", "e2", "e3", "e4"]
    assert held == {"future_timestamp": 1, "too_late": 1}
    # Without arrival times (a file of events alone) the stream clock follows the stamps within 90 days,
    # so the same forged event passes and the real events after it are held as too late.
    stamps_only = [ReplayEvent(e.user, e.item, e.type, e.ts, event_id=e.event_id) for e in events[:3]]
    accepted, _, held = _gate_run(stamps_only)
    assert accepted == ["e1", "f1"] and held == {"too_late": 1}


def test_load_events_takes_each_lines_arrival_and_defaults_to_none(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    line = '{{"event_id": "{}", "user_id": "u1", "item_id": "v1", "type": "view", "ts": "2023-11-14T22:13:20Z"}}'
    path.write_text(f"{line.format('e1')}\nnot json\n\n{line.format('e2')}\n")
    loaded = evaluate.load_events(path, arrivals=[10.0, 20.0, 30.0, 40.0])
    assert [(e.event_id, e.arrival) for e in loaded.events] == [("e1", 10.0), ("e2", 40.0)]
    assert [e.arrival for e in evaluate.load_events(path).events] == [None, None]


def test_without_the_checks_every_valid_event_is_learned() -> None:
    events = [ReplayEvent("u1", "v1", "like", T0, event_id="e1")] * 3
    gated = gate_stream(events)
    assert len(gated.accepted) == 3 and gated.duplicates == 0 and not gated.held


# -- the command ------------------------------------------------------------------------------


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    evaluate.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", *argv])
    return int(args.func(args))


def test_movielens_adapter_orders_by_time_and_keeps_ties_in_file_order(tmp_path: Path) -> None:
    ratings = tmp_path / "ratings.csv"
    ratings.write_text(
        "userId,movieId,rating,timestamp\n1,10,5.0,300\n1,11,3.5,100\n2,10,4.0,300\n2,12,4.5,100\nbad,row\n"
    )
    loaded = evaluate.load_movielens(ratings)
    got = [(e.user, e.item, e.type, e.ts) for e in loaded.events]
    assert got == [
        ("1", "11", "view", 100.0),
        ("2", "12", "view", 100.0),
        ("2", "12", "like", 100.0),
        ("1", "10", "view", 300.0),
        ("1", "10", "like", 300.0),
        ("1", "10", "share", 300.0),
        ("2", "10", "view", 300.0),
        ("2", "10", "like", 300.0),
    ]
    assert dict(loaded.rejected) == {"malformed_row": 1}


def test_evaluate_writes_the_report_rejects_bad_lines_and_never_crashes(tmp_path: Path) -> None:
    lines = []
    for n in range(60):
        user, item = f"u{n % 7}", f"v{(n * 3) % 11}"
        kind = "like" if n % 3 else "view"
        lines.append(
            json.dumps(
                {
                    "event_id": f"e{n}",
                    "user_id": user,
                    "item_id": item,
                    "type": kind,
                    "ts": f"2026-01-01T00:{n:02d}:00Z",
                }
            )
        )
    lines += [
        "{not json",
        json.dumps(
            {"event_id": "x1", "user_id": "bad user!", "item_id": "v1", "type": "like", "ts": "2026-01-01T01:00:00Z"}
        ),
        json.dumps(
            {"event_id": "x2", "user_id": "u1", "item_id": "v1", "type": "teleport", "ts": "2026-01-01T01:00:00Z"}
        ),
    ]
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "report.json"
    code = _run(
        "--events", str(events), "--model", "popularity", "--model", DEFAULT_MODEL, "--no-gate", "--report", str(out)
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["events"] == 60
    assert [m["name"] for m in report["models"]] == ["popularity", DEFAULT_MODEL]
    assert [m["baseline"] for m in report["models"]] == [True, False]
    for row in report["models"]:
        for key in (
            "hr_at_10",
            "ndcg_at_10",
            "mrr",
            "hr_at_10_second_half",
            "hr_at_10_active_users",
            "coverage",
            "events_per_second",
        ):
            assert isinstance(row[key], (int, float)), key
        assert "auc" in row and "logloss" in row
    direct = replay(evaluate.load_events(events).events, OnlineLearner(model=AllTimePopularity()))
    popularity = report["models"][0]
    assert (popularity["hr_at_10"], popularity["ndcg_at_10"], popularity["mrr"]) == pytest.approx(
        (direct.overall.hit_rate, direct.overall.ndcg, direct.overall.mrr)
    )
    assert popularity["hr_at_10_second_half"] == pytest.approx(direct.second_half.hit_rate)
    assert report["gate"]["held"] == 0
    assert report["gate"]["rejected"] == 3
    assert report["gate"]["by_reason"] == {"malformed_json": 1, "invalid_user_id": 1, "invalid_type": 1}
    # matplotlib is a dev dependency (pyproject.toml): the learning curve must be there, not skipped.
    curve = out.with_suffix(".png")
    assert curve.exists(), "no learning curve next to the report (is matplotlib, a dev dependency, installed?)"
    assert curve.read_bytes().startswith(b"\x89PNG")


def test_evaluate_refuses_an_unknown_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ratings = tmp_path / "r.csv"
    ratings.write_text("userId,movieId,rating,timestamp\n1,2,4.0,1\n")
    assert _run("--movielens", str(ratings), "--model", "nope", "--report", str(tmp_path / "r.json")) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_exploration_gives_one_place_in_ten_to_rarely_shown_unseen_items() -> None:
    explorer = ThompsonExplorer(fraction=0.1, max_impressions=2, seed=1)
    neg = -np.linspace(1.0, 0.0, 30)  # row 0 best
    neg[[12, 13, 14]] = np.inf  # seen by the user
    best = np.arange(10)
    impressions = np.zeros(30)
    explored = []
    for _ in range(12):
        final = explorer.rerank(best, neg, k=10)
        assert final[:9].tolist() == list(range(9))  # the model keeps nine places, in order
        pick = int(final[9])
        assert pick not in (12, 13, 14) and pick >= 9 and impressions[pick] < 2
        explored.append(pick)
        explorer.observe_shown(final)
        impressions[final] += 1
    assert len(set(explored)) >= 6  # it spreads over rarely shown items instead of repeating one


def test_evaluate_reports_the_cost_of_exploration(tmp_path: Path) -> None:
    ratings = tmp_path / "ratings.csv"
    rows = [f"{u},{(u * 7 + n) % 13},{4.0 + (n % 2)},{100 * n + u}" for n in range(12) for u in range(8)]
    ratings.write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    out = tmp_path / "r.json"
    assert _run("--movielens", str(ratings), "--model", DEFAULT_MODEL, "--explore", "0.2", "--report", str(out)) == 0
    names = [m["name"] for m in json.loads(out.read_text())["models"]]
    assert names == [DEFAULT_MODEL, f"{DEFAULT_MODEL}+explore0.2"]


def _line(event_id: str, user: str, item: str, kind: str, ts: str) -> str:
    return json.dumps({"event_id": event_id, "user_id": user, "item_id": item, "type": kind, "ts": ts})


def test_evaluate_drops_duplicates_and_holds_with_the_gate_from_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [_line(f"e{n}", f"u{n % 5}", f"v{n % 9}", "like", f"2026-01-01T00:{n:02d}:00Z") for n in range(40)]
    lines.insert(20, lines[10])  # a re-sent event
    lines.insert(30, _line("f1", "u1", "v1", "like", "2027-06-01T00:00:00Z"))  # stamped 17 months ahead
    lines.append("{not json")
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")

    def gate_report(*flags: str) -> dict[str, object]:
        out = tmp_path / "r.json"
        assert _run("--events", str(events), "--model", "popularity", *flags, "--report", str(out)) == 0
        report = json.loads(out.read_text())
        return {"learned": report["events"], **report["gate"]}

    on = gate_report()
    assert (on["learned"], on["rejected"], on["duplicates"], on["held"]) == (40, 1, 1, 1)
    assert on["by_reason"] == {"malformed_json": 1, "duplicate": 1, "future_timestamp": 1}
    off = gate_report("--no-gate")  # the contract still applies; duplicates and the rules do not
    assert (off["learned"], off["rejected"], off["duplicates"], off["held"]) == (42, 1, 0, 0)
    monkeypatch.setenv("RECSTREAM_GATE_ENABLED", "false")  # RECSTREAM_GATE_* apply; like the worker, duplicates
    rules_off = gate_report()  # are still dropped when only the rules are off
    assert (rules_off["learned"], rules_off["duplicates"], rules_off["held"]) == (41, 1, 0)
    assert (on["enabled"], off["enabled"], rules_off["enabled"]) == (True, False, False)
