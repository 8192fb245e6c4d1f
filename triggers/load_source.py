"""The daemon's ``load`` source: a load sample (:mod:`sp.schedules.load_samples`) every
:data:`~sp.schedules.load_samples.SAMPLE_EVERY_MS`, built for every trigger file unless it says
``load_samples: false``."""

from __future__ import annotations

import threading

from sp.agents.trigger_file import TriggerFile
from sp.ledger.interface import Ledger
from sp.schedules.load_samples import SAMPLE_EVERY_MS, measure, record
from sp.triggers.sources import Source, SourceContext


class LoadSource:
    """Records a load sample every ``every_ms`` (the first one a full interval after start,
    so that the CPU percent covers a whole interval)."""

    def __init__(self, every_ms: int = SAMPLE_EVERY_MS) -> None:
        self.name = "load"
        self.every_ms = every_ms
        self.recorded = 0

    def sample(self, ctx: SourceContext, store: Ledger | None = None,
               reading: tuple[float, float] | None = None) -> None:
        """Record one sample now (``reading`` injected by tests)."""
        load1, cpu = reading if reading is not None else measure()
        store = store or ctx.store()
        with store.transaction() as tx:
            record(tx, ctx.clock.now_ms(), load1, cpu)
        self.recorded += 1

    def run(self, ctx: SourceContext, stop: threading.Event) -> None:
        measure()  # prime the CPU counter
        failing = False
        while not stop.wait(self.every_ms / 1000):
            try:
                self.sample(ctx)
            except Exception as e:  # a busy ledger must not end the sampling
                if not failing:
                    ctx.log(f"load: cannot record a sample: {e}")
                failing = True
            else:
                failing = False


def build(doc: TriggerFile, ctx: SourceContext) -> list[Source]:
    if not doc.load_samples:
        return []
    return [LoadSource()]
