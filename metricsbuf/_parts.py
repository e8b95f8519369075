"""The parts of one logger's pipeline, built from its options and wired to each other.

See the diagram in _logger.py: the intake takes points in, the accumulator holds them until a
batch is due, the sender's slots send batches, the ledger records every outcome, and with a
spool the spool coordinator stands between the intake and the accumulator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._accumulator import Accumulator
from ._buffer import PointQueue
from ._intake import Intake
from ._ledger import Ledger
from ._options import LoggerOptions
from ._pacing import StepPacer
from ._sender import Sender
from ._spooling import SpoolCoordinator


@dataclass(frozen=True)
class Parts:
    ledger: Ledger
    accumulator: Accumulator
    pacer: StepPacer  # one heavy step of a send per event-loop iteration
    sender: Sender
    spool: SpoolCoordinator | None
    intake: Intake

    @classmethod
    def build(
        cls, options: LoggerOptions, trial_component: str, check_accepting: Callable[[], None]
    ) -> Parts:
        """``trial_component``: "" until found at start.

        ``check_accepting`` raises if the logger takes no more points.
        """
        ledger = Ledger(trial_component, options.on_failure)
        accumulator = Accumulator(
            PointQueue(options.max_batch_size, options.flush_interval),
            delivery_timeout=options.delivery_timeout,
            trial_component=trial_component,
            spooled=options.spool_dir is not None,
        )
        pacer = StepPacer()
        sender = Sender(options, accumulator, ledger, pacer)
        spool = None
        if options.spool_dir is not None:
            spool = SpoolCoordinator(
                options.spool_dir,
                trial_component=trial_component,
                options=options,
                ledger=ledger,
                accumulator=accumulator,
            )
            ledger.listener = spool
        intake = Intake(options, ledger, accumulator, spool, check_accepting)
        return cls(ledger, accumulator, pacer, sender, spool, intake)

    def name_trial_component(self, name: str) -> None:
        """Tells every part the trial component found at start (for requests and messages)."""
        for part in (self.ledger, self.ledger.reporter, self.accumulator, self.spool):
            if part is not None:
                part.trial_component = name
