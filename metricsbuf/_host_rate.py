"""One adaptive rate for all the loggers of a host that send to one endpoint (``rate_scope="host"``).

The ranks of a job on one host are several writers of one account's limit that can reach each
other, so with ``adaptive_rate=True`` they share one `AdaptiveRate` instead of learning the limit
apart: one pacing of all their requests, one solved share, one steady state. Measured in
benchmarks/SCALE.md against the same loggers each with a rate of its own: separate rates learn
the same share K times over, each with its own error, and when one logger finishes the others
take minutes of small steps to find the capacity it freed; a shared rate hands the freed turns to
whoever sends next.

How: the rate's state lives in a small file in the temporary directory, named after the user,
the host, the endpoint and the region: the loggers of one user that see the same temporary
directory (one machine, or one container) and send to the same service share it.
Every call locks the file (``flock``), loads the state into this logger's `AdaptiveRate`, runs
the usual logic and writes the state back: about 15 us, two or three times per request, and only
with the adaptive rate on. Processes of one host read the same ``CLOCK_MONOTONIC``, so the times
kept in the file mean the same in each. Each logger keeps a member entry there, stamped every
``STAMP_EVERY`` seconds while it sends; the number stamped in the last ``ACTIVE_WINDOW`` s is how many
loggers the shared ramp starts for (``AdaptiveRate.senders``), so that a host ramps as its loggers
would have ramped apart, in step with other hosts' loggers. A state no logger touched for
``STALE_AFTER`` seconds, or one from before a reboot, is started afresh: it describes another
job's traffic.

Where the file cannot be used (no ``fcntl`` on Windows, a read-only or foreign temporary
directory), `open_host_rate` returns None and the logger keeps a rate of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import random
import socket
import stat
import struct
import tempfile
import time
from collections.abc import Callable, Iterator

from ._rate import AdaptiveRate, RateTurns

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: every logger keeps a rate of its own
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("metricsbuf")

STALE_AFTER = 60.0  # seconds without any logger touching the state: start afresh
ACTIVE_WINDOW = 2.0  # seconds: a member stamped this recently counts as sending
MAX_MEMBERS = 64  # member entries kept; beyond that the oldest entry is reused
STAMP_EVERY = 0.5  # seconds: how often a logger that sends stamps its member entry
# Seconds a call waits for the lock, which is held for microseconds unless its holder was
# descheduled or stopped (SIGSTOP, a debugger) inside: then the call goes on without it, and so
# do this logger's calls for the next LOCK_RETRY_AFTER seconds (see `_shared`), so that a holder
# stopped for good costs this logger's event loop at most 2% of its time.
LOCK_PATIENCE = 0.02
LOCK_RETRY_AFTER = 1.0
STATE_DIRECTORY: str | None = None  # where the state files go; None: the temporary directory

_MAGIC = b"mbrate01"  # a new layout gets a new magic (and the old state is started afresh)
_PHASES = ("unlimited", "ramp", "steady")
# The AdaptiveRate state kept in the file (`_load`, `_dump`): the magic; rate, share (None as
# NaN), next send, last cut, ramp start, ramp's starting rate, base rate, and when the state was
# last touched; the phase, successes since the last cut, cuts, throttles seen.
_STATE = struct.Struct("<8s8d4q")
_MEMBER = struct.Struct("<Qd")  # a member's id, when it was last stamped
_MEMBERS = struct.Struct("<" + "Qd" * MAX_MEMBERS)  # the member entries, after the state


def state_path(endpoint_url: str, region_name: str | None, directory: str | None = None) -> str:
    """The state file of the loggers of this user that send to ``endpoint_url`` in ``region_name``.

    The host's name is part of it: a temporary directory shared by several hosts (on a network
    file system) must not share a state whose times are one host's monotonic clock.
    """
    key = f"{socket.gethostname()}|{endpoint_url}|{region_name}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    directory = directory or STATE_DIRECTORY or tempfile.gettempdir()
    return os.path.join(directory, f"metricsbuf-rate-{os.getuid()}-{digest}")


def open_host_rate(client: object) -> HostSharedRate | None:
    """The host's shared rate for ``client``'s endpoint and region; None where it cannot be shared.

    None for a client without ``meta.endpoint_url`` (a test double: nothing says which service
    it reaches) and where the state file cannot be opened (logged once per logger).
    """
    meta = getattr(client, "meta", None)
    endpoint_url = getattr(meta, "endpoint_url", None)
    region_name = getattr(meta, "region_name", None)
    if fcntl is None or not isinstance(endpoint_url, str):
        return None
    path = state_path(endpoint_url, region_name if isinstance(region_name, str) else None)
    try:
        return HostSharedRate(path)
    except OSError as exc:
        log.warning(
            "metricsbuf: the adaptive rate cannot be shared with this host's other loggers "
            "(%s: %s); this logger keeps a rate of its own",
            path,
            exc,
        )
        return None


class HostSharedRate(RateTurns):
    """An `AdaptiveRate` whose state is shared through a file by the loggers of one host.

    The same calls as `AdaptiveRate` (``delay``, ``wait_turn``, ``succeeded``, ``throttled``,
    ``rate``); ``cuts`` counts the cuts made by this logger's answers.
    """

    def __init__(
        self,
        path: str,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.path = path
        self._clock = clock
        self._logic = AdaptiveRate(clock=clock, rng=rng)
        # From os.urandom: unique among the host's loggers whatever seeded `random` (tests do).
        self._member = int.from_bytes(os.urandom(8), "little") | 1  # 0 marks an unused entry
        self._stamped = -math.inf  # when this logger last stamped its member entry
        self._fd = -1
        self._pid = -1
        self.cuts = 0
        self.unshared_calls = 0  # calls that went on without the lock (LOCK_PATIENCE)
        self._unshared_until = -math.inf  # (time.monotonic) no lock tried before then
        self._open()

    def _open(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.path, flags, 0o600)
        info = os.fstat(fd)
        if info.st_uid != os.getuid() or not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise PermissionError(f"{self.path} is not a regular file of this user")
        self._fd, self._pid = fd, os.getpid()

    def close(self) -> None:
        """Closes the state file (the state stays for the host's other loggers)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- the AdaptiveRate calls, each on the shared state ------------------------------------

    @property
    def rate(self) -> float | None:
        with self._shared() as logic:
            return logic.rate

    @property
    def share(self) -> float | None:
        with self._shared() as logic:
            return logic.share

    @property
    def senders(self) -> int:
        """The loggers of the host stamped in the last ``ACTIVE_WINDOW`` seconds (at least 1)."""
        with self._shared():
            return self._count_senders(self._clock())

    def delay(self) -> float:
        with self._shared() as logic:
            return logic.delay()

    def succeeded(self, sent_at: float) -> None:
        with self._shared() as logic:
            logic.succeeded(sent_at)

    def throttled(self, sent_at: float) -> None:
        with self._shared() as logic:
            if logic.phase == "unlimited":  # this throttle starts the ramp: for how many loggers?
                logic.senders = self._count_senders(self._clock())
            cuts = logic.cuts
            logic.throttled(sent_at)
            self.cuts += logic.cuts - cuts

    # -- the file ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _shared(self) -> Iterator[AdaptiveRate]:
        """The shared state, loaded into this logger's AdaptiveRate under the file's lock, and
        written back after the block. About 15 us; two or three times per request."""
        if self._fd < 0:
            # Closed with its logger; an answer may still arrive (from a client thread that
            # outlived a cancelled close): go on from the last view of the state.
            yield self._logic
            return
        if os.getpid() != self._pid:
            # A forked child shares the parent's open file, and with it the parent's flock:
            # the lock would not keep them apart. (Closing it here leaves the parent's alone.)
            os.close(self._fd)
            self._open()
            self._stamped = -math.inf
        if not self._lock():
            # Another process holds the lock far longer than it ever needs: it was stopped
            # inside. Waiting would stall this event loop (the training loop, in asyncio code)
            # as long as it stays stopped; go on with this logger's last view of the state,
            # written nowhere.
            self.unshared_calls += 1
            yield self._logic
            return
        try:
            now = self._clock()
            self._load(os.pread(self._fd, _STATE.size, 0), now)
            if now - self._stamped >= STAMP_EVERY:
                self._stamp(now)
            yield self._logic
            os.pwrite(self._fd, self._dump(now), 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _lock(self) -> bool:
        """Takes the file's lock, waiting at most LOCK_PATIENCE; whether it got it."""
        if time.monotonic() < self._unshared_until:
            return False
        deadline = None
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + LOCK_PATIENCE
                elif now >= deadline:
                    self._unshared_until = now + LOCK_RETRY_AFTER
                    return False
                time.sleep(0.0001)

    def _load(self, data: bytes, now: float) -> None:
        logic = self._logic
        if len(data) == _STATE.size and data[:8] == _MAGIC:
            (_, rate, share, next_send, last_cut, ramp_start, ramp_from, base, touched, phase,
             successes, cuts, throttles_seen) = _STATE.unpack(data)  # fmt: skip
            # Untouched for long, or touched "in the future" (before a reboot restarted the
            # monotonic clock): another job's state, so start afresh.
            if now - STALE_AFTER <= touched <= now + 1.0 and 0 <= phase < len(_PHASES):
                logic.rate = None if math.isnan(rate) else rate
                logic.share = None if math.isnan(share) else share
                logic.phase = _PHASES[phase]
                logic._next_send, logic._last_cut = next_send, last_cut
                logic._ramp_start, logic._ramp_from, logic._base = ramp_start, ramp_from, base
                logic._successes, logic.cuts, logic.throttles_seen = successes, cuts, throttles_seen
                return
        logic.reset()  # afresh: the member entries go too
        os.ftruncate(self._fd, 0)
        self._stamped = -math.inf

    def _dump(self, now: float) -> bytes:
        logic = self._logic
        return _STATE.pack(
            _MAGIC,
            math.nan if logic.rate is None else logic.rate,
            math.nan if logic.share is None else logic.share,
            logic._next_send,
            logic._last_cut,
            logic._ramp_start,
            logic._ramp_from,
            logic._base,
            now,
            _PHASES.index(logic.phase),
            logic._successes,
            logic.cuts,
            logic.throttles_seen,
        )

    def _members(self) -> list[tuple[int, float]]:
        # The file grows as entries are first written: what is not there yet is free (zeros).
        data = os.pread(self._fd, _MEMBERS.size, _STATE.size).ljust(_MEMBERS.size, b"\0")
        flat = _MEMBERS.unpack(data)
        return list(zip(flat[0::2], flat[1::2], strict=True))

    def _stamp(self, now: float) -> None:
        """Stamps this logger's member entry (or a free one, or the longest unstamped)."""
        members = self._members()
        mine = next((i for i, (member, _) in enumerate(members) if member == self._member), None)
        if mine is None:
            mine = min(range(MAX_MEMBERS), key=lambda i: (members[i][0] != 0, members[i][1]))
        os.pwrite(self._fd, _MEMBER.pack(self._member, now), _STATE.size + mine * _MEMBER.size)
        self._stamped = now

    def _count_senders(self, now: float) -> int:
        if self._fd < 0:
            return 1
        return max(1, sum(1 for member, at in self._members() if member and at >= now - ACTIVE_WINDOW))
