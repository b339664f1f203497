"""``recstream evaluate``: replay a file of events through the learner and compare models offline.

Reads JSON lines in the event contract (``--events``, in time order) or a MovieLens
``ratings.csv`` (``--movielens``: every rating a ``view``, 4 and above also a ``like``, 5 also a
``share``, ordered by timestamp with ties kept in file order), passes them through the worker's
checks, replays what passed through :func:`learner.evaluation.replay` once per model, prints a
table, and writes the JSON report plus a PNG learning curve next to it.

The checks are the worker's, in its order (``stream/processor.py``): the event contract (lines
that break it are rejected with a reason and counted; they never stop the run), duplicates by
``event_id`` within ``RECSTREAM_DEDUPE_RETENTION_SECONDS`` of stream time, then the quality gate
built from the ``RECSTREAM_GATE_*`` settings with "now" the stream's clock
(:func:`learner.gate.gate.default_stream_clock`: the latest arrival time when the lines' arrivals
are known, as in ``bench/poisoning.py``; for a file of events alone, the latest accepted
``ts``). They run once; every model replays the same accepted stream. ``--no-gate`` skips
the duplicate check and the gate rules (the contract still applies): the stream as a worker
without any quality control would learn it, which is the reference for measuring what the gate
protects against (``bench/poisoning.py``). The
model guard is not replayed: it pauses one model on its own losses, live.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from learner.evaluation import GatedStream, ReplayEvent, ReplayResult, gate_stream, replay
from learner.event_weights import EventWeights
from learner.exploration import ThompsonExplorer
from learner.gate.gate import default_gate, default_stream_clock
from learner.online_learner import OnlineLearner
from learner.registry import DEFAULT_MODEL, MODELS, build_model
from learner.target import TargetRule
from recstream.settings import Settings, gate_config

K = 10
TARGET_RATIO = 1.4  # the default model's HR@10 (second half) over the best popularity baseline's
TARGET_EVENTS_PER_SECOND = 20_000.0
_ID = re.compile(r"^[A-Za-z0-9._:@\-]{1,128}$")


@dataclass(frozen=True)
class ModelSpec:
    """A named model configuration to replay: a registry kind and its constructor parameters."""

    name: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    baseline: bool = False
    weights: dict[str, float] | None = None  # EventWeights overrides (None: the run's weights)
    explore: float = 0.0  # fraction of the k places given to exploration


LIKES_ONLY = {"like": 1.0, "share": 0.0, "view": 0.0, "skip": 0.0}

# Baselines are tuned in the same run (half-life, and likes only vs the run's event weights);
# the best one is what the default model is measured against.
PRESETS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("popularity_likes", "popularity", baseline=True, weights=LIKES_ONLY),
        ModelSpec("decayed_popularity_likes", "decayed_popularity", baseline=True, weights=LIKES_ONLY),
        ModelSpec("popularity", "popularity", baseline=True),
        ModelSpec("decayed_popularity_30d", "decayed_popularity", {"half_life_days": 30.0}, baseline=True),
        ModelSpec("decayed_popularity_90d", "decayed_popularity", {"half_life_days": 90.0}, baseline=True),
        ModelSpec("decayed_popularity", "decayed_popularity", baseline=True),  # 365 days
        ModelSpec("decayed_popularity_730d", "decayed_popularity", {"half_life_days": 730.0}, baseline=True),
        ModelSpec("implicit_mf", "implicit_mf"),
        ModelSpec("river_biased_mf", "river_biased_mf"),
        ModelSpec("bpr", "bpr"),
        ModelSpec("item_cooccurrence", "item_cooccurrence"),  # the default (learner.registry.DEFAULT_MODEL)
        ModelSpec("blend", "blend"),  # co-occurrence + a little BPR
    )
}


def parse_model(name: str) -> ModelSpec:
    """A preset name, a registry kind, or ``kind:{json params}`` (e.g. ``decayed_popularity:{"half_life_days": 7}``)."""
    if name in PRESETS:
        return PRESETS[name]
    kind, _, raw = name.partition(":")
    if kind not in MODELS:
        known = ", ".join(sorted(set(PRESETS) | set(MODELS)))
        raise ValueError(f"unknown model {name!r}; known: {known} (or kind:{{json params}})")
    try:
        params = json.loads(raw) if raw else {}
    except ValueError as exc:
        raise ValueError(f"model parameters of {name!r} are not JSON: {exc}") from None
    if not isinstance(params, dict):
        raise ValueError(f"model parameters of {name!r} must be a JSON object")
    return ModelSpec(name, kind, params, baseline=kind in ("popularity", "decayed_popularity"))


# -- input ----------------------------------------------------------------------------------


@dataclass
class Loaded:
    events: list[ReplayEvent]
    rejected: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        self.examples.setdefault(reason, detail)


def load_events(path: Path, limit: int | None = None, arrivals: Sequence[float] | None = None) -> Loaded:
    """JSON lines in the event contract; invalid lines are rejected with a reason, never raised.

    ``arrivals``: when each line reached the broker (seconds since the epoch, one per line of the
    file, blank lines included), as a broker's log records it; the gate's "now" in the replay is
    then the latest arrival, as live (:func:`learner.evaluation.gate_stream`). None: unknown, the
    events' own ``ts`` stand in.
    """
    from recstream.events import parse_event

    loaded = Loaded(events=[])
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if limit is not None and len(loaded.events) >= limit:
                break
            if not line.strip():
                continue
            event, reason = parse_event(line.rstrip(b"\r\n"))
            if event is None:
                loaded.reject(_reason_key(reason or "invalid"), f"line {number}: {reason}")
                continue
            loaded.events.append(
                ReplayEvent(
                    event.user_id,
                    event.item_id,
                    event.type,
                    event.ts_seconds,
                    event.watch_seconds,
                    event.item_duration_seconds,
                    event.event_id,
                    None if arrivals is None else float(arrivals[number - 1]),
                )
            )
    return loaded


def load_movielens(path: Path, limit: int | None = None) -> Loaded:
    """MovieLens ratings as events: a view each, a like from 4 stars, a share at 5; time order, ties in file order.

    Event ids are ``ml:user:item:ts:type``, so a rating repeated in the file is a duplicate.
    """
    loaded = Loaded(events=[])
    ratings: list[tuple[int, str, str, float]] = []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:4]] != ["userId", "movieId", "rating", "timestamp"]:
            raise ValueError(f"{path} does not start with the MovieLens header userId,movieId,rating,timestamp")
        for number, row in enumerate(reader, start=2):
            try:
                user, item, rating, ts = row[0].strip(), row[1].strip(), float(row[2]), int(row[3])
            except (IndexError, ValueError) as exc:
                loaded.reject("malformed_row", f"line {number}: {exc}")
                continue
            if not (_ID.match(user) and _ID.match(item)) or not math.isfinite(rating):
                loaded.reject("invalid_row", f"line {number}: {row!r}")
                continue
            ratings.append((ts, user, item, rating))
    ratings.sort(key=lambda r: r[0])  # stable: ties keep file order
    events = loaded.events
    for ts, user, item, rating in ratings:
        t = float(ts)
        key = f"ml:{user}:{item}:{ts}"
        events.append(ReplayEvent(user, item, "view", t, event_id=f"{key}:view"))
        if rating >= 4.0:
            events.append(ReplayEvent(user, item, "like", t, event_id=f"{key}:like"))
        if rating >= 5.0:
            events.append(ReplayEvent(user, item, "share", t, event_id=f"{key}:share"))
        if limit is not None and len(events) >= limit:
            break
    if limit is not None:
        del events[limit:]
    return loaded


def _reason_key(reason: str) -> str:
    """A short, stable bucket for a rejection reason: ``malformed_json`` or ``invalid_<field>``."""
    if reason.startswith("malformed JSON"):
        return "malformed_json"
    if reason.startswith("undecodable"):
        return "undecodable"
    field_name = reason.split(":", 1)[0].strip().split(".")[0].strip("()")  # "(event)": the payload as a whole
    return f"invalid_{field_name}" if field_name and " " not in field_name else "invalid"


# -- running --------------------------------------------------------------------------------


def target_rule(s: Settings) -> TargetRule:
    """The worker's target rule, from the same settings (RECSTREAM_POSITIVE_TYPES, ...)."""
    return TargetRule(
        positive_types=frozenset(s.positive_types),
        negative_types=frozenset(s.negative_types),
        short_watch_fraction=s.short_watch_fraction,
    )


def check_stream(events: list[ReplayEvent], settings: Settings, gate: bool = True) -> GatedStream:
    """Duplicates and the quality gate, as the worker runs them (module doc); ``gate=False``: neither."""
    if not gate:
        return gate_stream(events)
    config = gate_config(settings)
    return gate_stream(
        events,
        default_gate(config),
        clock=default_stream_clock(config),
        dedupe_retention_seconds=settings.dedupe_retention_seconds,
    )


def run_model(spec: ModelSpec, events: list[ReplayEvent], rule: TargetRule, weights: EventWeights) -> ReplayResult:
    if spec.weights is not None:
        weights = EventWeights(**spec.weights)
    learner = OnlineLearner(model=build_model(spec.kind, **spec.params), rule=rule, weights=weights)
    explorer = ThompsonExplorer(fraction=spec.explore) if spec.explore else None
    progress = _Progress(spec.name)
    result = replay(events, learner, k=K, progress=progress, explorer=explorer)
    progress.done()
    return result


class _Progress:
    """One stderr line per model, rewritten in place on a terminal."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tty = sys.stderr.isatty()
        self.started = time.perf_counter()
        self.last_quarter = -1

    def __call__(self, done: int, total: int) -> None:
        if self.tty:
            rate = done / max(time.perf_counter() - self.started, 1e-9)
            sys.stderr.write(f"\r{self.name:<26} {done:>9,}/{total:,} events  {rate:>9,.0f}/s")
            sys.stderr.flush()
        elif total and done * 4 // total > self.last_quarter:
            self.last_quarter = done * 4 // total
            sys.stderr.write(f"{self.name}: {done:,}/{total:,} events\n")

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\r" + " " * 70 + "\r")
            sys.stderr.flush()


def build_report(
    dataset: str,
    results: list[tuple[ModelSpec, ReplayResult]],
    loaded: Loaded,
    gated: GatedStream,
    weights: EventWeights,
) -> dict[str, Any]:
    rows = []
    for spec, result in results:
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "params": spec.params,
                "baseline": spec.baseline,
                "weights": spec.weights or asdict(weights),
                "explore": spec.explore,
                **result.as_dict(),
            }
        )
    report: dict[str, Any] = {
        "dataset": dataset,
        "events": len(gated.accepted),  # what every model replayed
        "k": K,
        "models": rows,
        "gate": gate_summary(loaded, gated),
    }
    report["target"] = _target(rows)
    return report


def gate_summary(loaded: Loaded, gated: GatedStream) -> dict[str, Any]:
    """The report's ``gate`` section: what the contract rejected, the duplicates, and the holds, by reason."""
    by_reason: dict[str, int] = dict(loaded.rejected)
    if gated.duplicates:
        by_reason["duplicate"] = gated.duplicates
    by_reason.update(gated.held)
    return {
        "enabled": gated.gate_enabled,
        "duplicate_check": gated.dedupe_enabled,
        "checked": gated.checked,
        "learned": len(gated.accepted),
        "held": sum(gated.held.values()),
        "rejected": sum(loaded.rejected.values()),
        "duplicates": gated.duplicates,
        "by_reason": by_reason,
        "examples": {**loaded.examples, **gated.examples},
        "seconds": gated.seconds,
        "events_per_second": gated.events_per_second if gated.checked else None,
    }


def _target(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The issue's bar: the default model against the best popularity baseline of this run."""
    key = f"hr_at_{K}_second_half"
    baselines = [r for r in rows if r["baseline"] and r[key] is not None]
    default = next((r for r in rows if r["name"] == DEFAULT_MODEL), None)
    if not baselines or default is None or default[key] is None:
        return None
    best = max(baselines, key=lambda r: r[key])
    ratio = default[key] / best[key] if best[key] else math.inf
    return {
        "default_model": DEFAULT_MODEL,
        "best_baseline": best["name"],
        "best_baseline_hr": best[key],
        "default_hr": default[key],
        "ratio": ratio,
        "required_ratio": TARGET_RATIO,
        "default_events_per_second": default["events_per_second"],
        "required_events_per_second": TARGET_EVENTS_PER_SECOND,
        "met": ratio >= TARGET_RATIO and default["events_per_second"] >= TARGET_EVENTS_PER_SECOND,
    }


def format_table(report: dict[str, Any]) -> str:
    k = report["k"]
    columns = [  # title, report key, width, format
        ("model", "name", 28, "{}"),
        ("base", "baseline", 5, "{}"),
        (f"HR@{k}", f"hr_at_{k}", 7, "{:.4f}"),
        (f"NDCG@{k}", f"ndcg_at_{k}", 7, "{:.4f}"),
        ("MRR", "mrr", 6, "{:.4f}"),
        (f"HR@{k}·2nd", f"hr_at_{k}_second_half", 9, "{:.4f}"),
        (f"HR@{k}·act", f"hr_at_{k}_active_users", 9, "{:.4f}"),
        ("AUC", "auc", 6, "{:.4f}"),
        ("logloss", "logloss", 7, "{:.4f}"),
        ("cover", "coverage", 6, "{:.4f}"),
        ("events/s", "events_per_second", 9, "{:,.0f}"),
    ]

    def line(cells: list[str]) -> str:
        widths = [w for _, _, w, _ in columns]
        padded = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(padded)

    lines = [line([title for title, *_ in columns])]
    for row in report["models"]:
        lines.append(line(["-" if row[key] is None else fmt.format(row[key]) for _, key, _, fmt in columns]))
    gate = report["gate"]
    checks = " + ".join(
        name for name, on in (("duplicate check", gate["duplicate_check"]), ("gate", gate["enabled"])) if on
    )
    lines.append(
        f"events: {gate['checked']:,} valid, {report['events']:,} learned; rejected {gate['rejected']:,}, "
        f"duplicates {gate['duplicates']:,}, held {gate['held']:,} ({checks or 'no checks: --no-gate'}) "
        f"{gate['by_reason'] or ''}".rstrip()
    )
    if gate["enabled"] and gate["events_per_second"]:
        lines.append(
            f"gate: {gate['events_per_second']:,.0f} events/s ({1e6 / gate['events_per_second']:.1f} µs per event, "
            "once for every model)"
        )
    target = report.get("target")
    if target:
        lines.append(
            f"default {target['default_model']}: HR@{k} second half {target['default_hr']:.4f} = "
            f"{target['ratio']:.2f}x the best baseline {target['best_baseline']} ({target['best_baseline_hr']:.4f}) "
            f"at {target['default_events_per_second']:,.0f} events/s; target {target['required_ratio']}x and "
            f"{target['required_events_per_second']:,.0f} events/s: {'met' if target['met'] else 'NOT met'}"
        )
    return "\n".join(lines)


def write_learning_curve(report: dict[str, Any], path: Path) -> bool:
    """HR@k per stream window, one line per model (baselines dashed); False if matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = report["k"]
    fig, ax = plt.subplots(figsize=(9, 5))
    for row in report["models"]:
        points = [(p["position"], p[f"hr_at_{k}"]) for p in row["learning_curve"] if p[f"hr_at_{k}"] is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, linestyle="--" if row["baseline"] else "-", marker=".", label=row["name"])
    ax.set_xlabel("stream position (events)")
    ax.set_ylabel(f"HR@{k} in window")
    ax.set_title(f"Replay learning curve: {report['dataset']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def evaluate(args: argparse.Namespace) -> int:
    try:
        specs = [parse_model(name) for name in args.model] if args.model else list(PRESETS.values())
    except ValueError as exc:
        print(f"recstream evaluate: {exc}", file=sys.stderr)
        return 2
    if args.explore:
        if not 0.0 < args.explore < 1.0:
            print("recstream evaluate: --explore must be a fraction between 0 and 1", file=sys.stderr)
            return 2
        base = next((s for s in specs if s.name == DEFAULT_MODEL), PRESETS[DEFAULT_MODEL])
        specs.append(replace(base, name=f"{base.name}+explore{args.explore:g}", explore=args.explore))
    source = Path(args.events or args.movielens)
    try:
        loaded = load_events(source, args.limit) if args.events else load_movielens(source, args.limit)
    except (OSError, ValueError) as exc:
        print(f"recstream evaluate: cannot read {source}: {exc}", file=sys.stderr)
        return 2
    settings = Settings()  # read now, so RECSTREAM_GATE_* and the other settings apply to this run
    gated = check_stream(loaded.events, settings, gate=not args.no_gate)
    rule = target_rule(settings)
    weights = EventWeights()
    results = [(spec, run_model(spec, gated.accepted, rule, weights)) for spec in specs]
    report = build_report(str(source), results, loaded, gated, weights)
    out = Path(args.report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    curve = out.with_suffix(".png")
    print(format_table(report))
    if write_learning_curve(report, curve):
        print(f"report: {out}  learning curve: {curve}")
    else:
        print(f"report: {out}  (no learning curve: install matplotlib, e.g. the eval extra)")
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _plain(text: str) -> str:
    """Docstring markup as a terminal shows it: ``--events`` -> --events, :func:`x.y` -> x.y."""
    return re.sub(r":\w+:`([^`]*)`", r"\1", text).replace("``", "")


def add_parser(subparsers: Any) -> None:
    """Register ``evaluate`` on the ``recstream`` command's subparsers."""
    p = subparsers.add_parser(
        "evaluate",
        help="replay a file of events through the learner and compare models (no Kafka needed)",
        description=_plain(__doc__.split("\n\n")[1]) if __doc__ else None,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", metavar="FILE", help="JSON lines in the event contract, in time order")
    source.add_argument(
        "--movielens", metavar="RATINGS", help="a MovieLens ratings.csv (userId,movieId,rating,timestamp)"
    )
    p.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help=f"model to replay (repeatable): a preset ({', '.join(PRESETS)}), a registry kind, "
        "or kind:{json params}; default: every preset, baselines included",
    )
    p.add_argument("--limit", type=int, default=None, metavar="N", help="replay only the first N events")
    p.add_argument(
        "--explore",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="also replay the default model with this fraction of the places explored (Thompson sampling)",
    )
    p.add_argument(
        "--report", required=True, metavar="OUT.json", help="where to write the JSON report (a PNG goes next to it)"
    )
    p.add_argument(
        "--no-gate",
        action="store_true",
        help="skip the duplicate check and the quality gate (the contract still applies): "
        "what a worker without quality control would learn",
    )
    p.set_defaults(func=evaluate)
