"""A weighted blend of recommenders that learn from the same events: one ranking, one snapshot.

Each part's scores are put on a common scale before they are added: ``"max"`` divides by the
largest score (for non-negative evidence such as co-occurrence and popularity), ``"z"``
standardises (for factor-model logits), ``"none"`` leaves them. The default blend is the best
two models of the MovieLens replay (``docs/model-card.md``): item-to-item co-occurrence plus a
little of the pairwise factor model, which adds taste the user's last few items do not show.
It ranked a little better than co-occurrence alone there, at about a quarter of its speed.

All parts must learn from event weights (``reward = "weight"``) and register every item on
every event, so their item rows line up and the blend's ``items`` is simply theirs.

>>> m = Blend([{"kind": "item_cooccurrence", "params": {"popularity_weight": 0.0}},
...            {"kind": "popularity", "weight": 0.01}])
>>> for user, items in {"ann": "ab", "bob": "ab", "cid": "cd"}.items():
...     for item in items:
...         m.learn_one(user, item, 1.0)
>>> m.learn_one("dan", "c", 1.0)
>>> scores = m.score_all("dan")   # d: 1 (evidence, scaled) + 0.01 * 1/2; a: 0 + 0.01 * 2/2
>>> [(m.items.ids[i], round(float(scores[i]), 3)) for i in np.argsort(-scores, kind="stable")[:2]]
[('d', 1.005), ('a', 0.01)]
>>> m.knows_user("dan"), m.knows_user("eve")
(True, False)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from learner.base import ModelState, Recommender, expect_kind, forget_users, is_personal, reward_of
from learner.id_index import IdIndex

NORMS = ("max", "z", "none")

DEFAULT_PARTS: tuple[dict[str, Any], ...] = (
    {"kind": "item_cooccurrence", "weight": 1.0, "norm": "max", "params": {}},
    {"kind": "bpr", "weight": 0.05, "norm": "z", "params": {}},
)


class Blend:
    """Sum of the parts' normalised scores, weighted; learns by passing every event to every part."""

    kind = "blend"
    reward = "weight"

    def __init__(self, parts: Sequence[Mapping[str, Any]] | None = None) -> None:
        from learner.registry import build_model  # the registry imports this module

        specs = [_spec(p) for p in (DEFAULT_PARTS if parts is None else parts)]
        if not specs:
            raise ValueError("a blend needs at least one part")
        self._init_parts(specs, [build_model(s["kind"], **s["params"]) for s in specs])

    def _init_parts(self, specs: list[dict[str, Any]], models: list[Recommender]) -> None:
        for spec, model in zip(specs, models, strict=True):
            if reward_of(model) != "weight":
                raise ValueError(f"blend part {spec['kind']!r} learns from labels; parts must learn from weights")
        self.specs = specs
        self.models = models
        self.items: IdIndex = models[0].items
        self.personal = any(is_personal(m) for m in models)
        self._clocked = [m for m in models if hasattr(m, "advance_clock")]

    # -- River-style interface -------------------------------------------------------

    def advance_clock(self, ts: float) -> None:
        for model in self._clocked:
            model.advance_clock(ts)

    def learn_one(self, user: str, item: str, y: float) -> None:
        for model in self.models:
            model.learn_one(user, item, y)

    def predict_one(self, user: str, item: str) -> float:
        """Weighted mean of the parts' probability-like scores."""
        total = sum(s["weight"] for s in self.specs) or 1.0
        pairs = zip(self.specs, self.models, strict=True)
        return sum(s["weight"] * m.predict_one(user, item) for s, m in pairs) / total

    def forget_users(self, users: Sequence[str]) -> int:
        """Erase ``users`` from every part that holds users (learner.erasure); how many the part that held most held."""
        return max(forget_users(model, users) for model in self.models)

    def knows_user(self, user: str) -> bool:
        personal = [m for m in self.models if is_personal(m)]
        return any(m.knows_user(user) for m in personal) if personal else True

    def score_all(self, user: str) -> np.ndarray:
        n = len(self.items)
        total: np.ndarray | None = None
        for spec, model in zip(self.specs, self.models, strict=True):
            scores = np.asarray(model.score_all(user), dtype=np.float64)
            if scores.shape != (n,):
                raise RuntimeError(f"blend part {spec['kind']!r} scored {scores.shape[0]} items, expected {n}")
            scaled = _normalise(scores, spec["norm"], spec["weight"])  # always a new array
            if total is None:
                total = scaled
            else:
                total += scaled
        return np.zeros(n, dtype=np.float64) if total is None else total

    # -- state ---------------------------------------------------------------------------

    def to_state(self) -> ModelState:
        ids: dict[str, list[str]] = {}
        arrays: dict[str, np.ndarray] = {}
        parts = []
        rng_states = {}
        for k, (spec, model) in enumerate(zip(self.specs, self.models, strict=True)):
            state = model.to_state()
            params = dict(state.params)
            if "rng_state" in params:  # kept apart so version metadata can leave it out
                rng_states[str(k)] = params.pop("rng_state")
            parts.append({**spec, "params": params})
            ids.update({f"{k}.{name}": v for name, v in state.ids.items()})
            arrays.update({f"{k}.{name}": v for name, v in state.arrays.items()})
        params: dict[str, float | int | str] = {"parts": json.dumps(parts)}
        if rng_states:
            params["rng_state"] = json.dumps(rng_states)
        return ModelState(kind=self.kind, params=params, ids=ids, arrays=arrays)

    @classmethod
    def from_state(cls, state: ModelState) -> Blend:
        from learner.registry import model_from_state

        expect_kind(state, cls.kind)
        specs = [_spec(p) for p in json.loads(str(state.params["parts"]))]
        rng_states = json.loads(str(state.params.get("rng_state", "{}")))
        models = []
        for k, spec in enumerate(specs):
            prefix = f"{k}."
            params = dict(spec["params"])
            if str(k) in rng_states:
                params["rng_state"] = rng_states[str(k)]
            part = ModelState(
                kind=spec["kind"],
                params=params,
                ids={n[len(prefix) :]: v for n, v in state.ids.items() if n.startswith(prefix)},
                arrays={n[len(prefix) :]: v for n, v in state.arrays.items() if n.startswith(prefix)},
            )
            models.append(model_from_state(part))
        if any(m.items.ids != models[0].items.ids for m in models):
            raise ValueError("blend parts disagree on the item list")
        blend = cls.__new__(cls)
        blend._init_parts(specs, models)
        return blend


def _spec(part: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(part) - {"kind", "weight", "norm", "params"}
    if unknown or "kind" not in part:
        raise ValueError(f"a blend part is {{kind, weight, norm, params}}, got {dict(part)!r}")
    norm = str(part.get("norm", "max"))
    if norm not in NORMS:
        raise ValueError(f"blend norm must be one of {NORMS}, got {norm!r}")
    return {
        "kind": str(part["kind"]),
        "weight": float(part.get("weight", 1.0)),
        "norm": norm,
        "params": dict(part.get("params", {})),
    }


def _normalise(scores: np.ndarray, norm: str, weight: float) -> np.ndarray:
    """``weight * normalised(scores)`` as a new array."""
    if not scores.size:
        return scores
    if norm == "max":
        top = float(scores.max())
        factor = weight / top if top > 0 else weight
    elif norm == "z":
        std = float(scores.std())
        scores = scores - scores.mean()
        factor = weight / std if std > 0 else weight
    else:
        factor = weight
    return scores * factor
