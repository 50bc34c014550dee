"""`profile` and `fidelity` against the real CPU vLLM server (tiny model), end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.realparts import MAX_NUM_SEQS, VllmServer

from vllm_autoscaler.controller.profile import load_profile

REPO = Path(__file__).resolve().parents[2]
AZURE_CONV = REPO / "simulations" / "data" / "azure_conv_2023.csv"
CLI = str(Path(sys.executable).parent / "vllm-autoscaler")
# The fixture's server: --num-gpu-blocks-override 64 of 128 tokens.
SERVER_KV_TOKENS = 64 * 128


def cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def measured_profile(vllm_server: str, tmp_path_factory) -> Path:
    """A profile from a short sweep with the lengths of the trace the fidelity test replays
    (not its requests), past the server's max_num_seqs so that requests wait; measured just
    before that replay, on the same server, so that the machine's speed is the same in both."""
    out = tmp_path_factory.mktemp("profile") / "cpu-tiny.yaml"
    cli("profile", "--endpoint", vllm_server, "--out", str(out), "--trace", str(AZURE_CONV),
        "--concurrency", f"1,4,{2 * MAX_NUM_SEQS}", "--duration-per-step", "8", "--gpu", "cpu",
        timeout=240)  # fmt: skip
    return out


def test_profile_of_the_live_server_is_loadable_and_sane(measured_profile: Path):
    profile = load_profile(str(measured_profile))
    assert profile.model == "tiny-llama"
    assert profile.kv_cache_tokens == SERVER_KV_TOKENS
    assert (profile.kv_block_size, profile.kv_watermark) == (128, 0.0)  # the CPU backend's blocks; V1
    assert profile.max_num_seqs == MAX_NUM_SEQS  # seen: requests waited while 8 ran
    assert "measured by `vllm-autoscaler profile`" in profile.source
    # A 2-layer, 128-wide model on a CPU: steps of a fraction of a millisecond to tens of ms
    # (the machine is shared), prefill well under a millisecond per token.
    assert 1e-4 < profile.decode_base_s < 0.05
    assert 1e-7 < profile.prefill_per_token_s < 1e-3
    assert 0 <= profile.request_overhead_s < 0.1  # HTTP front end: milliseconds
    assert profile.step_seconds(MAX_NUM_SEQS, MAX_NUM_SEQS * 150, 0) < 0.2
    assert measured_profile.with_name("cpu-tiny-fit.png").stat().st_size > 10_000
    requests = measured_profile.with_name("cpu-tiny-requests.csv").read_text().splitlines()
    assert len(requests) > 30


def test_fidelity_replays_a_trace_with_a_burst_against_the_server_and_the_simulator(
    shared_vllm_server: VllmServer, measured_profile: Path, tmp_path: Path
):
    out = tmp_path / "fidelity"
    # 60 s of the Azure conversation trace at a third of its rate, twenty times that for 4 s:
    # every burst request queues (at 5x the median sat on the knee between queued and not, and
    # one run in three missed by 46%), as in tests/benchmarks/bench_fidelity.py; the queue
    # drains 10-15 s later, leaving 50-60 requests in the normal stretch (with 30 s and a 6-s
    # burst, it lasted to the end, and medians over the 11 requests before it missed by 31%).
    done = cli("fidelity", "--endpoint", shared_vllm_server.url, "--profile", str(measured_profile),
               "--trace", str(AZURE_CONV), "--start", "600", "--end", "660", "--rate-scale", "0.3",
               "--burst", "10:14:20", "--engine-log", str(shared_vllm_server.log),
               "--out", str(out), timeout=240)  # fmt: skip
    report = json.loads((out / "fidelity.json").read_text())
    assert report["failed_live"] == 0, report["failures_live"]
    stretches = report["stretches"]
    assert set(stretches) == {"all", "normal", "overloaded"}
    for who in ("live", "simulated"):
        # The burst queues requests, live and in the simulator alike (how much depends on
        # how busy the 2-core machine is).
        assert stretches["overloaded"][who]["ttft_p95"] > 1.2 * stretches["normal"][who]["ttft_p50"]
        assert stretches["all"][who]["completed"] == report["requests"]
    # Under normal load both deliver what arrives: throughput follows the trace.
    assert stretches["normal"]["relative_error"]["throughput"] == pytest.approx(0, abs=0.10)
    # The simulator with the profile measured just before, at the speed the server had during
    # the replay (from its log of steps): medians close under normal load and in the overload
    # (about 265 requests in all). As measured, without that speed, a shared 2-core machine's drift
    # between the sweep and the replay moved the normal stretch's E2E median by -30% to +66%
    # in three runs of one day, and by under 18% on others. p95s of the normal stretch rest on
    # its slowest three: not checked here (bench_fidelity.py measures them on 1087).
    at_speed = report["at_measured_speed"]
    assert "stretches" in at_speed, at_speed
    normal = at_speed["stretches"]["normal"]["relative_error"]
    overloaded = at_speed["stretches"]["overloaded"]["relative_error"]
    as_measured = {name: stretches[name]["relative_error"] for name in ("normal", "overloaded")}
    assert normal["e2e_p50"] == pytest.approx(0, abs=0.25), (normal, as_measured)
    # Under normal load the TTFT median (10-24 ms) is mostly the HTTP front end's time. The
    # profile measures it idle (~9 ms); in the replay it shares the 2 cores with the engine
    # and the load generator, which the engine's measured speed does not cover: one clean-clone
    # run on a quiet machine had 23.9 ms live against 16.3 ms simulated at speed 1.00 (on a
    # GPU server the front end has its own cores).
    live_ttft = stretches["normal"]["live"]["ttft_p50"]
    simulated_ttft = at_speed["stretches"]["normal"]["simulated"]["ttft_p50"]
    assert simulated_ttft == pytest.approx(live_ttft, rel=0.25, abs=0.010), (normal, as_measured)
    for figure in ("ttft_p50", "e2e_p50", "throughput"):
        assert overloaded[figure] == pytest.approx(0, abs=0.25), (figure, overloaded, as_measured)
    assert "| overloaded | ttft_p50 (s) |" in (out / "fidelity.md").read_text()
    assert (out / "fidelity.png").stat().st_size > 10_000
    assert "overloaded:" in done.stderr
