"""Bad input to `profile` and `fidelity` fails with exit code 2 and says what is wrong."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from vllm_autoscaler.controller.cli import app

TRACE = str(Path(__file__).resolve().parents[2] / "simulations" / "data" / "azure_conv_2023.csv")
NOTHING_LISTENS = "http://127.0.0.1:9"  # the discard port: connection refused


@pytest.mark.parametrize(("args", "message"), [
    (["profile", "--endpoint", NOTHING_LISTENS, "--out", "p.yaml", "--concurrency", "1,a"],
     "--concurrency '1,a': expected comma-separated whole numbers"),
    (["profile", "--endpoint", NOTHING_LISTENS, "--out", "p.yaml", "--concurrency", "0,4"],
     "at least 1 request in flight"),
    (["profile", "--endpoint", NOTHING_LISTENS, "--out", "p.yaml"],
     f"GET {NOTHING_LISTENS}/v1/models: Cannot connect"),
    (["fidelity", "--endpoint", NOTHING_LISTENS, "--profile", "missing.yaml", "--trace", TRACE],
     "missing.yaml: cannot read replica profile"),
    (["fidelity", "--endpoint", NOTHING_LISTENS, "--profile", "a10g-llama3-8b", "--trace", TRACE,
      "--end", "60", "--burst", "30:20:3"], "burst '30:20:3': need 0 <= START < END"),
    (["fidelity", "--endpoint", NOTHING_LISTENS, "--profile", "a10g-llama3-8b", "--trace", TRACE,
      "--end", "60"], f"GET {NOTHING_LISTENS}/v1/models: Cannot connect"),
])  # fmt: skip
def test_bad_input_names_the_problem(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
