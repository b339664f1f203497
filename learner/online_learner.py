"""The learner the worker runs: target rule, model, popularity and progressive metrics together.

For each event: label it with the target rule; if it has a label, score it first (progressive
validation); then learn from it; always count it towards popularity. What the model learns
depends on its ``reward`` (see :mod:`learner.base`): label models learn labelled events only,
weight models learn every event with its :class:`~learner.event_weights.EventWeights` weight.
When the event's time is given it moves the stream clock, which time-decayed models follow.
It does no I/O: the worker hands it events and asks for its state as bytes.

Popularity counts over the model's own item index when the model registers the item of every
event before popularity sees it: a model that learns from event weights does, and so does a
label model with ``register_item`` (called for the item of an unlabelled event, which it does
not learn from). Both indexes would then hold the same ids in the same order, and one is enough
(see :mod:`learner.popularity`; about 40 bytes an item). A label model without that hook never
sees unlabelled events, so popularity (which lists every item seen) keeps its own index of
items, sharing the row numbers and, after a restore, the id strings.

>>> from datetime import datetime, timezone
>>> learner = OnlineLearner()
>>> learner.learn("u1", "v1", "like", None, None)
0.5
>>> round(learner.last_loss, 4)   # that prediction's log loss, as the progressive metrics and the model guard see it
0.6931
>>> learner.events_learned, learner.popularity.count("v1")
(1, 1.0)
>>> clone = OnlineLearner.from_bytes(learner.to_bytes())
>>> clone.events_learned, clone.model.predict_one("u1", "v1") == learner.model.predict_one("u1", "v1")
(1, True)
>>> from learner.blend import Blend
>>> weighted = OnlineLearner(model=Blend())
>>> weighted.learn("u1", "v1", "view", None, None, ts=1_000.0) is None   # unlabelled, but learned
True
>>> weighted.last_loss is None
True
>>> weighted.model.knows_user("u1"), weighted.clock
(True, 1000.0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from learner import codec
from learner.base import ModelState, Recommender, forget_users, reward_of
from learner.event_weights import EventWeights
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
        weights: EventWeights | None = None,
    ) -> None:
        self.model: Recommender = model or ImplicitMF()
        self.rule = rule or TargetRule()
        self.weights = weights or EventWeights()
        self.clock: float | None = None  # the latest event time seen (seconds since the epoch)
        # a label model's hook for the items of unlabelled events (see the module doc)
        self._register_item = getattr(self.model, "register_item", None) if reward_of(self.model) == "label" else None
        self._weighted = reward_of(self.model) == "weight"  # learn_one takes the event's weight (else its label)
        self._advance_clock = getattr(self.model, "advance_clock", None)  # the model's stream clock, if it keeps one
        self.popularity = popularity or Popularity(items=self.model.items if _shares_items(self.model) else None)
        self.metrics = ProgressiveMetrics()
        self.events_learned = 0
        self.events_labelled = 0
        #: the log loss of the latest :meth:`learn`'s prediction (None: that event had no label), for the
        #: model guard, which watches the same per-event loss as the progressive metrics
        self.last_loss: float | None = None
        self._model_description: dict[str, Any] | None = None
        #: ``metrics.count`` when the model's changes were last marked (learner.cooccurrence_delta): a delta
        #: carries the progressive window's entries since then, not the whole window
        self.progressive_marked = 0

    def learn(
        self,
        user: str,
        item: str,
        event_type: str,
        watch_seconds: float | None,
        item_duration_seconds: float | None,
        ts: float | None = None,
    ) -> float | None:
        """Learn from one event; return the prediction made before learning (None if unlabelled)."""
        model = self.model
        if ts is not None:
            if self.clock is None or ts > self.clock:
                self.clock = ts
            if self._advance_clock is not None:
                self._advance_clock(self.clock)
        y = self.rule.label(event_type, watch_seconds, item_duration_seconds)
        prediction = loss = None
        if y is not None:
            prediction = model.predict_one(user, item)
            loss = self.metrics.update(y, prediction)
            self.events_labelled += 1
        self.last_loss = loss
        if self._weighted:
            model.learn_one(user, item, self.weights.weight(event_type, watch_seconds, item_duration_seconds))
        elif y is not None:
            model.learn_one(user, item, y)
        elif self._register_item is not None:
            self._register_item(item)
        self.popularity.learn_one(item, y)
        self.events_learned += 1
        return prediction

    def forget_users(self, users: Sequence[str]) -> int:
        """Erase ``users`` from the model (learner.erasure); how many it held. Nothing else here is per user: the
        progressive metrics keep labels and predictions, popularity counts items."""
        return forget_users(self.model, users)

    def describe_model(self) -> dict[str, Any]:
        """The model's kind and hyper-parameters, for version metadata (computed once: they do not change)."""
        if self._model_description is None:
            params = self.model.to_state().params
            self._model_description = {"kind": self.model.kind, **{k: v for k, v in params.items() if k != "rng_state"}}
        return self._model_description

    # -- state -------------------------------------------------------------------------

    def growth_ahead(self) -> Callable[[], object] | None:
        """What prepares the memory the model grows into next (a function to run in a thread while the learner
        learns on), when that is due now; None otherwise, or for a model that has nothing to prepare."""
        ahead = getattr(self.model, "growth_ahead", None)
        return None if ahead is None else ahead()

    def to_bytes(self, extra: dict[str, Any] | None = None) -> bytes:
        return codec.encode(*self._encodable(extra))

    def to_bytes_later(self, extra: dict[str, Any] | None = None) -> Callable[[], bytes]:
        """:meth:`to_bytes` of the learner now, made by the returned function, which may run later and in a thread
        while the learner learns on (:func:`learner.codec.encode_later`: what the learner holds is copied now,
        the copy into one ``bytes`` is left to the function)."""
        return codec.encode_later(*self._encodable(extra))

    def _encodable(self, extra: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
        # a model that can hand its largest arrays over as pieces (learner.codec.Chunks) is encoded from them
        to_state = getattr(self.model, "to_encodable_state", self.model.to_state)
        state = to_state()
        for reserved in _LEARNER_ARRAYS:
            if reserved in state.arrays:
                raise ValueError(f"model arrays may not be named {reserved!r}")
        header = {
            "kind": state.kind,
            "params": state.params,
            "ids": state.ids,
            "popularity_ids": self.popularity.items.ids,
            **self.scalars(extra),
        }
        arrays = {**state.arrays, "popularity": self.popularity.counts, **self.progressive_arrays()}
        return header, arrays

    def scalars(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The header fields of a snapshot besides the model's kind, parameters and ids (a delta carries them too)."""
        return {
            "events_learned": self.events_learned,
            "events_labelled": self.events_labelled,
            "clock": self.clock,
            **(extra or {}),
            "progressive_count": self.metrics.count,
        }

    def progressive_arrays(self) -> dict[str, np.ndarray]:
        labels, predictions = self.metrics.window_arrays()
        return {"progressive_labels": labels, "progressive_predictions": predictions}

    @classmethod
    def from_bytes(
        cls, blob: bytes, rule: TargetRule | None = None, weights: EventWeights | None = None
    ) -> OnlineLearner:
        header, arrays = codec.decode(blob)
        return cls.from_parts(header, arrays, rule, weights)

    @classmethod
    def from_parts(
        cls,
        header: dict[str, Any],
        arrays: dict[str, np.ndarray],
        rule: TargetRule | None = None,
        weights: EventWeights | None = None,
    ) -> OnlineLearner:
        from learner.registry import model_from_state

        try:
            state = ModelState(
                kind=header["kind"],
                params=header["params"],
                ids=header["ids"],
                arrays={k: v for k, v in arrays.items() if k not in _LEARNER_ARRAYS},
            )
            model = model_from_state(state)
            popularity = _restore_popularity(model, header["popularity_ids"], arrays["popularity"])
        except KeyError as exc:
            raise codec.CodecError(f"snapshot lacks {exc}") from exc
        learner = cls(model=model, rule=rule, popularity=popularity, weights=weights)
        if "progressive_labels" in arrays:  # absent from snapshots written before the window was kept
            learner.metrics = ProgressiveMetrics.from_window(
                arrays["progressive_labels"],
                arrays["progressive_predictions"],
                count=int(header.get("progressive_count", 0)),
                window=learner.metrics.window,
            )
        learner.events_learned = int(header["events_learned"])
        learner.events_labelled = int(header["events_labelled"])
        clock = header.get("clock")  # absent from snapshots written before the stream clock existed
        learner.clock = None if clock is None else float(clock)
        return learner


#: Arrays of a snapshot that belong to the learner, not to its model.
_LEARNER_ARRAYS = frozenset({"popularity", "progressive_labels", "progressive_predictions"})


def _shares_items(model: Recommender) -> bool:
    """Whether popularity can count over ``model.items``: the model registers every event's item."""
    return reward_of(model) == "weight" or getattr(model, "register_item", None) is not None


def _restore_popularity(model: Recommender, ids: list[str], counts: np.ndarray) -> Popularity:
    """Popularity from a snapshot, over the model's item index if it can share it (see the module doc).

    A snapshot whose popularity ids differ from a sharing model's items (written before sharing,
    or by a label model) keeps popularity's own index, exactly as it was written.
    """
    items = model.items
    if _shares_items(model) and ids == items.ids:
        return Popularity.from_arrays(ids, counts, items=items)
    return Popularity.from_arrays(items.canonical(ids), counts)
