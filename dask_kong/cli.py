"""The `dask-kong` command line (also `python -m dask_kong`).

One subcommand per job, each a `register_*` function that adds its parser and sets the
function that runs it, so a new subcommand is one more function in `SUBCOMMANDS`.

    python -m dask_kong gateway --handler mod:fn [--host H] [--port P]
                                [--keep-warm S] [--concurrency N]

starts the local Lambda-compatible gateway, prints its URL on the first line of stdout
and serves until SIGINT or SIGTERM. Callers must sign with the key pair in
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or kong.gateway.*), which it requires.

    python -m dask_kong dashboard --store redis://host:6379/0 [--host H] [--port P]

serves the live dashboard of the runs sessions announce in that store, the same way.

    python -m dask_kong lambda-image [--out DIR]

writes a container image build context for AWS Lambda: Dockerfile, requirements pinned
to this client's versions, dask-kong's source.

    python -m dask_kong probe --store redis://host:6379/0 [--function kong]
                              [--endpoint-url URL] [--region R]

checks a Lambda deployment with one synchronous invocation (exit 0: function found,
compatible dask-kong, same store; exit 1 naming what is wrong).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

from . import config

Command = Callable[[argparse.Namespace], int]


@contextlib.contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """An event that SIGINT or SIGTERM sets while the block runs; the handlers that were
    there before are back when it ends, however it ends."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler_before in previous.items():
            signal.signal(sig, handler_before)


def wait_for(stop: threading.Event) -> None:
    """Serve until `stop` is set; the timeout keeps each wait short, so a signal's
    handler runs within half a second."""
    while not stop.wait(timeout=0.5):
        pass


def run_gateway(args: argparse.Namespace) -> int:
    """Serve the gateway until SIGINT/SIGTERM; the workers end with it."""
    from .backends.processes.auth import AccessKey
    from .backends.processes.gateway import Gateway
    from .backends.processes.settings import GatewaySettings

    handler = config.get("gateway.handler", args.handler)
    if not handler:
        print("dask-kong gateway: --handler module:function is required", file=sys.stderr)
        return 2
    if AccessKey.from_config() is None:
        print(
            "dask-kong gateway: no credentials: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or kong.gateway.access_key_id/secret_access_key) to "
            "the key pair callers sign their Invoke requests with",
            file=sys.stderr,
        )
        return 2
    with stop_signals() as stop:
        settings = GatewaySettings.from_config(
            handler,
            host=args.host,
            port=args.port,
            keep_warm_s=args.keep_warm,
            concurrency=args.concurrency,
        )
        gateway = Gateway(settings)
        try:
            gateway.start()
            print(gateway.url, flush=True)
            print(f"functions: {', '.join(gateway.functions)}", file=sys.stderr, flush=True)
            wait_for(stop)
        finally:
            gateway.stop()
    return 0


def register_gateway(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subcommands.add_parser(
        "gateway",
        help="serve the local Lambda-compatible gateway",
        description="Serve the AWS Lambda Invoke API locally, running each invocation "
        "in a worker process. Defaults come from kong.gateway in kong.yaml.",
    )
    parser.add_argument("--handler", help="module:function each worker runs")
    parser.add_argument("--host", help="interface to bind (default: loopback)")
    parser.add_argument("--port", type=int, help="port to bind (0: a free one)")
    parser.add_argument("--keep-warm", type=float, help="seconds an idle worker stays warm")
    parser.add_argument("--concurrency", type=int, help="invocations running at once")
    parser.set_defaults(command=run_gateway)


def run_dashboard(args: argparse.Namespace) -> int:
    """Serve the live dashboard of the runs announced in a Redis store until SIGINT or
    SIGTERM (sessions announce runs with kong.dashboard.publish: true)."""
    from .diagnostics.publish import serve_store

    url = config.get("store.url", args.store)
    if not url:
        print("dask-kong dashboard: --store redis://... is required", file=sys.stderr)
        return 2
    with stop_signals() as stop:
        dashboard = serve_store(url, host=args.host, port=args.port)
        try:
            print(dashboard.link, flush=True)
            wait_for(stop)
        finally:
            dashboard.close()
    return 0


def register_dashboard(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subcommands.add_parser(
        "dashboard",
        help="serve the live dashboard of the runs in a Redis store",
        description="Serve the live dashboard of the runs that sessions announce in a "
        "Redis store (kong.dashboard.publish: true). Prints its URL on the first line. "
        "Defaults come from kong.dashboard in kong.yaml.",
    )
    parser.add_argument("--store", help="redis:// URL of the store (default: kong.store.url)")
    parser.add_argument("--host", help="interface to bind (default: loopback)")
    parser.add_argument("--port", type=int, help="port to bind (0: a free one)")
    parser.set_defaults(command=run_dashboard)


def run_lambda_image(args: argparse.Namespace) -> int:
    """Write the Lambda image's build context (Dockerfile, pinned requirements, source)."""
    from pathlib import Path

    from .deploy import write_lambda_image

    image = write_lambda_image(Path(args.out))
    print(
        f"wrote {image.dockerfile}, {image.requirements} ({len(image.pins)} pins), {image.source}"
    )
    print(f"next: docker build --platform linux/amd64 -t kong-worker {args.out}")
    return 0


def register_lambda_image(
    subcommands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = subcommands.add_parser(
        "lambda-image",
        help="write a Dockerfile for an AWS Lambda function that runs dask-kong",
        description="Write a container image build context for the Lambda function: a "
        "Dockerfile on AWS's base image for this Python, requirements pinned to the "
        "versions installed here, and dask-kong's source from this checkout "
        "(docs/deploy-lambda.md).",
    )
    parser.add_argument("--out", default="kong-lambda-image", help="directory to write")
    parser.set_defaults(command=run_lambda_image)


def run_probe(args: argparse.Namespace) -> int:
    """Check a Lambda deployment with one synchronous invocation (the session's start-up
    probe): exit 0 and print what the function runs, or exit 1 naming what is wrong."""
    from .backends.aws_lambda.probe import probe_function
    from .errors import KongError
    from .invocation.transports import LambdaTransport
    from .store.redis import connect

    url = config.get("store.url", args.store)
    function = str(config.get("lambda.function", args.function))
    if not url:
        print("dask-kong probe: --store redis://... is required", file=sys.stderr)
        return 2
    try:
        store = connect(url)
        transport = LambdaTransport(args.endpoint_url, args.region)
        try:
            result = probe_function(store, transport, function)
        finally:
            transport.close()
            store.close()
    except KongError as exc:
        print(f"dask-kong probe: {exc}", file=sys.stderr)
        return 1
    print(f"{result.function}: dask-kong {result.kong_version}, same store, {result.seconds:.2f} s")
    return 0


def register_probe(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subcommands.add_parser(
        "probe",
        help="check a Lambda deployment (function, version, store) in one invocation",
        description="Invoke the function once, synchronously: it must exist, run a "
        "compatible dask-kong, and reach the same Redis as --store. Exit 0 when it does, "
        "1 naming what is wrong. Defaults come from kong.lambda and kong.store.",
    )
    parser.add_argument("--store", help="redis:// URL the client uses (default: kong.store.url)")
    parser.add_argument("--function", help="function name (default: kong.lambda.function)")
    parser.add_argument("--endpoint-url", help="Invoke API endpoint (default: AWS)")
    parser.add_argument("--region", help="AWS region (default: kong.lambda.region, AWS_REGION)")
    parser.set_defaults(command=run_probe)


SUBCOMMANDS = [register_gateway, register_dashboard, register_lambda_image, register_probe]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dask-kong", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    subcommands = parser.add_subparsers(title="commands", dest="subcommand", required=True)
    for register in SUBCOMMANDS:
        register(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # INFO by default: the gateway logs its workers' output there, like a function's logs.
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    command: Command = args.command
    return command(args)
