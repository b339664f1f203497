"""The ``recstream`` command: ``worker``, ``api``, ``up`` (embedded run) and ``demo`` (traffic)."""

from __future__ import annotations

import argparse
import logging
import sys

from recstream.settings import get_settings


def _worker(_args: argparse.Namespace) -> int:
    from stream.app import run_worker

    run_worker(get_settings())
    return 0


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app

    settings = get_settings()
    host = args.host or settings.api_host
    port = args.port if args.port is not None else settings.api_port
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=False)
    return 0


def _up(args: argparse.Namespace) -> int:
    from recstream.embedded import run_embedded

    return run_embedded(demo=args.demo, api_port=args.port, broker=args.broker)


def _demo(args: argparse.Namespace) -> int:
    from recstream.demo import run_demo

    settings = get_settings()
    url = args.url or f"http://{settings.api_host}:{settings.api_port}"
    return run_demo(url, rate=args.rate, duration=args.duration, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recstream", description="Streaming online-learning recommender.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run the Faust worker: consume events, learn, checkpoint to Redis")
    p.set_defaults(func=_worker)

    p = sub.add_parser("api", help="serve the HTTP API (ingest, recommendations, health, metrics)")
    p.add_argument("--host", default=None, help="bind address (default: RECSTREAM_API_HOST)")
    p.add_argument("--port", type=int, default=None, help="port (default: RECSTREAM_API_PORT)")
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
    p.set_defaults(func=_demo)

    from recstream import evaluate
    from stream import quarantine

    evaluate.add_parser(sub)
    quarantine.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
