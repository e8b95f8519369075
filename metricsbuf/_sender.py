"""The sender: who sends a batch, retries it, and settles its points in the ledger.

``max_in_flight`` long-lived slots each take a batch from the accumulator when one is due and
send it through the client (one ``batch_put_metrics`` call per attempt):

- every request, first sends and resends alike, first takes its turn from the logger's
  adaptive rate (_rate.py): unlimited until the service throttles, then a common ramp, the
  logger's share solved from when the ramp meets the limit, and small steps around it, shared
  by all the slots, and with ``rate_scope="host"`` (the default) by every logger of the host
  that sends to the same endpoint (_host_rate.py). That rate is experimental and OFF by default
  (the ``adaptive_rate`` option): it cannot tell random throttling, or a limit shared with
  clients that do not back off, from its own share (benchmarks/SCALE.md); while it is off the
  rate stays unlimited and only the backoff below paces throttled batches;
- a throttled request (``ThrottlingException`` and kin) keeps its slot and goes again at the
  rate's next turn; throttled sends do not count against ``max_attempts`` (throttling says
  "not now", not "this point is bad"), only ``delivery_timeout`` bounds them;
- any other transient whole-request failure (5xx, connection errors, timeouts; see
  _retry_policy.py) is retried with exponential backoff and counts against ``max_attempts``;
  the batch keeps its slot while it backs off, so a struggling service sees at most
  ``max_in_flight`` batches;
- ``INTERNAL_ERROR`` / ``CONFLICT_ERROR`` at an index: only those points go back to the
  accumulator's resend lane and ride in a later batch: at once while the retry quota lasts
  (a few failed indices among stored ones), after the exponential backoff when most fail;
- everything else is final: delivered or failed, recorded in the ledger.

It talks only to the accumulator, the ledger and the client. Retry policy lives here (and in
_retry_policy.py); nothing here knows about the spool, except that the ledger may keep points
it gives up on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone

import anyio
from tenacity import RetryCallState
from tenacity.wait import wait_exponential_jitter

from ._accumulator import Accumulator, Batch
from ._buffer import LOGGED_AT, NAME, STEP, TIMESTAMP, VALUE, Point
from ._client import MetricsClient
from ._host_rate import HostSharedRate, open_host_rate
from ._ledger import Ledger, by_attempts
from ._models import DELIVERY_TIMEOUT
from ._options import LoggerOptions
from ._pacing import StepPacer
from ._rate import AdaptiveRate
from ._reporting import log
from ._retry_policy import FINAL_INDEX_CODES, RETRYABLE_INDEX_CODES, RetryQuota, classify_exception

_UTC = timezone.utc
# Once this many requests, and at least a quarter of all so far, were throttled, the logger warns
# (once): nothing fails, so the user would not otherwise learn that the limit is reached.
THROTTLING_WARNING_AFTER = 20


class _Resend(Exception):
    """Raised inside a tenacity attempt: the whole request failed (throttling, 5xx, connection)."""

    def __init__(self, code: str, message: str, throttled: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.throttled = throttled


class Sender:
    """The in-flight slots of one logger, and what happens to each request they send."""

    def __init__(
        self, options: LoggerOptions, accumulator: Accumulator, ledger: Ledger, pacer: StepPacer
    ) -> None:
        self.client: MetricsClient | None = options.client  # the logger's own one is set at start
        self._accumulator = accumulator
        self._ledger = ledger
        self._pacer = pacer
        self._max_attempts = options.max_attempts
        self._max_in_flight = options.max_in_flight
        self._delivery_timeout = options.delivery_timeout
        # tenacity's exponential backoff with jitter decides the delay of every resend that waits.
        self._backoff = wait_exponential_jitter(
            multiplier=options.backoff_initial, max=options.backoff_max, jitter=options.backoff_initial
        )
        # Every request takes its turn here (see _rate.py); with rate_scope "host", once the
        # client is known, the rate the host's loggers share (`share_rate_on_host`).
        self.rate: AdaptiveRate | HostSharedRate = AdaptiveRate()
        self._rate_scope = options.rate_scope
        # Whether throttles set the rate (the ``adaptive_rate`` option). Off by default: it
        # cannot tell random throttling, or a limit shared with clients that do not back off,
        # from its own share of a limit (benchmarks/SCALE.md); then it collapses or yields.
        self.adaptive_rate = options.adaptive_rate
        self._warned_throttling = False
        self._quota = RetryQuota()  # per-index resends without backoff, while it lasts
        # A resend without backoff waits at most this long for a batch to ride in.
        accumulator.lane_hold = options.backoff_initial

    def share_rate_on_host(self) -> HostSharedRate | None:
        """With the adaptive rate on and rate_scope "host", switches to the rate this host's
        loggers for the client's endpoint share (_host_rate.py), and returns it for the caller
        to close; None (a rate of this logger's own) otherwise. Called once the client is set,
        before anything is sent."""
        if not (self.adaptive_rate and self._rate_scope == "host"):
            return None
        shared = open_host_rate(self.client)
        if shared is not None:
            self.rate = shared
        return shared

    def start(self, task_group: anyio.abc.TaskGroup, no_more_points: Callable[[], bool]) -> None:
        """Starts the ``max_in_flight`` slots in ``task_group``; they return once closing drains them.

        ``no_more_points()`` tells whether the logger is closing and nothing can arrive any more.
        """
        # One idle slot at a time waits for the next batch; the others queue behind it on this
        # lock, so a wake-up does not stir every idle slot.
        turn = anyio.Lock(fast_acquire=True)
        for _ in range(self._max_in_flight):
            task_group.start_soon(self._run_slot, turn, no_more_points)

    async def _run_slot(self, turn: anyio.Lock, no_more_points: Callable[[], bool]) -> None:
        """One in-flight slot: takes a batch when one is due, sends it (retries included), repeats.

        A slot takes its batch only once it is free, so while every slot is busy the next
        batch keeps filling. Long-lived slots rather than a task per batch: spawning one
        cost more CPU than the rest of the logger's own work per request.
        """
        accumulator = self._accumulator
        while True:
            async with turn:
                await accumulator.wait_until_batch_due(no_more_points)
                if not accumulator.spooled:  # with a spool, an expired point stays on disk anyway
                    self._expire_queued()
                if self.rate.rate is not None and (accumulator.queue or accumulator.lane):
                    # Throttled before: wait for the adaptive rate's turn (holding the turn, so
                    # the other slots queue behind and the next batch keeps filling meanwhile).
                    await self.rate.wait_turn()
                batch = accumulator.take_batch(time.time())
                if batch is not None:
                    # Still holding the turn, wait until no other heavy step (a send being
                    # built or signed, a response being parsed) runs in this loop iteration:
                    # several of them in one iteration would stall the training loop for
                    # milliseconds. With a caller's client only this step is paced.
                    await self._pacer.turn()
            if batch is None:
                if accumulator.empty and no_more_points():
                    accumulator.wake()  # so the next slot in line sees it too
                    return  # closing, nothing to send, nothing in flight that could need a resend
                continue
            await self._deliver(batch)

    def _expire_queued(self) -> None:
        expired = self._accumulator.expire_queued(time.time())
        if expired:
            self._ledger.record_failed(expired, DELIVERY_TIMEOUT, self._timeout_message(), 0)

    def _timeout_message(self) -> str:
        return f"not delivered within delivery_timeout ({self._delivery_timeout:g} s) of being logged"

    async def _deliver(self, batch: Batch) -> None:
        """Sends one batch; after a whole-request failure, retries it under tenacity.

        Never raises (except cancellation): a failure of any kind ends in the ledger, so the
        slots survive. Not finished when cancelled at the close deadline: the batch then stays
        in flight for the close report.
        """
        try:
            try:
                # The first attempt runs outside tenacity: most batches need no other, and
                # building a retry loop for each one would cost more than the rest of the
                # logger's work per request.
                await self._send(batch)
            except _Resend as first_failure:
                await self._retry_request(batch, first_failure)
        except _Resend as exhausted:
            self._give_up(batch, exhausted)
        except Exception as exc:  # a bug here must not take the flusher down
            log.exception("metricsbuf: unexpected error while delivering a batch")
            if not batch.abandoned:
                self._ledger.record_failed(
                    batch.points, type(exc).__name__, f"unexpected error: {exc!r}", batch.attempts
                )
        self._accumulator.finished(batch)
        self._ledger.notify_progress()

    async def _retry_request(self, batch: Batch, failure: _Resend) -> None:
        """Resends the whole batch until it is answered; raises _Resend when the budget is spent.

        A throttled send waits for the adaptive rate's next turn and does not count against
        ``max_attempts``; any other failure waits out the exponential backoff (never past the
        batch's last delivery deadline) and counts. ``_send`` gives up on points past their
        ``delivery_timeout`` before each send.
        """
        batch.last_failure = failure
        tries = 0 if failure.throttled else 1  # counted (not throttled) sends of this batch
        throttles = 0  # throttled sends in a row
        while True:
            if failure.throttled:
                # Backoff on top of the rate's turn: the request rate stays bounded even while
                # the adaptive rate is off or still above the limit.
                throttles += 1
                await anyio.sleep(self._backoff_within_deadline(batch, throttles))
                await self.rate.wait_turn()
            else:
                # A point that was resent from the lane may reach its budget before the others.
                exhausted = [a >= self._max_attempts for a in batch.attempts]
                if all(exhausted) or tries >= self._max_attempts:
                    raise failure
                if any(exhausted):
                    self._give_up(batch.split_off(exhausted), failure)
                await anyio.sleep(self._backoff_within_deadline(batch, tries))
                if self.rate.rate is not None:
                    await self.rate.wait_turn()
            try:
                await self._send(batch)
                return
            except _Resend as again:
                if not again.throttled:
                    tries += 1
                    throttles = 0
                batch.last_failure = failure = again

    def _give_up(self, batch: Batch, failure: _Resend) -> None:
        """The batch's whole-request failures outlasted its budget."""
        for attempts, points in by_attempts(batch.points, batch.attempts):
            self._ledger.give_up(
                points, failure.code, f"gave up after {attempts} attempts: {failure.message}", attempts
            )

    def _backoff_within_deadline(self, batch: Batch, tries: int) -> float:
        """Exponential backoff with jitter, never sleeping past the batch's last delivery deadline."""
        delay = self._resend_delay(tries)
        if batch.points:
            last_deadline = max(p[LOGGED_AT] for p in batch.points) + self._delivery_timeout
            delay = min(delay, max(0.0, last_deadline - time.time()))
        return delay

    def _resend_delay(self, attempts: int) -> float:
        """tenacity's backoff after ``attempts`` sends, for points going to the resend lane."""
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempts
        return float(self._backoff(state))

    async def _send(self, batch: Batch) -> None:
        """One attempt. Raises _Resend if the whole request must be sent again."""
        deadline = time.time() - self._delivery_timeout
        if any(p[LOGGED_AT] < deadline for p in batch.points):
            expired = batch.split_off([p[LOGGED_AT] < deadline for p in batch.points])
            for point, attempts in zip(expired.points, expired.attempts, strict=True):
                self._ledger.give_up([point], DELIVERY_TIMEOUT, self._timeout_message(), attempts)
        points = batch.points
        if not points:
            return
        # Timestamps go as aware UTC datetimes, not epoch floats: botocore turns a float into a
        # datetime through dateutil's local time zone for every point, which costs more than
        # the rest of serializing the request. The bytes on the wire are the same
        # (tests/test_batching.py checks it with botocore's own serializer).
        fromtimestamp = datetime.fromtimestamp
        metric_data = [
            {"MetricName": p[NAME], "Timestamp": fromtimestamp(p[TIMESTAMP], _UTC), "Value": p[VALUE]}
            if p[STEP] is None
            else {
                "MetricName": p[NAME],
                "Timestamp": fromtimestamp(p[TIMESTAMP], _UTC),
                "Value": p[VALUE],
                "Step": p[STEP],
            }
            for p in points
        ]
        ledger = self._ledger
        ledger.retried += len(points) if batch.sent else sum(1 for a in batch.attempts if a)
        batch.sent = True
        batch.attempts = [a + 1 for a in batch.attempts]
        ledger.requests += 1  # counted once the request is built, right before it is sent
        batch.maybe_stored = True
        sent_at = time.monotonic()  # the adaptive rate's clock
        try:
            response = await self.client.batch_put_metrics(  # type: ignore[union-attr]
                TrialComponentName=batch.trial_component, MetricData=metric_data
            )
        except anyio.get_cancelled_exc_class():
            raise  # still maybe_stored: the close report says the outcome is unknown
        except Exception as exc:
            if batch.abandoned:
                return  # see below
            failure = classify_exception(exc)
            batch.maybe_stored = failure.ambiguous
            if failure.throttled:
                ledger.throttled += 1
                if not self._warned_throttling:
                    self._warn_if_throttled_heavily()
                if self.adaptive_rate:
                    self.rate.throttled(sent_at)
                # Not an attempt of these points: only delivery_timeout bounds throttling.
                batch.attempts = [a - 1 for a in batch.attempts]
            if failure.retryable:
                raise _Resend(failure.code, failure.message, failure.throttled) from exc
            ledger.record_failed(points, failure.code, failure.message, batch.attempts)
            batch.points = []
            return
        if batch.abandoned:
            # The answer came after the close report (or a restarted flusher) took these points
            # over, e.g. from a client whose thread outlived the cancellation: an outcome, once
            # reported, is final.
            return
        batch.maybe_stored = False
        self.rate.succeeded(sent_at)
        self._apply_response(batch, response)

    def _warn_if_throttled_heavily(self) -> None:
        ledger = self._ledger
        if ledger.throttled < THROTTLING_WARNING_AFTER or 4 * ledger.throttled < ledger.requests:
            return
        self._warned_throttling = True
        log.warning(
            "metricsbuf: %d of %d requests so far were throttled (ThrottlingException): the "
            "account's BatchPutMetrics limit is reached. Throttled points are resent and nothing "
            "is lost, but the requests count against a limit your other jobs share: log fewer "
            "metrics or from fewer ranks, or, if every writer on the account uses metricsbuf, try "
            "adaptive_rate=True (README: Many writers against one account's limit)",
            ledger.throttled,
            ledger.requests,
        )

    def _apply_response(self, batch: Batch, response: object) -> None:
        """Settles each point of an answered request: delivered, failed, or into the resend lane."""
        points = batch.points
        errors = response.get("Errors") if isinstance(response, dict) else None
        codes: dict[int, str] = {}
        for error in errors or ():
            index = error.get("MetricIndex") if isinstance(error, dict) else None
            if isinstance(index, int) and 0 <= index < len(points):
                codes[index] = str(error.get("Code") or "UNKNOWN_ERROR")
            else:
                self._ledger.reporter.warnings.warn(
                    "bad-error-entry",
                    "metricsbuf: ignoring a malformed Errors entry in a response: %r",
                    error,
                )
        batch.points = []
        ledger = self._ledger
        if not codes:
            ledger.record_delivered(points)
            self._quota.answered(len(points), 0)
            return
        ledger.record_delivered([p for i, p in enumerate(points) if i not in codes])
        resend: list[tuple[int, int, Point]] = []
        for index, code in sorted(codes.items()):
            point, attempts = points[index], batch.attempts[index]
            if code in RETRYABLE_INDEX_CODES:
                if attempts < self._max_attempts:
                    resend.append((batch.positions[index], attempts, point))
                else:
                    ledger.give_up(
                        [point],
                        code,
                        f"gave up after {attempts} attempts: the service answered {code}",
                        attempts,
                    )
            else:  # FINAL_INDEX_CODES, and any code this version does not know: never resent blindly
                known = "" if code in FINAL_INDEX_CODES else " (unknown code: not retried)"
                ledger.record_failed(
                    [point], code, f"the service rejected the point with {code}{known}", attempts
                )
        at_once = self._quota.answered(len(points) - len(codes), len(resend))
        if resend:
            # Only these indices go again, together: in the next batch while the retry quota
            # lasts, else after tenacity's backoff for their attempt count.
            delay = 0.0 if at_once else self._resend_delay(max(a for _, a, _ in resend))
            self._accumulator.schedule_resend(resend, delay)
