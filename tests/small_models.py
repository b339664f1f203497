"""Small, fast settings of every model kind for unit tests."""

from __future__ import annotations

from learner.base import Recommender
from learner.registry import build_model

# Small, fast settings for every kind (the defaults are exercised by the MovieLens replay).
SMALL: dict[str, dict] = {
    "implicit_mf": {"n_factors": 8},
    "bpr": {"n_factors": 8},
    "river_biased_mf": {"n_factors": 4},
    "blend": {
        "parts": [
            {"kind": "item_cooccurrence", "params": {"window": 5}},
            {"kind": "bpr", "weight": 0.1, "norm": "z", "params": {"n_factors": 4}},
            {"kind": "decayed_popularity", "weight": 0.01, "params": {"half_life_days": 1.0}},
        ]
    },
}


def small_model(kind: str) -> Recommender:
    """A model of ``kind`` with the small settings above (the defaults for kinds not listed)."""
    return build_model(kind, **SMALL.get(kind, {}))
