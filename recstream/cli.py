"""The ``recstream`` command: ``worker``, ``api``, ``up`` (embedded run), ``demo`` (traffic), ``keys`` (API keys)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from recstream.settings import Settings, get_settings


def _worker(_args: argparse.Namespace) -> int:
    import gc

    from recstream.components import require_hmac_key
    from recstream.gc_tuning import WORKER_GC_THRESHOLD, freeze_startup_objects
    from stream.app import run_worker

    settings = get_settings()
    require_hmac_key(settings)  # (refused before it connects to anything)
    gc.set_threshold(*WORKER_GC_THRESHOLD)
    freeze_startup_objects()
    run_worker(settings)
    return 0


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from api.auth import AuthNotConfigured, key_ring_from_settings
    from api.http_limits import PROTOCOL
    from recstream.components import require_hmac_key

    settings = get_settings()
    host = args.host or settings.api_host
    port = args.port if args.port is not None else settings.api_port
    workers = args.workers if args.workers is not None else settings.api_workers
    try:
        if workers > 1:
            require_hmac_key(settings)  # refused here, before any process starts
            key_ring_from_settings(settings)
        else:
            app = create_app(settings)
    except AuthNotConfigured as exc:
        print(f"recstream api: not starting: {exc}", file=sys.stderr)
        return 2
    if workers > 1:
        from api.processes import MetricsDirectoryRefused, serve

        try:
            return serve(host, port, workers)
        except MetricsDirectoryRefused as exc:
            print(f"recstream api: not starting: {exc}", file=sys.stderr)
            return 2
    # access_log off: an access log line would carry query strings; auth refusals are logged without the key.
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, http=PROTOCOL)
    return 0


def _up(args: argparse.Namespace) -> int:
    from recstream.embedded import run_embedded

    return run_embedded(demo=args.demo, api_port=args.port, broker=args.broker)


def _demo(args: argparse.Namespace) -> int:
    from recstream.demo import run_demo

    settings = get_settings()
    url = args.url or f"http://{settings.api_host}:{settings.api_port}"
    return run_demo(url, rate=args.rate, duration=args.duration, seed=args.seed, api_key=args.api_key)


def _keys_create(args: argparse.Namespace) -> int:
    from api.auth import ALL_SCOPES, hash_key, new_key

    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    unknown = sorted(set(scopes) - ALL_SCOPES)
    if unknown or not scopes:
        print(f"recstream keys create: unknown scopes {unknown}; choose from {sorted(ALL_SCOPES)}", file=sys.stderr)
        return 2
    from pydantic import ValidationError

    from recstream.settings import ApiKeyEntry

    key = new_key()
    entry = {"name": args.name, "scopes": scopes, "hash": hash_key(key)}
    try:
        ApiKeyEntry.model_validate(entry)
    except ValidationError as exc:
        print(f"recstream keys create: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    print(f"API key for {args.name!r} (shown once, give it to the client; it is not stored anywhere):")
    print(f"  {key}")
    print("Add this entry to the JSON list in RECSTREAM_API_KEYS and restart the API processes:")
    print(f"  {json.dumps(entry)}")
    return 0


def _api_workers(text: str) -> int:
    """``--workers``: bounded as RECSTREAM_API_WORKERS is."""
    field = Settings.model_fields["api_workers"]
    low, high = (next(getattr(m, bound) for m in field.metadata if hasattr(m, bound)) for bound in ("ge", "le"))
    if not text.strip().isdigit() or not low <= int(text) <= high:
        raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recstream", description="Streaming online-learning recommender.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run the Faust worker: consume events, learn, checkpoint to Redis")
    p.set_defaults(func=_worker)

    p = sub.add_parser("api", help="serve the HTTP API (ingest, recommendations, health, metrics)")
    p.add_argument("--host", default=None, help="bind address (default: RECSTREAM_API_HOST)")
    p.add_argument("--port", type=int, default=None, help="port (default: RECSTREAM_API_PORT)")
    p.add_argument(
        "--workers", type=_api_workers, default=None, help="API processes on the port (default: RECSTREAM_API_WORKERS)"
    )
    p.set_defaults(func=_api)

    p = sub.add_parser("up", help="run everything on this machine: local broker, Redis, worker, API")
    p.add_argument("--demo", action="store_true", help="also publish realistic demo traffic")
    p.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    p.add_argument("--broker", choices=["auto", "kafka", "tansu"], default="auto", help="which local broker to start")
    p.set_defaults(func=_up)

    p = sub.add_parser("demo", help="publish demo traffic (users with tastes) to a running API")
    p.add_argument("--url", default=None, help="API base URL")
    p.add_argument("--rate", type=float, default=50.0, help="events per second")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until Ctrl-C)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--api-key",
        default=os.environ.get("RECSTREAM_DEMO_API_KEY"),
        help="API key with scopes ingest and read (default: $RECSTREAM_DEMO_API_KEY)",
    )
    p.set_defaults(func=_demo)

    p = sub.add_parser("keys", help="API keys (docs/security.md)")
    keys_sub = p.add_subparsers(dest="keys_command", required=True)
    p = keys_sub.add_parser("create", help="generate a key; print it once, and the hash entry for RECSTREAM_API_KEYS")
    p.add_argument("--name", required=True, help="who holds the key (letters, digits, . _ -), shown in logs")
    p.add_argument("--scopes", required=True, help="comma-separated: ingest, read, admin (admin implies read)")
    p.set_defaults(func=_keys_create)

    from recstream import evaluate, items_cli, models_cli, status, users_cli
    from stream import quarantine

    evaluate.add_parser(sub)
    quarantine.add_parser(sub)
    models_cli.add_parser(sub)
    items_cli.add_parser(sub)
    users_cli.add_parser(sub)
    status.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from recstream.components import configure_logging

    configure_logging(args.command)
    from aiokafka.errors import KafkaConnectionError
    from pydantic import ValidationError
    from pydantic_settings import SettingsError
    from redis.exceptions import AuthenticationError, AuthorizationError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from recstream.models_cli import Refused
    from store.signing import KeyMissing
    from stream.quarantine import QuarantineReadTimeout, UnknownReason

    where = "the service's (for a `recstream up` run, the one it printed)"
    try:
        return int(args.func(args) or 0)
    except (AuthenticationError, AuthorizationError) as exc:
        print(
            f"recstream {args.command}: Redis refused this client ({exc}); check the user and password "
            "in RECSTREAM_REDIS_URL.",
            file=sys.stderr,
        )
    except RedisTimeoutError as exc:
        print(
            f"recstream {args.command}: Redis did not answer in time ({exc}); the command may have stopped "
            "part-way: check the state (`recstream status`, `recstream models list`) before retrying.",
            file=sys.stderr,
        )
    except RedisConnectionError as exc:
        print(
            f"recstream {args.command}: cannot reach Redis ({exc}). Set RECSTREAM_REDIS_URL to {where} Redis.",
            file=sys.stderr,
        )
    except KafkaConnectionError as exc:
        print(
            f"recstream {args.command}: cannot reach the broker ({exc}). Set RECSTREAM_BROKER_URL to {where} broker.",
            file=sys.stderr,
        )
    except (Refused, QuarantineReadTimeout, UnknownReason) as exc:  # a change refused; a topic not read in time
        print(f"recstream {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyMissing as exc:  # the worker, the API, or a command that signs or verifies a snapshot
        print(f"recstream {args.command}: {exc}", file=sys.stderr)
    except SettingsError as exc:  # a variable that is not even JSON (its value is not repeated)
        from recstream.settings import unreadable_setting

        print(f"recstream {args.command}: invalid configuration: {unreadable_setting(exc)}", file=sys.stderr)
    except ValidationError as exc:
        if exc.title != "Settings":
            raise
        for error in exc.errors(include_url=False):  # each names its variable (or the model check names them)
            first, *rest = error["loc"] or ("",)
            inside = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in rest)
            setting = f"RECSTREAM_{str(first).upper()}{inside}: " if first else ""
            message = error["msg"].removeprefix("Value error, ")
            print(f"recstream {args.command}: invalid configuration: {setting}{message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
