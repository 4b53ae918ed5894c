"""Writes the arrival traces bench/autoscale.py replays (seeded: the same files every time).

- ``bursty.csv``: three hours of a trickle (one job a minute) with a burst of 40 to 160
  jobs, over 20 to 60 s, every 10 to 25 minutes: a team running batches from a notebook.
- ``diurnal.csv``: a day whose rate swings from 0.02 to 0.3 jobs a second and back.
- ``spike_after_idle.csv``: four hours, mostly silent, with two large spikes after long
  idle stretches: the case a scaler that sits at zero must answer.

Each file holds one job's arrival time (seconds from the start) per line.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _poisson(rng: random.Random, start: float, end: float, rate: float) -> list[float]:
    times, t = [], start
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            return times
        times.append(t)


def bursty(rng: random.Random) -> list[float]:
    end = 3 * 3600.0
    times = _poisson(rng, 0, end, 1 / 60)
    t = rng.uniform(300, 900)
    while t < end - 300:
        size, spread = rng.randint(40, 160), rng.uniform(20, 60)
        times += [t + rng.uniform(0, spread) for _ in range(size)]
        t += rng.uniform(600, 1500)
    return times


def diurnal(rng: random.Random) -> list[float]:
    day, times, t = 86400.0, [], 0.0
    peak = 0.3
    # Thinning: draw at the peak rate, keep each arrival with rate(t) / peak.
    while True:
        t += rng.expovariate(peak)
        if t >= day:
            return times
        rate = 0.02 + (peak - 0.02) * (1 - math.cos(2 * math.pi * t / day)) / 2
        if rng.random() < rate / peak:
            times.append(t)


def spike_after_idle(rng: random.Random) -> list[float]:
    times = _poisson(rng, 0, 600, 1 / 30)
    times += [3600 + rng.uniform(0, 15) for _ in range(200)]
    times += _poisson(rng, 3700, 4200, 1 / 20)
    times += [9000 + rng.uniform(0, 10) for _ in range(120)]
    return times


def main() -> None:
    for make in (bursty, diurnal, spike_after_idle):
        times = sorted(make(random.Random(12)))
        lines = "".join(f"{t:.1f}\n" for t in times)
        (HERE / f"{make.__name__}.csv").write_text("arrival_s\n" + lines)
        print(f"{make.__name__}: {len(times)} jobs")


if __name__ == "__main__":
    main()
