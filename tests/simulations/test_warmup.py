"""The warm-up replay before t=0: the traffic that preceded a slice, else the trace's head."""

from __future__ import annotations

import numpy as np
from helpers import PROFILE, Fixed, config, trace
from vllm_autoscaler.simulations.simulator import Simulation
from vllm_autoscaler.simulations.traces import slice_trace

WARMUP = "simulation.warmup_seconds=60"  # a multiple of the 15-s tick


def simulation(tr, *overrides):
    cfg = config(*overrides)
    return Simulation(tr, cfg, cfg.targets[0], PROFILE, Fixed(2))


def test_a_slice_warms_up_on_the_traffic_that_came_before_it():
    arrivals = np.arange(0.0, 200.0, 5.0)  # one request every 5 s for 200 s
    whole = trace(arrivals, [10] * len(arrivals), [5] * len(arrivals))
    tail = slice_trace(whole, 100.0)
    sim = simulation(tail, WARMUP)
    np.testing.assert_allclose(sim.lead_in.arrival_s, arrivals[(arrivals >= 40) & (arrivals < 100)] - 100)
    result = sim.run()
    assert result.summary["requests"] == len(tail) == 20  # the lead-in is not counted


def test_a_whole_trace_replays_its_own_first_minutes():
    arrivals = np.arange(0.0, 200.0, 5.0)
    sim = simulation(trace(arrivals, [10] * 40, [5] * 40), WARMUP)
    np.testing.assert_allclose(sim.lead_in.arrival_s, arrivals[arrivals < 60] - 60)


def test_no_warmup_no_lead_in():
    arrivals = np.arange(0.0, 200.0, 5.0)
    tail = slice_trace(trace(arrivals, [10] * 40, [5] * 40), 100.0)
    assert len(simulation(tail).lead_in) == 0
