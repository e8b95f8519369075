"""The ``metricsbuf`` command line (also ``python -m metricsbuf``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from ._exceptions import MetricsBufError

EXIT_ERROR = 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metricsbuf", description="Buffered SageMaker Metrics logging.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="simulate a training loop that logs metrics, then show what the service stored",
        description="By default runs against an embedded local endpoint (moto's server on 127.0.0.1). "
        "--endpoint-url uses another endpoint serving both SageMaker APIs; --aws --region REGION "
        "runs against AWS with the standard credential chain.",
    )
    demo.add_argument(
        "--trial-component", default="metricsbuf-demo", help="trial component name (created if needed)"
    )
    demo.add_argument("--steps", type=int, default=1000, help="training steps (4 metrics each)")
    demo.add_argument("--endpoint-url", default=None, help="endpoint serving both SageMaker APIs")
    demo.add_argument("--aws", action="store_true", help="use the standard AWS endpoints (real credentials)")
    demo.add_argument("--region", default=None, help="AWS region")
    demo.add_argument(
        "--sync", action="store_true", help="a synchronous loop with SyncMetricsLogger (and a second thread)"
    )

    sync = commands.add_parser(
        "sync",
        help="send everything still pending in a spool",
        description="Sends every pending point of the spool at PATH (each to its own trial component) with "
        "the library's batching, retries and accounting; exits 1 if anything failed or is left, 2 on errors.",
    )
    sync.add_argument("path", help="the spool folder (a logger's spool_dir)")
    sync.add_argument(
        "--endpoint-url", default=None, help="SageMaker Metrics endpoint (default: the standard one)"
    )
    sync.add_argument("--region", default=None, help="AWS region (default: the standard chain)")
    sync.add_argument("--retry-failed", action="store_true", help="send the dead letters again too")
    sync.add_argument(
        "--max-attempts", type=int, default=8, help="sends per point before giving up (default 8)"
    )
    sync.add_argument(
        "--adaptive-rate",
        action="store_true",
        help="experimental: once throttled, send at a share of the limit learnt from the answers "
        "(the adaptive_rate option; see the README)",
    )

    inspect = commands.add_parser("inspect", help="show what a spool holds, without sending anything")
    inspect.add_argument("path", help="the spool folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from ._demo import DemoOptions, run_demo

            return run_demo(
                DemoOptions(
                    trial_component=args.trial_component,
                    steps=args.steps,
                    endpoint_url=args.endpoint_url,
                    region=args.region,
                    aws=args.aws,
                    sync=args.sync,
                )
            )
        from . import _cli

        if args.command == "sync":
            return asyncio.run(
                _cli.sync(
                    args.path,
                    endpoint_url=args.endpoint_url,
                    region_name=args.region,
                    retry_failed=args.retry_failed,
                    max_attempts=args.max_attempts,
                    adaptive_rate=args.adaptive_rate,
                )
            )
        if args.command == "inspect":
            return _cli.inspect(args.path)
    except MetricsBufError as exc:
        sys.stderr.write(f"metricsbuf: {exc}\n")
        return EXIT_ERROR
    raise AssertionError(args.command)  # argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
