"""Incremental snapshots of the default model: what changed since a base version, and applying it to that base.

A whole snapshot of an :class:`~learner.online_learner.OnlineLearner` over
:class:`~learner.item_cooccurrence.ItemCooccurrence` holds every co-occurrence entry: ~100 MB after a
million events over 50,000 users and 100,000 items, written by every checkpoint and read by every API
load. A delta holds what changed since the base (the state at the model's last
:meth:`~learner.item_cooccurrence.ItemCooccurrence.mark_changes`): the co-occurrence entries touched
(row, slot within the row, column, value), the per-item values of the items learned, the history rows of
the users who acted, the ids added, and the learner's small parts whole (its counters, the progressive
window). Its size follows the events since the base, not the model.

:func:`apply` takes the base's decoded parts (``learner.codec.decode``) and a delta's, and returns the
parts a whole snapshot of the same state would decode to: the same header and the same arrays, bit for
bit, so :meth:`OnlineLearner.from_parts` builds the same learner from either. A row's entries keep their
order (a slot is a position in its row, new entries are appended), which is what lets a delta name them
by slot. A delta that does not fit its base (other sizes, another column at a slot) raises
:class:`~learner.codec.CodecError`.

Pure: no I/O. The store decides when to write a delta and which base it refers to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from learner import codec
from learner.codec import CodecError
from learner.item_cooccurrence import ItemCooccurrence
from learner.online_learner import OnlineLearner

#: ``delta`` in a delta's header: its format.
FORMAT = "item_cooccurrence-delta/1"
#: The per-item arrays of the model's state, then the learner's (popularity counts over the same items).
ITEM_ARRAYS = ("mass", "candidate_damping", "row_damping", "recent")
_ENTRIES = ("entry_rows", "entry_slots", "entry_cols", "entry_vals")


def supported(learner: OnlineLearner) -> bool:
    """Whether deltas can be made of this learner: the default model, with popularity over its item index."""
    model = learner.model
    return isinstance(model, ItemCooccurrence) and learner.popularity.items is model.items


def mark(learner: OnlineLearner) -> None:
    """The learner's state now is the base of its next delta (call once a snapshot of it is stored)."""
    if supported(learner):
        learner.model.mark_changes()  # type: ignore[attr-defined]
        learner.progressive_marked = learner.metrics.count


def forget(learner: OnlineLearner) -> None:
    """Stop recording changes (a learner that will not be checkpointed against its mark any more)."""
    if supported(learner):
        learner.model.stop_changes()  # type: ignore[attr-defined]


def parts(learner: OnlineLearner, base_version: int | None = None) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(header, arrays) of a delta from the marked base to the learner's state now; None if none can be made
    (another model, or more changed since the mark than the model records: then write a whole snapshot).
    ``base_version`` (the stored version of the base) travels in the delta, and :func:`apply` checks it."""
    if not supported(learner):
        return None
    model: ItemCooccurrence = learner.model  # type: ignore[assignment]
    changes = model.changes()
    if changes is None:
        return None
    arrays = model.changed_arrays(changes)
    arrays["popularity"] = learner.popularity.counts[changes.items]
    # the progressive window's entries since the mark (its last ones), not the whole window
    since = learner.metrics.count - learner.progressive_marked
    for name, values in learner.progressive_arrays().items():
        arrays[name] = values[len(values) - min(len(values), since) :]
    header = {
        "delta": FORMAT,
        "base_version": base_version,
        "kind": model.kind,
        "params": model.to_state_params(),
        "base_sizes": {"users": changes.n_users, "items": changes.n_items},
        "progressive_window": learner.metrics.window,
        "ids_added": {
            "users": model.users.ids[changes.n_users :],
            "items": model.items.ids[changes.n_items :],
        },
        **learner.scalars(),
    }
    return header, arrays


def _extended(ids: Sequence[str], added: list[str]) -> Sequence[str]:
    """``ids`` (a list, or a snapshot's packed ids: ``learner.codec``) followed by ``added``, as a new sequence of the
    same kind (``ids`` is not changed); CodecError if ``added`` is not a list of str or repeats an id."""
    if type(added) is not list or not all(type(i) is str for i in added):
        raise CodecError("a delta's added ids are not a list of str")
    if type(ids) is list:
        fresh = set(added)
        if len(fresh) != len(added) or not fresh.isdisjoint(ids):  # (as the IdTable's extend below finds it)
            raise CodecError("delta adds an id its base, or the delta itself, already holds")
        whole: Sequence[str] = ids + added
    else:
        whole = ids.copy()  # type: ignore[attr-defined]  # (an IdTable: a memory copy, its ids then added)
        whole.extend(added)  # type: ignore[attr-defined]
        if len(whole) != len(ids) + len(added):  # (an IdTable adds an id once)
            raise CodecError("delta adds an id its base, or the delta itself, already holds")
    return whole


def is_delta(header: dict[str, Any]) -> bool:
    return "delta" in header


def apply(
    base_header: dict[str, Any],
    base_arrays: dict[str, np.ndarray],
    header: dict[str, Any],
    arrays: dict[str, np.ndarray],
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The (header, arrays) of a whole snapshot: the base's decoded parts with a delta's applied.

    The base's arrays are not changed (they may be views of the base's bytes, or serving)."""
    if header.get("delta") != FORMAT:
        raise CodecError(f"not a delta this version understands: {header.get('delta')!r}")
    if is_delta(base_header):
        raise CodecError("a delta applies to a whole snapshot's parts, not to another delta")
    with _codec_errors("delta does not apply to its base"):
        return _apply(base_header, base_arrays, header, arrays)


def _apply(
    base_header: dict[str, Any],
    base: dict[str, np.ndarray],
    header: dict[str, Any],
    delta: dict[str, np.ndarray],
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    users0, items0 = base_header["ids"]["users"], base_header["ids"]["items"]
    sizes = header["base_sizes"]
    if (len(users0), len(items0)) != (sizes["users"], sizes["items"]):
        raise CodecError(
            f"delta is for a base of {sizes['users']} users and {sizes['items']} items, "
            f"not {len(users0)} and {len(items0)}"
        )
    if base_header["kind"] != header["kind"] or base_header["params"] != header["params"]:
        raise CodecError("delta is for another model (kind or parameters differ from its base)")
    if base_header["popularity_ids"] != items0:
        raise CodecError("delta needs a base whose popularity counts over the model's items")
    ids = {
        "users": _extended(users0, header["ids_added"]["users"]),
        "items": _extended(items0, header["ids_added"]["items"]),
    }
    n_users, n_items = len(ids["users"]), len(ids["items"])
    n_users0, n_items0 = len(users0), len(items0)

    items = _added_rows(delta["items"], n_items0, n_items, "items", "the values of the items it adds")
    arrays: dict[str, np.ndarray] = {}
    indptr, indices, data = _merge_rows(base, delta, n_items0, n_items)
    arrays["indptr"], arrays["indices"], arrays["data"] = indptr, indices, data
    for name in (*ITEM_ARRAYS, "popularity"):
        if name == "recent" and "recent_whole" in delta:
            if delta["recent_whole"].shape != (n_items,):
                raise CodecError("delta's whole recent-popularity array does not match its items")
            arrays[name] = np.array(delta["recent_whole"], dtype=base[name].dtype)
            continue
        arrays[name] = _with_rows(base[name], n_items, items, delta[name])
    arrays["recent_clock"] = np.array(delta["recent_clock"], dtype=base["recent_clock"].dtype)

    users = _added_rows(delta["users"], n_users0, n_users, "users", "the histories of the users it adds")
    arrays["history_items"] = _with_rows(base["history_items"], n_users, users, delta["history_items"])
    arrays["history_weights"] = _with_rows(base["history_weights"], n_users, users, delta["history_weights"])
    kept = min(int(header["progressive_count"]), int(header["progressive_window"]))  # the window's length
    for name in ("progressive_labels", "progressive_predictions"):  # the base's window, then the delta's entries
        arrays[name] = np.concatenate([base[name], delta[name]])[-kept:] if kept else base[name][:0].copy()

    skip = {"delta", "base_version", "base_sizes", "progressive_window", "ids_added", "kind", "params"}
    new_header = {
        "kind": header["kind"],
        "params": header["params"],
        "ids": ids,
        "popularity_ids": ids["items"],
        **{k: v for k, v in header.items() if k not in skip},
    }
    return new_header, {name: arrays[name] for name in base}  # the base's order: a whole snapshot's


def apply_in_place(
    model: ItemCooccurrence, popularity: np.ndarray, header: dict[str, Any], arrays: dict[str, np.ndarray]
) -> np.ndarray:
    """Bring a served model (and its popularity counts over its items) to the state a delta was made to, in place.

    What :func:`apply` then :meth:`OnlineLearner.from_parts` would give (the same rows, values and ids),
    at the cost of what the delta carries instead of a copy of every row: a served model is the base of the
    next delta, so it need not stay as it was. Everything is checked before anything changes: a delta that
    does not fit raises :class:`~learner.codec.CodecError` and leaves the model as it was (if applying one that
    fits fails all the same, :class:`HalfApplied` says the model must be replaced). Returns the
    popularity counts (a new array when items were added). Not for a learner that records changes
    (its next delta would miss these)."""
    if header.get("delta") != FORMAT:
        raise CodecError(f"not a delta this version understands: {header.get('delta')!r}")
    with _codec_errors("delta does not apply to the model served"):
        change = _checked_in_place(model, popularity, header, arrays)
    try:
        return change()
    except Exception as exc:  # a bug, or out of memory: the model is part old, part new
        raise HalfApplied(f"applying a delta that passed its checks failed part-way: {exc!r}") from exc


class HalfApplied(RuntimeError):
    """A delta that passed every check failed while it was being applied in place (:func:`apply_in_place`):
    the model is part old, part new, and must be replaced by a whole version."""


def _checked_in_place(
    model: ItemCooccurrence, popularity: np.ndarray, header: dict[str, Any], delta: dict[str, np.ndarray]
) -> Callable[[], np.ndarray]:
    """Check that the delta fits the model (raises CodecError, or what a malformed delta makes numpy raise);
    returns what changes the model, and gives the popularity counts after it."""
    sizes = header["base_sizes"]
    n_users0, n_items0 = len(model.users), len(model.items)
    if (n_users0, n_items0) != (sizes["users"], sizes["items"]):
        raise CodecError(
            f"delta is for a base of {sizes['users']} users and {sizes['items']} items, not {n_users0} and {n_items0}"
        )
    # a delta from a worker older than the ranking cap names no ``neighbours``: its model ranks every entry (0)
    if header["kind"] != model.kind or {"neighbours": 0, **header["params"]} != model.to_state_params():
        raise CodecError("delta is for another model (kind or parameters differ from its base)")
    if len(popularity) != n_items0:
        raise CodecError("delta needs popularity counts over the model's items")
    added_users, added_items = header["ids_added"]["users"], header["ids_added"]["items"]
    for added, index in ((added_users, model.users), (added_items, model.items)):
        if not isinstance(added, list) or not all(isinstance(i, str) for i in added):
            raise CodecError("delta's added ids are not a list of strings")
        if len(set(added)) != len(added) or any(i in index for i in added):
            raise CodecError("delta adds an id twice, or one its base has")
    n_users, n_items = n_users0 + len(added_users), n_items0 + len(added_items)
    items = _added_rows(delta["items"], n_items0, n_items, "items", "the values of the items it adds")
    for name in (*ITEM_ARRAYS, "popularity"):
        if delta[name].shape != items.shape:
            raise CodecError(f"delta's {name} does not match its items")
    if "recent_whole" in delta and delta["recent_whole"].shape != (n_items,):
        raise CodecError("delta's whole recent-popularity array does not match its items")
    if np.asarray(delta["recent_clock"]).shape != (4,):
        raise CodecError("delta's recent-popularity clock is malformed")
    users = _added_rows(delta["users"], n_users0, n_users, "users", "the histories of the users it adds")
    history_items, history_weights = delta["history_items"], delta["history_weights"]
    if history_items.shape != (len(users), model.window) or history_weights.shape != history_items.shape:
        raise CodecError("delta's history rows do not match its users")
    if history_items.size and (int(history_items.max()) >= n_items or int(history_items.min()) < -1):
        raise CodecError("delta's history refers to unknown items")
    rows, slots, cols, vals = (delta[name] for name in _ENTRIES)
    if vals.shape != rows.shape:
        raise CodecError("delta entries do not match their base")
    numbers = (*ITEM_ARRAYS, "recent_whole", "popularity", "recent_clock", "history_items", "history_weights",
               *_ENTRIES)  # fmt: skip
    if any(np.asarray(delta[name]).dtype.kind not in "iuf" for name in numbers if name in delta):
        raise CodecError("delta arrays hold something other than numbers")
    try:
        plan = model.rows.check_entries(rows, slots, cols, n_items, n_items)
    except ValueError as exc:
        raise CodecError(str(exc)) from exc
    new_popularity = _with_rows(popularity, n_items, items, delta["popularity"])

    def change() -> np.ndarray:  # everything fits
        model.forget_strongest(plan.touched)  # the rows whose entries the delta changes (the others' parts hold)
        model.add_ids(added_users, added_items)
        model.set_item_values(items, delta)
        model.set_histories(users, history_items, history_weights)
        model.rows.set_entries(plan, vals)
        return new_popularity

    return change


def compose(deltas: list[tuple[dict[str, Any], dict[str, np.ndarray]]]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One delta that does what applying ``deltas`` in order (each made against the one before's result) does.

    All at once (one concatenation and one pass per kind of row), so a long chain costs its total size."""
    for header, _ in deltas:
        if header.get("delta") != FORMAT:
            raise CodecError(f"not a delta this version understands: {header.get('delta')!r}")
    first, last = deltas[0][0], deltas[-1][0]
    sizes = first["base_sizes"]
    for header, a in deltas:
        if header["base_sizes"] != sizes or header["kind"] != first["kind"] or header["params"] != first["params"]:
            raise CodecError("a delta of the chain was not made against the one before it")
        sizes = {name: sizes[name] + len(header["ids_added"][name]) for name in ("users", "items")}
        _rows_of(a["items"], sizes["items"], "items")  # as apply() checks them: composing would sort them
        _rows_of(a["users"], sizes["users"], "users")
        if len(a["entry_rows"]) > 1 and np.any(np.diff(_keys(a)) <= 0):
            raise CodecError("delta entries are not sorted by row and slot, each once")
    header = {
        **last,
        "base_version": first["base_version"],
        "base_sizes": first["base_sizes"],
        "ids_added": {name: [i for h, _ in deltas for i in h["ids_added"][name]] for name in ("users", "items")},
    }
    parts = [a for _, a in deltas]
    arrays: dict[str, np.ndarray] = {}
    for key_of, names in (
        (_keys, _ENTRIES),
        (lambda a: a["items"].astype(np.int64), ("items", *ITEM_ARRAYS, "popularity")),
        (lambda a: a["users"].astype(np.int64), ("users", "history_items", "history_weights")),
    ):
        keep = _last_of_each(np.concatenate([key_of(a) for a in parts]))  # the latest value of each row
        for name in names:
            arrays[name] = np.concatenate([a[name] for a in parts])[keep]
    arrays["recent_clock"] = parts[-1]["recent_clock"]
    for name in ("progressive_labels", "progressive_predictions"):  # the entries since the first's base
        arrays[name] = np.concatenate([a[name] for a in parts])[-int(last["progressive_window"]) :]
    rescaled = [k for k, a in enumerate(parts) if "recent_whole" in a]
    if rescaled:  # every item's value as of the last rescale, then the later deltas' items
        whole = parts[rescaled[-1]]["recent_whole"]
        for a in parts[rescaled[-1] + 1 :]:
            whole = _with_rows(whole, max(len(whole), int(a["items"].max(initial=-1)) + 1), a["items"], a["recent"])
        arrays["recent_whole"] = whole
    return header, {**{name: arrays[name] for name in parts[-1] if name != "recent_whole"}, **(
        {"recent_whole": arrays["recent_whole"]} if rescaled else {})}  # fmt: skip


def _keys(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return arrays["entry_rows"].astype(np.int64) << 32 | arrays["entry_slots"].astype(np.int64)


def _last_of_each(keys: np.ndarray) -> np.ndarray:
    """Indices that pick, for each distinct key in ascending order, its last occurrence in ``keys``."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = ordered[1:] != ordered[:-1]
    return order[last]


def resolve(
    root: bytes | tuple[dict[str, Any], dict[str, np.ndarray]], chain: list[tuple[int, bytes]]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The whole parts of the newest version of a chain: ``root`` (a whole snapshot's bytes, or decoded parts
    against, its bytes); the deltas are composed first, so the model's rows are rebuilt once. Anything that
    does not fit raises :class:`CodecError`."""
    with _codec_errors("chain of deltas does not apply"):
        return _resolve(root, chain)


def resolve_delta(chain: list[tuple[int, bytes]]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One delta (decoded parts) that does what the chain's deltas do, in order (:func:`compose` when several):
    for :func:`apply_in_place` to the version the chain starts from. Raises :class:`CodecError` if it does not
    hold together."""
    with _codec_errors("chain of deltas does not hold together"):
        deltas = _decoded(chain)
        if not deltas:
            raise CodecError("no delta to apply")
        return deltas[0] if len(deltas) == 1 else compose(deltas)


def whole_blob(root: bytes, chain: list[tuple[int, bytes]]) -> bytes:
    """A whole snapshot's bytes: ``root`` itself, or :func:`resolve` of a chain encoded again."""
    return codec.encode(*resolve(root, chain)) if chain else root


def _resolve(
    root: bytes | tuple[dict[str, Any], dict[str, np.ndarray]], chain: list[tuple[int, bytes]]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    base = codec.decode(root) if isinstance(root, bytes) else root
    if is_delta(base[0]):
        raise CodecError("the root of a chain of deltas must be a whole snapshot")
    deltas = _decoded(chain)
    if not deltas:
        return base
    return apply(*base, *(deltas[0] if len(deltas) == 1 else compose(deltas)))


def _decoded(chain: list[tuple[int, bytes]]) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """The chain's deltas decoded, each checked to be a delta made against the version the chain names."""
    deltas = []
    for base_version, blob in chain:
        delta = codec.decode(blob)
        if not is_delta(delta[0]):
            raise CodecError("a whole snapshot in the middle of a chain of deltas")
        if delta[0].get("base_version") != base_version:
            raise CodecError(f"delta was made against v{delta[0].get('base_version')}, not v{base_version}")
        deltas.append(delta)
    return deltas


@contextmanager
def _codec_errors(what: str) -> Iterator[None]:
    """Turn the errors a malformed delta raises into a :class:`CodecError` saying ``what`` failed."""
    try:
        yield
    except CodecError:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise CodecError(f"{what}: {exc!r}") from exc


def _added_rows(rows: np.ndarray, n0: int, n: int, what: str, added: str) -> np.ndarray:
    """A delta's rows of ``what`` (:func:`_rows_of`), which must end with every row it adds (``n0`` to ``n``)."""
    rows = _rows_of(rows, n, what)
    if len(rows) < n - n0 or not np.array_equal(rows[len(rows) - (n - n0) :], np.arange(n0, n)):
        raise CodecError(f"delta lacks {added}")
    return rows


def _rows_of(rows: np.ndarray, n: int, what: str) -> np.ndarray:
    """A delta's row numbers of ``what``: each once, ascending, within the ``n`` rows of the result."""
    rows = rows.astype(np.int64)
    if len(rows) and (rows[0] < 0 or rows[-1] >= n or np.any(np.diff(rows) <= 0)):
        raise CodecError(f"delta's {what} rows are not ascending, each once, within the model")
    return rows


def _with_rows(base: np.ndarray, n: int, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A copy of ``base`` grown to ``n`` rows, with ``values`` at ``rows``."""
    out = np.empty((n, *base.shape[1:]), dtype=base.dtype)
    out[: len(base)] = base
    out[rows] = values
    return out


def _merge_rows(
    base: dict[str, np.ndarray], delta: dict[str, np.ndarray], n_items0: int, n_items: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The co-occurrence rows (CSR) with the delta's entries: values at existing slots replaced, new slots appended.

    Every entry of a row past its base length must be in the delta, at consecutive slots."""
    indptr = np.asarray(base["indptr"], dtype=np.int64)
    rows = delta["entry_rows"].astype(np.int64)
    slots = delta["entry_slots"].astype(np.int64)
    cols, vals = delta["entry_cols"], delta["entry_vals"]
    if len(indptr) != n_items0 + 1 or not (len(rows) == len(slots) == len(cols) == len(vals)):
        raise CodecError("delta entries do not match their base")
    if len(rows) and (rows.min() < 0 or rows.max() >= n_items or slots.min() < 0):
        raise CodecError("delta entries outside the model")
    if len(cols) and (int(cols.min()) < 0 or int(cols.max()) >= n_items):
        raise CodecError("delta entries name a column outside the model")
    if len(rows) > 1 and np.any(np.diff(rows << 32 | slots) <= 0):
        raise CodecError("delta entries are not sorted by row and slot, each once")
    old_len = np.zeros(n_items, dtype=np.int64)
    old_len[:n_items0] = np.diff(indptr)
    old_end = np.full(n_items, indptr[-1], dtype=np.int64)
    old_end[:n_items0] = indptr[1:]
    in_place = slots < old_len[rows]
    at = old_end[rows[in_place]] - old_len[rows[in_place]] + slots[in_place]
    base_indices = np.asarray(base["indices"], dtype=np.int32)  # read only (views of the base's bytes)
    if not np.array_equal(base_indices[at], cols[in_place]):
        raise CodecError("delta names another column than its base at a slot")
    added_rows, added_slots = rows[~in_place], slots[~in_place]
    # the k-th new entry of a row must sit at its base length + k (sorted: the row's entries are consecutive)
    first = np.searchsorted(added_rows, added_rows, side="left")
    if not np.array_equal(added_slots, old_len[added_rows] + np.arange(len(added_rows)) - first):
        raise CodecError("delta leaves a gap in a row")
    positions = old_end[added_rows]  # before the next row's first entry: appended to its row, in slot order
    # np.insert makes the new arrays (one copy of the base's, not two); an existing entry then sits after
    # every entry inserted at or before its old position (those of earlier rows: ascending positions)
    indices = np.insert(base_indices, positions, cols[~in_place])
    data = np.insert(np.asarray(base["data"], dtype=np.float32), positions, vals[~in_place])
    data[at + np.searchsorted(positions, at, side="right")] = vals[in_place]
    new_indptr = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(old_len + np.bincount(added_rows, minlength=n_items), out=new_indptr[1:])
    return new_indptr, indices, data
