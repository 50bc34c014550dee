"""Arrival-rate forecast with an upper band, over each pool's lead time.

Holt's linear smoothing (level + trend) of the measured rate, the trend extrapolated only
where it stands out of the counting noise of Poisson arrivals, a seasonal-naive term once a
full season (a day) of history exists, and an EWMA of one-step under-forecasts for the band.
A burst seen in the latest tick is never averaged away: the band's top is at least the
latest measurement.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass

# The trend counts only beyond this many standard errors of a slope fitted to Poisson
# arrivals over the window.
TREND_NOISE_Z = 2.0
TREND_WINDOW_S = 300.0


@dataclass(frozen=True, slots=True)
class Forecast:
    point: float  # expected rate (requests/s) at the horizon
    upper: float  # upper band: point + z * error scale, never below the latest measurement
    latest: float


class RateForecaster:
    def __init__(
        self,
        tick_s: float,
        level_alpha: float,
        trend_beta: float,
        error_alpha: float,
        band_z: float,
        season_s: float = 86400.0,  # 0: no seasonal term
        history_s: float = 86400.0 + 3600.0,
    ):
        self.tick_s = tick_s
        self.alpha, self.beta, self.error_alpha, self.z = level_alpha, trend_beta, error_alpha, band_z
        self.level: float | None = None
        self.trend = 0.0  # requests/s per second
        self.error = 0.0  # EWMA of |one-step error|
        # The spread (sum of squared deviations) of the trend window's tick times around their
        # mean, for the standard error of a slope fitted over it.
        ticks = max(round(TREND_WINDOW_S / tick_s), 2)
        self.window_spread = tick_s**2 * (ticks**3 - ticks) / 12
        self.latest = 0.0
        self.season_s = season_s
        self.history_s = history_s
        self.times: list[float] = []  # measurement history, oldest first
        self.rates: list[float] = []

    def update(self, rate: float, now: float) -> None:
        if self.level is None:
            self.level = rate
        else:
            predicted = self.level + self.trend * self.tick_s
            # Only under-forecasts widen the upper band (doubled to the scale of a mean
            # absolute error): a higher measurement can then never narrow it, which keeps
            # the desired capacity monotone in the load.
            under = 2 * max(rate - predicted, 0.0)
            self.error += self.error_alpha * (under - self.error)
            level = self.alpha * rate + (1 - self.alpha) * predicted
            step_trend = (level - self.level) / self.tick_s
            self.trend += self.beta * (step_trend - self.trend)
            self.level = level
        self.latest = rate
        self.times.append(now)
        self.rates.append(rate)
        expired = bisect_left(self.times, now - self.history_s)
        if expired > len(self.times) // 2:  # trim in bulk: amortised O(1) per update
            del self.times[:expired], self.rates[:expired]

    def _seasonal(self, at: float) -> float | None:
        """The rate one season before `at`, if the history reaches back that far."""
        then = at - self.season_s
        if not self.season_s or not self.times or self.times[0] > then:
            return None
        return self.rates[min(bisect_left(self.times, then), len(self.times) - 1)]

    def significant_trend(self) -> float:
        """The trend less TREND_NOISE_Z standard errors of a slope fitted to Poisson arrivals
        at the current level over TREND_WINDOW_S (0 when within them): the slope of a noisy
        level wanders, and over a pod's lead time of minutes that wander alone would be worth
        a replica; a real ramp keeps the slope well above it."""
        # A tick's measured rate counts level * tick_s arrivals (variance level / tick_s).
        noise = TREND_NOISE_Z * math.sqrt(max(self.level or 0.0, 0.0) / self.tick_s / self.window_spread)
        return math.copysign(max(abs(self.trend) - noise, 0.0), self.trend)

    def forecast(self, now: float, horizon_s: float) -> Forecast:
        if self.level is None:
            return Forecast(0.0, 0.0, 0.0)
        point = max(self.level + self.significant_trend() * horizon_s, 0.0)
        seasonal = self._seasonal(now + horizon_s)
        if seasonal is not None:
            point = max(point, seasonal)
        # The one-step error is mostly sampling noise of the measured rate, which does not
        # grow with the horizon; real level shifts are carried by the trend.
        upper = max(point + self.z * self.error, self.latest)
        return Forecast(point, upper, self.latest)

    def recent_quantile(self, now: float, window_s: float, q: float, hold_s: float = 0.0) -> float:
        """The q-quantile over the last `window_s` of the rate held at its peak for `hold_s`
        (a capacity that lingers `hold_s` after each need, like an idle serverless container,
        is busy whenever the rate peaked within the last `hold_s`)."""
        start = bisect_left(self.times, now - window_s)
        if start == len(self.times):
            return 0.0
        times, rates = self.times, self.rates
        held = []
        for i in range(start, len(times)):
            first = bisect_left(times, times[i] - hold_s, lo=0, hi=i)
            held.append(max(rates[first:i + 1]))
        held.sort()
        return held[min(int(q * len(held)), len(held) - 1)]
