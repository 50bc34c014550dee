"""How far the simulator is from a real vLLM server; the goal is <= 10% error on each figure.

A CPU vLLM server with the tiny model (the tests' real part, or `--endpoint URL`) is profiled
by `vllm-autoscaler profile` (closed-loop sweep, lengths from the Azure conversation trace),
then `vllm-autoscaler fidelity` replays another part of that trace in real time against it,
rate-scaled to what the server takes, with a burst early on that overloads it, and through the
simulator with the fitted profile. Prints TTFT p50/p95, E2E p50/p95 and throughput errors of
the normal and the overloaded stretch (arrivals from the burst's start until the queues of the
server and the simulator have drained after it; the rest, several hundred requests, is the
normal stretch), and the machine's load average (the machine is shared: the figures are
noisy). The server it starts logs its steps (`--enable-logging-iteration-details`):
the errors are printed again for the simulator run at the speed the server had during the
replay (`fidelity --engine-log`), with the range of that speed against the sweep's. Takes about
8 minutes (a 2-minute sweep, a 4-minute replay).
Run: `.venv/bin/python tests/benchmarks/bench_fidelity.py [--endpoint URL [--engine-log FILE]] [--out DIR]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
TRACE = REPO / "simulations" / "data" / "azure_conv_2023.csv"
CLI = str(Path(sys.executable).parent / "vllm-autoscaler")
GOAL = 0.10
PROFILE_ARGS = ["--trace", str(TRACE), "--concurrency", "1,2,4,8,16", "--duration-per-step", "20",
                "--seed", "1", "--gpu", "cpu"]  # fmt: skip
# Four minutes of the trace 20 minutes in, at 0.3 of its rate, twenty times that for 20 s a
# minute in (1087 requests, ~670 in the overloaded stretch: TTFTs of 4-6 s, the queue drained
# ~7 s after the burst). At five times the queue barely formed; at ten the burst's median TTFT
# sat on the knee between queued and not, and moved -59% to +18% between runs.
FIDELITY_ARGS = ["--trace", str(TRACE), "--start", "1200", "--end", "1440", "--rate-scale", "0.3",
                 "--burst", "60:80:20", "--seed", "2"]  # fmt: skip


def run(*args: str) -> None:
    done = subprocess.run([CLI, *args], stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"vllm-autoscaler {args[0]} failed:\n{done.stderr[-3000:]}")


def measure(endpoint: str, out: Path, engine_log: Path | None) -> dict:
    loads = [os.getloadavg()[0]]
    run("profile", "--endpoint", endpoint, "--out", str(out / "cpu-tiny.yaml"), *PROFILE_ARGS)
    loads.append(os.getloadavg()[0])
    log_args = ["--engine-log", str(engine_log)] if engine_log else []
    run("fidelity", "--endpoint", endpoint, "--profile", str(out / "cpu-tiny.yaml"),
        "--out", str(out / "fidelity"), *FIDELITY_ARGS, *log_args)  # fmt: skip
    loads.append(os.getloadavg()[0])
    report = json.loads((out / "fidelity" / "fidelity.json").read_text())
    report["load_averages"] = loads
    return report


def started_server(workdir: Path):
    """The tests' CPU vLLM server, logging its steps with epoch times (for `--engine-log`)."""
    sys.path.insert(0, str(TESTS))
    from fixtures.realparts import TINY_MODEL, VLLM_PYTHON, VllmServer

    if not (VLLM_PYTHON.exists() and TINY_MODEL.is_dir()):
        raise SystemExit("no vLLM venv or tiny model: run `bash tests/setup_real_parts.sh`")
    server = VllmServer(workdir / "vllm.log")
    server.log_steps()
    server.start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", help="a running vLLM server (default: start the tests' one)")
    parser.add_argument("--engine-log", type=Path, help="that server's log of its steps, if it keeps one")
    parser.add_argument("--out", type=Path, help="keep the profile and reports here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        server = None if args.endpoint else started_server(Path(tmp))
        try:
            report = measure(args.endpoint or server.url, out, args.engine_log or (server and server.log))
        finally:
            if server is not None:
                server.stop()
    print(f"simulator fidelity against a CPU vLLM server (goal: every error <= {GOAL:.0%}); "
          f"{report['requests']} requests replayed, load average "
          f"{' / '.join(f'{x:.1f}' for x in report['load_averages'])} (start / after profile / end)")
    burst, stretches = report["burst"], report["stretches"]
    print(f"  burst x{burst['factor']:g} over {burst['start_s']:g}-{burst['end_s']:g} s; overloaded stretch: "
          f"arrivals {burst['start_s']:g}-{report['overloaded_until_s']:.1f} s "
          f"({stretches['overloaded']['live']['requests']} requests), normal: the other "
          f"{stretches['normal']['live']['requests']}")
    show(stretches)
    at_speed = report.get("at_measured_speed", {})
    if "stretches" in at_speed:
        speed = at_speed["speed"]
        print(f"at the speed the server had during the replay (x{speed['min']:.3f} to x{speed['max']:.3f} "
              f"per {speed['window_s']:g} s, x{speed['overall']:.3f} overall, against its steps in the sweep):")
        show(at_speed["stretches"])
    elif "error" in at_speed:
        print(f"the server's speed during the replay is unknown: {at_speed['error']}")


def show(stretches: dict) -> None:
    for stretch in ("normal", "overloaded"):
        errors = stretches[stretch]["relative_error"]
        worst = max(abs(e) for e in errors.values())
        figures = ", ".join(f"{name} {error:+.1%}" for name, error in errors.items())
        print(f"  {stretch:>10}: {figures}  (worst {worst:.1%}{' ok' if worst <= GOAL else ''})")


if __name__ == "__main__":
    main()
