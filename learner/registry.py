"""Model kinds by name: build one from settings, or rebuild one from a snapshot's state."""

from __future__ import annotations

from typing import Any

from learner.base import ModelState, Recommender
from learner.implicit_mf import ImplicitMF

MODELS: dict[str, type] = {
    ImplicitMF.kind: ImplicitMF,
}


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
