"""A rate over recent observations: decaying sums of an amount and the seconds it took,
so one odd observation moves it only so far. The scheduler measures a prefill node's
prompt tokens per second with it, the worker its seconds per batch row."""

from __future__ import annotations


class DecayingRate:
    def __init__(self, decay: float) -> None:
        self.decay, self.amount, self.seconds = decay, 0.0, 0.0

    def observe(self, amount: float, seconds: float) -> None:
        if amount and seconds > 0:
            self.amount = self.decay * self.amount + amount
            self.seconds = self.decay * self.seconds + seconds

    @property
    def per_second(self) -> float:
        """Amount per second; 0 before any observation."""
        return self.amount / self.seconds if self.seconds else 0.0

    @property
    def seconds_each(self) -> float:
        """Seconds per unit of amount; 0 before any observation."""
        return self.seconds / self.amount if self.amount else 0.0
