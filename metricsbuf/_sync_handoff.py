"""The hand-off between the threads that call SyncMetricsLogger.log() and its loop thread.

A point validated in the caller's thread goes into ``points``, a deque that any thread appends
to and only the loop thread takes from. ``max_buffered`` applies to the async logger's held
points and the hand-off together, exactly, without the caller taking a lock in the usual case:

- **Tokens.** ``tokens`` is a deque of room: a caller takes one (``popleft``, atomic in
  CPython) before it appends a point; the loop thread tops it up (``top_up``). Every token
  was *granted* under ``lock`` while ``held + (granted - drained) <= max_buffered``, where
  ``drained`` counts the points the loop thread has taken. A token in the pool, in a caller's
  hands, or turned into a point in ``points`` all count in ``granted - drained``, and callers
  only move one from the first state to the next (a ``popleft``, then an ``append``), so the
  bound holds whatever the threads interleave. ``held`` grows only under ``lock`` (a drain) or
  while the fast path is off (``slow``), so a caller reading it under ``lock`` is conservative.
- **The locked path.** With no token to take (an empty pool: the first point, a full buffer,
  the fast path off, closing, a forked child) or for calls that are not the usual one, a caller
  takes ``lock`` (``put``): it takes tokens left in the pool, mints what it still needs while
  there is room (and tops the pool up), and otherwise tells the caller what to do: wait for the
  loop thread (``SLOW``: it revoked the pool first, so the loop thread's count is exact once the
  tokens still in callers' hands have landed: ``in_window``), raise, or drop.
- **Revocation.** ``revoke`` (under ``lock``) takes every token back: the fast path is off until
  the next top-up, which happens only while the logger is open and no slow call is in progress.
- **Wake-ups.** A token is ``None``, or ``True`` to ask the caller that takes it to wake the
  loop thread: the fast path checks nothing else. The loop thread marks the token that the
  point it wants to be woken for will take (``mark_wake``): the pool's first token while it is
  idle, a batch's worth ahead while a sender is short of points; a mark placed while callers
  pop may land a token or two off, and a stale one costs one needless wake-up. The locked path
  wakes it when the hand-off reaches ``wake_at`` (1 while idle). After a drain the loop thread
  looks again, for points (or tokens in callers' hands, ``in_window``) that came meanwhile, so
  none is left without a wake-up or a timer.
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from itertools import repeat
from typing import Any

from ._buffer import Point

NEVER = 1 << 62
# The most tokens the pool holds at once (8 bytes each): a caller that finds it empty takes
# the lock once and tops it up again.
POOL_SIZE = 4096


class Admission(enum.Enum):
    """What ``HandOff.put`` decided for a call's points."""

    QUEUED = "queued"  # in the hand-off (with drop_newest, what did not fit was counted as dropped)
    WAKE = "wake"  # queued, and the loop thread must be woken
    CLOSED = "closed"  # the hand-off takes no points: not open
    SLOW = "slow"  # the loop thread decides (waits for room, evicts, spills); the fast path is off
    FULL = "full"  # on_full="raise" with no room: nothing was queued


class HandOff:
    """Points on their way from the callers' threads to the loop thread, and the room they may take."""

    def __init__(self, max_buffered: int, on_full: str, spooled: bool, ledger: Any) -> None:
        self.lock = threading.Lock()
        self.points: deque[Point] = deque()  # appended by any thread, taken by the loop thread only
        self.tokens: deque[bool | None] = deque()  # room for the fast path; True: wake the loop
        self.granted = 0  # under lock: tokens granted (minted), minus those revoked
        self.drained = 0  # under lock: points taken by the loop thread
        self.rejected: list[tuple[Any, Any]] = []  # under lock: non-finite values skipped, not yet recorded
        self.dropped = 0  # under lock: new points dropped by "drop_newest", not yet recorded
        self.open = False  # takes points: running, not closing, not a forked copy
        self.slow = 0  # under lock: calls the loop thread is admitting; the fast path is off
        self.accepting: Any = lambda: True  # whether the async logger still takes points
        self.wake_at = 1
        self._ledger = ledger
        self._max_buffered = max_buffered
        self._on_full = on_full
        self._spooled = spooled

    # -- callers' threads, under lock -----------------------------------------------------------

    def put(self, points: list[Point], prepaid: int = 0) -> Admission:
        """The locked path: queues ``points`` if there is room (``prepaid``: tokens taken for them)."""
        with self.lock:
            if not self.open:
                self.granted -= prepaid  # the tokens are given up; close or fork revoked the rest
                return Admission.CLOSED
            if self.slow or not self.accepting():
                return self._go_slow(prepaid)
            count = len(points)
            need = count - prepaid
            take = self.tokens.popleft
            try:
                while need:
                    take()
                    need -= 1
            except IndexError:
                pass
            used = self._max_buffered_used()
            if used + need <= self._max_buffered:
                self.granted += need
                self.points.extend(points)
                self.top_up()
                return self._appended()
            # Not enough room: take every token back, so that ``used`` is exact, then decide.
            self.revoke()
            self.granted -= count - need  # the tokens this call holds are given up too
            used = self._max_buffered_used()
            if used + count <= self._max_buffered:  # the pool had reserved the room
                self.granted += count
                self.points.extend(points)
                return self._appended()
            if self._spooled or self._on_full in ("block", "drop_oldest"):
                return self._go_slow(0)
            if self._on_full == "raise":
                return Admission.FULL
            room = max(0, self._max_buffered - used)  # drop_newest: what fits is queued, the rest dropped
            self.granted += room
            self.points.extend(points[:room])
            self.dropped += count - room
            return self._wake_if(max(1, len(self.points)))

    def held_total(self) -> int:
        """Points held by the async logger and in the hand-off (for messages: read without the lock)."""
        return int(self._ledger.held) + len(self.points)

    def reject(self, rejected: list[tuple[Any, Any]]) -> Admission:
        """Non-finite values skipped under non_finite="drop", to be recorded on the loop thread."""
        with self.lock:
            if not self.open:
                return Admission.CLOSED
            self.rejected.extend(rejected)
            return self._wake_if(1)

    def slow_done(self) -> None:
        """A slow call was decided (any thread): the fast path may come back at the next top-up."""
        with self.lock:
            self.slow -= 1

    def _go_slow(self, prepaid: int) -> Admission:
        self.slow += 1
        self.revoke()
        self.granted -= prepaid
        return Admission.SLOW

    def _appended(self) -> Admission:
        return self._wake_if(len(self.points))

    def _wake_if(self, length: int) -> Admission:
        if length < self.wake_at:
            return Admission.QUEUED
        self.wake_at = NEVER  # until the drain it asks for
        return Admission.WAKE

    # -- under lock, any thread -----------------------------------------------------------------

    def _max_buffered_used(self) -> int:
        """Room taken: held points, and every token granted and not yet drained (pool, hands, queued)."""
        return int(self._ledger.held) + self.granted - self.drained

    def top_up(self) -> None:
        """Fills the pool up to POOL_SIZE while there is room, the logger is open and no slow call runs."""
        if not self.open or self.slow or not self.accepting():
            return
        tokens = self.tokens
        add = min(self._max_buffered - self._max_buffered_used(), POOL_SIZE - len(tokens))
        if add > 0:
            self.granted += add
            tokens.extend(repeat(None, add))

    def revoke(self) -> None:
        """Takes back every token in the pool (one atomic popleft each: a caller may take one meanwhile)."""
        take = self.tokens.popleft
        revoked = 0
        try:
            while True:
                take()
                revoked += 1
        except IndexError:
            pass
        self.granted -= revoked

    def in_window(self) -> int:
        """Tokens taken by callers whose points have not landed in ``points`` yet (under lock).

        Exact after ``revoke``; otherwise an upper bound as of the call: ``points`` is read
        before ``tokens``, and callers only move tokens from the pool to their hands to points.
        """
        landed = len(self.points)
        return self.granted - self.drained - landed - len(self.tokens)

    def mark_wake(self, index: int) -> None:
        """The caller taking the pool's token at ``index`` (from now) wakes the loop thread."""
        try:
            self.tokens[max(0, index)] = True
        except IndexError:  # a shorter pool: the locked path (wake_at) or the timer covers it
            pass

    # -- the loop thread, under lock --------------------------------------------------------------

    def take_all(self) -> tuple[list[Point], list[tuple[Any, Any]], int]:
        """Takes the points, rejections and drops waiting (only the loop thread takes points)."""
        points = self.points
        batch = list(map(deque.popleft, repeat(points, len(points))))
        self.drained += len(batch)
        rejected, self.rejected = self.rejected, []
        dropped, self.dropped = self.dropped, 0
        return batch, rejected, dropped
