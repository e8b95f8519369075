"""The fake service in its own process: the command line and `FakeMetricsServiceProcess`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Collection, Mapping
from types import TracebackType
from typing import Any

from .._exceptions import InvalidMetricError
from ._knobs import add_knob_arguments, check_knobs, knob_arguments, knob_argv, knobs_to_json, with_knob_docs
from ._records import ServiceState, points_from_json
from ._server import ClientSettings, FakeMetricsService


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m metricsbuf.testing",
        description=(
            "Run a fault-injecting fake SageMaker Metrics service. Prints its endpoint URL as the "
            "first line on stdout, then serves until SIGINT/SIGTERM (or stdin closes, with "
            "--exit-on-stdin-eof). GET /_fake/state, GET|POST /_fake/config and POST /_fake/clear "
            "inspect and steer it."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 (default) picks a free one")
    add_knob_arguments(parser)
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="stop when stdin is closed (so the service dies with the process that started it)",
    )
    return parser


async def _serve(service: FakeMetricsService, *, exit_on_stdin_eof: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
            pass
    if exit_on_stdin_eof:

        def wait_for_eof() -> None:
            try:
                while sys.stdin.buffer.read(65536):
                    pass
            finally:
                loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=wait_for_eof, name="stdin-eof", daemon=True).start()
    async with service:
        print(service.endpoint_url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m metricsbuf.testing``; see `_build_parser` for the options."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        service = FakeMetricsService(host=args.host, port=args.port, **knob_arguments(vars(args)))
    except InvalidMetricError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(_serve(service, exit_on_stdin_eof=args.exit_on_stdin_eof))
    except KeyboardInterrupt:  # pragma: no cover - a second Ctrl-C
        pass
    return 0


@with_knob_docs
class FakeMetricsServiceProcess(ClientSettings):
    """A `FakeMetricsService` in a child process (``python -m metricsbuf.testing``).

    For benchmarks and multi-process tests, where the service must not share the GIL with
    the code under test. Usable as ``with`` (blocking) or ``async with`` (the blocking start
    and stop run in a thread). The options are those of `FakeMetricsService`; state is read
    and options changed over HTTP (the ``/_fake/...`` endpoints) with `state`, `configure`
    and `clear`, or their ``*_async`` variants from async code.

    Args:
        host, port: where the child listens; port 0 picks a free ephemeral port.
        startup_timeout: seconds to wait for the child to print its endpoint URL.
        python: the interpreter to run (default: this one).
        (the options): see below.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        internal_error_rate: float = 0.0,
        conflict_error_rate: float = 0.0,
        throttle_rate: float = 0.0,
        server_error_rate: float = 0.0,
        reset_rate: float = 0.0,
        ambiguous_reset_rate: float = 0.0,
        latency: float = 0.0,
        metric_limit: int | None = None,
        known_trial_components: Collection[str] | None = None,
        rate_limit: float | None = None,
        rate_limit_burst: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 10.0,
        python: str = sys.executable,
    ) -> None:
        # locals() holds exactly the arguments here; the options among them are checked now,
        # so that a bad one fails here rather than in the child.
        knobs = knob_arguments(locals())
        self.argv = [python, "-m", "metricsbuf.testing", "--exit-on-stdin-eof", "--host", host]
        self.argv += ["--port", str(port), *knob_argv(knobs)]
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._endpoint_url: str | None = None

    @property
    def endpoint_url(self) -> str:
        """The child's ``http://127.0.0.1:<port>``; available once started."""
        if self._endpoint_url is None:
            raise RuntimeError("FakeMetricsServiceProcess is not running: use 'with' or call start()")
        return self._endpoint_url

    @property
    def pid(self) -> int | None:
        """The child's process id, or None when not started."""
        return None if self._proc is None else self._proc.pid

    def start(self) -> str:
        """Start the child and wait for its endpoint URL (returned)."""
        if self._proc is not None:
            raise RuntimeError("FakeMetricsServiceProcess is already running")
        env = dict(os.environ)
        # Make this copy of metricsbuf importable in the child even when it is not installed.
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._proc = proc
        lines: queue.Queue[bytes] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=self.startup_timeout)
        except queue.Empty:
            self.stop()
            raise RuntimeError(
                f"the fake service did not report its URL within {self.startup_timeout} s"
            ) from None
        url: str = line.decode().strip()
        if not url.startswith("http"):
            self.stop()
            raise RuntimeError(f"the fake service failed to start (exit code {proc.poll()}); see its stderr")
        self._endpoint_url = url
        return url

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the child: close its stdin, then terminate, then kill, waiting ``timeout`` each time."""
        proc, self._proc = self._proc, None
        self._endpoint_url = None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    def __enter__(self) -> FakeMetricsServiceProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> FakeMetricsServiceProcess:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def _call(self, method: str, path: str, payload: Mapping[str, Any] | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.endpoint_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            message = exc.read().decode(errors="replace")
            exc.close()
            if exc.code == 400:
                raise InvalidMetricError(message) from None
            raise

    def state(self, *, points: bool = True) -> ServiceState:
        """Fetch the counts and (unless ``points=False``) the stored points (``GET /_fake/state``)."""
        raw = self._call("GET", "/_fake/state" + ("" if points else "?points=0"))
        return ServiceState(counts=Counter(raw["counts"]), points=points_from_json(raw.get("points", ())))

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Change options in the child (``POST /_fake/config``); returns the resulting options."""
        result: dict[str, Any] = self._call("POST", "/_fake/config", knobs_to_json(check_knobs(knobs)))
        return result

    def config(self) -> dict[str, Any]:
        """The child's current options (``GET /_fake/config``)."""
        result: dict[str, Any] = self._call("GET", "/_fake/config")
        return result

    def clear(self) -> None:
        """Forget the child's stored points and counts (``POST /_fake/clear``)."""
        self._call("POST", "/_fake/clear", {})

    async def state_async(self, *, points: bool = True) -> ServiceState:
        """`state`, run in a thread."""
        return await asyncio.to_thread(lambda: self.state(points=points))

    async def configure_async(self, **knobs: Any) -> dict[str, Any]:
        """`configure`, run in a thread."""
        return await asyncio.to_thread(lambda: self.configure(**knobs))

    async def clear_async(self) -> None:
        """`clear`, run in a thread."""
        await asyncio.to_thread(self.clear)
