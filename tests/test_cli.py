"""The command line: the files later issues and users depend on, and clear errors."""

import json

import pytest
from typer.testing import CliRunner

from vllm_autoscaler.controller.cli import app
from vllm_autoscaler.simulations.summary import SUMMARY_KEYS
from vllm_autoscaler.simulations.traces import load_trace

runner = CliRunner()


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "small.csv"
    result = runner.invoke(app, ["generate", "step", "--out", str(path), "--seed", "3",
                                 "-p", "rates=[1, 4, 2]", "-p", "step_duration_s=600"])
    assert result.exit_code == 0, result.output
    return path


def test_generate_writes_a_seeded_normalised_trace(small_trace, tmp_path):
    again = tmp_path / "again.csv"
    runner.invoke(app, ["generate", "step", "--out", str(again), "--seed", "3",
                        "-p", "rates=[1, 4, 2]", "-p", "step_duration_s=600"])
    assert again.read_text() == small_trace.read_text()
    trace = load_trace(small_trace)
    assert 0.8 * 4200 < len(trace) < 1.2 * 4200  # (1 + 4 + 2) req/s × 600 s


def test_simulate_writes_summary_report_and_plots(small_trace, tmp_path):
    out = tmp_path / "sim"
    result = runner.invoke(app, ["simulate", "--trace", str(small_trace), "--policy", "controller",
                                 "--out", str(out), "--set", "targets.0.slo.ttft_seconds=4"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["requests"] == summary["completed"] + summary["failed"] > 0
    assert summary["cost_total"] == pytest.approx(summary["cost_k8s"] + summary["cost_modal"])
    report = (out / "report.md").read_text()
    for plot in ("capacity.png", "ttft.png", "cost.png"):
        assert (out / plot).stat().st_size > 10_000
        assert plot in report


def test_compare_writes_one_summary_per_policy(small_trace, tmp_path):
    out = tmp_path / "cmp"
    policies = "controller,hpa:target_average=10,modal-only,static-peak,oracle"
    result = runner.invoke(app, ["compare", "--trace", str(small_trace), "--policies", policies,
                                 "--out", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "compare.json").read_text())
    assert list(data) == policies.split(",")
    assert len({d["requests"] for d in data.values()}) == 1
    assert (out / "compare.png").exists()
    assert "hpa:target_average=10" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--policy", "nope"], "unknown policy 'nope'"),
        (["--set", "targets.0.slo.attainment=2"], "targets.0.slo.attainment"),
        (["--policy", "hpa:no_such_knob=1"], "no_such_knob"),
        (["--target", "ghost"], "no target named 'ghost'"),
    ],
)
def test_bad_input_is_a_clear_error_not_a_traceback(small_trace, tmp_path, args, message):
    result = runner.invoke(app, ["simulate", "--trace", str(small_trace), "--out", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_bad_trace_row_names_its_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,10,5\n1.0,ten,5\n")
    result = runner.invoke(app, ["simulate", "--trace", str(bad), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "bad.csv:3" in result.output
    skipped = runner.invoke(app, ["simulate", "--trace", str(bad), "--out", str(tmp_path / "s"),
                                  "--skip-bad-rows"])
    assert skipped.exit_code == 0, skipped.output
