"""The ``metricsbuf`` command line (also ``python -m metricsbuf``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import DemoOptions, run_demo

        return run_demo(
            DemoOptions(
                trial_component=args.trial_component,
                steps=args.steps,
                endpoint_url=args.endpoint_url,
                region=args.region,
                aws=args.aws,
            )
        )
    raise AssertionError(args.command)  # argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
