"""The poisoning benchmark on the first 15,000 MovieLens events: it runs, and the gate does its part."""

from __future__ import annotations

import json
from pathlib import Path

from bench import poisoning
from bench.common import MOVIELENS_RATINGS


def test_poisoning_benchmark_shows_the_attack_and_what_the_gate_stops(tmp_path: Path) -> None:
    out = tmp_path / "poisoning.json"
    report = poisoning.run(MOVIELENS_RATINGS, limit=15_000, seed=7, out=out, ablation=False)
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(report["rows"]))
    rows = {(r["stream"], r["gate"]): r for r in report["rows"]}
    clean_on, attacked_on, attacked_off = rows["clean", True], rows["attacked", True], rows["attacked", False]
    attack = report["attack"]

    # Garbage never reaches the model, gate or no gate (but for lines the contract itself accepts).
    invalid = attack["by_kind"]["garbage"] - attack["garbage_accepted_by_contract"]
    for row in (attacked_on, attacked_off):
        assert row["gate_report"]["rejected"] >= invalid  # re-sent garbage is rejected again
    # Without the gate the farm's likes are learned and the target reaches ordinary users' top-10.
    assert attacked_off["bot_target_likes_learned"] >= 0.9 * attack["bot_accounts"]
    assert attacked_off["target_in_top_10_share"] >= 0.2
    assert attacked_off["hr_at_10"] < clean_on["hr_at_10"]
    # With it, re-sent events are dropped as duplicates and almost every farm like is held.
    assert attacked_on["gate_report"]["duplicates"] > 0.5 * attack["by_kind"]["resent"]
    assert attacked_on["bot_target_likes_learned"] <= 0.05 * attacked_off["bot_target_likes_learned"]
    assert attacked_on["target_in_top_10_share"] < attacked_off["target_in_top_10_share"] / 2
    assert report["checks"]["clean_held_share"] <= 0.01
