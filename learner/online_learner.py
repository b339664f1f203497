"""The learner the worker runs: target rule, model, popularity and progressive metrics together.

For each event: label it with the target rule; if it has a label, score it first (progressive
validation), then learn from it; always count it towards popularity. It does no I/O: the
worker hands it events and asks for its state as bytes.

>>> from datetime import datetime, timezone
>>> learner = OnlineLearner()
>>> learner.learn("u1", "v1", "like", None, None)
0.5
>>> learner.events_learned, learner.popularity.count("v1")
(1, 1.0)
>>> clone = OnlineLearner.from_bytes(learner.to_bytes())
>>> clone.events_learned, clone.model.predict_one("u1", "v1") == learner.model.predict_one("u1", "v1")
(1, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from learner import codec
from learner.base import ModelState, Recommender
from learner.implicit_mf import ImplicitMF
from learner.popularity import Popularity
from learner.progressive import ProgressiveMetrics
from learner.target import TargetRule


class OnlineLearner:
    """Predict-then-learn over a stream of events, with all the state a checkpoint needs."""

    def __init__(
        self,
        model: Recommender | None = None,
        rule: TargetRule | None = None,
        popularity: Popularity | None = None,
    ) -> None:
        self.model: Recommender = model or ImplicitMF()
        self.rule = rule or TargetRule()
        self.popularity = popularity or Popularity()
        self.metrics = ProgressiveMetrics()
        self.events_learned = 0
        self.events_labelled = 0

    def learn(
        self,
        user: str,
        item: str,
        event_type: str,
        watch_seconds: float | None,
        item_duration_seconds: float | None,
    ) -> float | None:
        """Learn from one event; return the prediction made before learning (None if unlabelled)."""
        y = self.rule.label(event_type, watch_seconds, item_duration_seconds)
        prediction = None
        if y is not None:
            prediction = self.model.predict_one(user, item)
            self.metrics.update(y, prediction)
            self.model.learn_one(user, item, y)
            self.events_labelled += 1
        self.popularity.learn_one(item, y)
        self.events_learned += 1
        return prediction

    def describe_model(self) -> dict[str, Any]:
        """The model's kind and hyper-parameters, for version metadata."""
        params = self.model.to_state().params
        return {"kind": self.model.kind, **{k: v for k, v in params.items() if k != "rng_state"}}

    # -- state -------------------------------------------------------------------------

    def to_bytes(self, extra: dict[str, Any] | None = None) -> bytes:
        state = self.model.to_state()
        for reserved in ("popularity",):
            if reserved in state.arrays:
                raise ValueError(f"model arrays may not be named {reserved!r}")
        header = {
            "kind": state.kind,
            "params": state.params,
            "ids": state.ids,
            "popularity_ids": self.popularity.items.ids,
            "events_learned": self.events_learned,
            "events_labelled": self.events_labelled,
            **(extra or {}),
        }
        arrays = {**state.arrays, "popularity": self.popularity.counts}
        return codec.encode(header, arrays)

    @classmethod
    def from_bytes(cls, blob: bytes, rule: TargetRule | None = None) -> OnlineLearner:
        header, arrays = codec.decode(blob)
        return cls.from_parts(header, arrays, rule)

    @classmethod
    def from_parts(
        cls, header: dict[str, Any], arrays: dict[str, np.ndarray], rule: TargetRule | None = None
    ) -> OnlineLearner:
        from learner.registry import model_from_state

        try:
            state = ModelState(
                kind=header["kind"],
                params=header["params"],
                ids=header["ids"],
                arrays={k: v for k, v in arrays.items() if k != "popularity"},
            )
            model = model_from_state(state)
            popularity = Popularity.from_arrays(header["popularity_ids"], arrays["popularity"])
        except KeyError as exc:
            raise codec.CodecError(f"snapshot lacks {exc}") from exc
        learner = cls(model=model, rule=rule, popularity=popularity)
        learner.events_learned = int(header["events_learned"])
        learner.events_labelled = int(header["events_labelled"])
        return learner
