"""Guards between a raw recommendation and what is actuated, one per pool.

Bounds, scale-down stabilisation (act on the highest recommendation of the window, as the
HPA does), hysteresis (ignore small dips), and a cap on the change per tick.
"""

from __future__ import annotations

import math
from collections import deque


class PoolGuard:
    def __init__(
        self,
        minimum: int,
        maximum: int,
        stabilization_s: float,
        max_up: int,
        max_down: int,
        hysteresis: float,
    ):
        self.minimum, self.maximum = minimum, maximum
        self.stabilization_s = stabilization_s
        self.max_up, self.max_down = max_up, max_down
        self.hysteresis = hysteresis
        self.recent: deque[tuple[float, int]] = deque()

    def remember(self, value: int, now: float) -> None:
        """Count `value` as recommended at `now` (held decisions keep the window filled)."""
        self.recent.append((now, value))

    def apply(self, recommended: int, current: int, now: float) -> int:
        return min(max(self._limit(recommended, current, now), self.minimum), self.maximum)

    def _limit(self, recommended: int, current: int, now: float) -> int:
        recommended = min(max(recommended, self.minimum), self.maximum)
        if not self.recent:  # no history yet: what runs now counts as recommended
            self.recent.append((now, current))
        self.recent.append((now, recommended))
        while self.recent[0][0] < now - self.stabilization_s:
            self.recent.popleft()
        if recommended >= current:
            return min(recommended, current + self.max_up)
        # Scale down only to the highest recommendation of the window, and only when the
        # drop is larger than the hysteresis band.
        floor = max(r for _, r in self.recent)
        if floor >= current or current - floor <= math.floor(self.hysteresis * current):
            return current
        return max(floor, current - self.max_down, self.minimum)
