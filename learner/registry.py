"""Model kinds by name: build one from settings, or rebuild one from a snapshot's state.

>>> sorted(MODELS)
['blend', 'bpr', 'decayed_popularity', 'implicit_mf', 'item_cooccurrence', 'popularity', 'river_biased_mf']
>>> build_model("blend").kind
'blend'
"""

from __future__ import annotations

from typing import Any

from learner.base import ModelState, Recommender
from learner.blend import Blend
from learner.bpr import OnlineBPR
from learner.implicit_mf import ImplicitMF
from learner.item_cooccurrence import ItemCooccurrence
from learner.popularity_models import AllTimePopularity, DecayedPopularity
from learner.river_mf import RiverBiasedMF

MODELS: dict[str, type] = {
    cls.kind: cls
    for cls in (
        ImplicitMF,
        AllTimePopularity,
        DecayedPopularity,
        ItemCooccurrence,
        OnlineBPR,
        RiverBiasedMF,
        Blend,
    )
}

DEFAULT_MODEL = ItemCooccurrence.kind  # chosen by the MovieLens replay in docs/model-card.md


def build_model(kind: str, **params: Any) -> Recommender:
    try:
        cls = MODELS[kind]
    except KeyError:
        raise ValueError(f"unknown model {kind!r}; known models: {', '.join(sorted(MODELS))}") from None
    return cls(**params)


def model_from_state(state: ModelState) -> Recommender:
    try:
        cls = MODELS[state.kind]
    except KeyError:
        raise ValueError(f"snapshot holds unknown model kind {state.kind!r}") from None
    return cls.from_state(state)
