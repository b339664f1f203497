"""The one interface every recommender model in recstream follows (River's, plus what serving needs).

``learn_one`` / ``predict_one`` are River's recommender methods. ``score_all`` ranks the whole
catalogue from arrays (one vectorised pass, never a per-item Python loop), and
``to_state`` / ``from_state`` turn the model into JSON-able parameters plus numpy arrays, so a
snapshot never needs pickle.

Optional capabilities, looked up with ``getattr`` so older models need none of them:

* ``reward`` (class attribute, default ``"label"``): what ``learn_one``'s ``y`` means. ``"label"``:
  the target rule's 1.0/0.0, and only labelled events are learned (plain views are not).
  ``"weight"``: the event's learning weight from :class:`~learner.event_weights.EventWeights`
  (views included, 0 meaning "register the ids, learn nothing"); every event is passed on.
* ``advance_clock(ts)``: the stream clock in seconds since the epoch, called before an event is
  learned; time rules (decay) use it, never the wall clock, so a replay of old data behaves
  like the live stream did.
* ``register_item(item)`` (label models): called for an unlabelled event's item, so that the model's
  catalogue is every item seen, as a weight model's is (it registers the ids of every event). The
  item becomes rankable (with the model's prior for an item it has learned nothing about), and
  popularity then counts over the model's item index instead of keeping a second one
  (:mod:`learner.online_learner`).
* ``personal`` (class attribute, default ``True``): ``False`` for models that rank every user the
  same (popularity); they ``know`` every user, and a blend does not count them when deciding
  whether it can personalise.
* ``forget_users(users) -> int``: erase what the model keeps of each of ``users`` (:func:`forget_users`,
  learner.erasure); how many it held. Models without per-user state (popularity) need none.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from learner.id_index import IdIndex


@dataclass
class ModelState:
    """A model's whole state as JSON-able parameters, id lists and named numpy arrays."""

    kind: str
    params: dict[str, float | int | str]
    ids: dict[str, Sequence[str]]  # lists, or an index's own ids (learner.id_index) from ``to_encodable_state``
    arrays: dict[str, np.ndarray]  # (and learner.codec.Chunks from a model's ``to_encodable_state``)


@runtime_checkable
class Recommender(Protocol):
    kind: str
    items: IdIndex  # row i of every per-item array is the item ``items.ids[i]``

    def learn_one(self, user: str, item: str, y: float) -> None:
        """Learn that ``user`` liked (y=1) or did not like (y=0) ``item``."""

    def predict_one(self, user: str, item: str) -> float:
        """Probability-like score that ``user`` likes ``item``."""

    def knows_user(self, user: str) -> bool:
        """Whether ``score_all`` can personalise for this user (else callers fall back to popularity)."""

    def score_all(self, user: str) -> np.ndarray:
        """A score for every item row, higher is better; same length as ``items``.

        Always a new array that the caller owns: ranking may write into it (``learner.ranking.top_rows``
        with ``owned=True``), so it must never be a view of the model's state."""

    def to_state(self) -> ModelState: ...

    @classmethod
    def from_state(cls, state: ModelState) -> Recommender: ...


def expect_kind(state: ModelState, kind: str) -> None:
    """Refuse to restore a snapshot of one model kind into another."""
    if state.kind != kind:
        raise ValueError(f"state is for model kind {state.kind!r}, not {kind!r}")


def rng_state(rng: np.random.Generator) -> str:
    """The sampler's position as JSON, kept in a snapshot so a restored model samples the same next."""
    return json.dumps(rng.bit_generator.state)


def restore_rng(rng: np.random.Generator, params: dict[str, float | int | str]) -> None:
    if "rng_state" in params:
        rng.bit_generator.state = json.loads(str(params["rng_state"]))


def reward_of(model: object) -> str:
    """``"label"`` or ``"weight"``: which signal the model's ``learn_one`` expects (see the module doc)."""
    reward = getattr(model, "reward", "label")
    if reward not in ("label", "weight"):
        raise ValueError(f"model {getattr(model, 'kind', model)!r} declares unknown reward {reward!r}")
    return reward


def forget_users(model: object, users: Sequence[str]) -> int:
    """Erase ``users`` from ``model`` (its ``forget_users``); how many it held. A model with no per-user state has
    nothing of them to erase (0)."""
    forget = getattr(model, "forget_users", None)
    return int(forget(users)) if forget is not None else 0


def is_personal(model: object) -> bool:
    """Whether the model ranks users differently (popularity does not)."""
    return bool(getattr(model, "personal", True))
