"""Which series name each signal is read from, across vLLM releases and exporters."""

import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from vllm_autoscaler.metrics.vllm_names import ALL_SPELLINGS, Signal, detect

DATA = Path(__file__).parent.parent / "data"


def series_names(file: str) -> set[str]:
    text = (DATA / file).read_text()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_vllm_0_32_uses_the_new_names():
    names = detect(series_names("vllm_metrics_0.32.txt"))
    assert names == {
        Signal.RUNNING: "vllm:num_requests_running",
        Signal.WAITING: "vllm:num_requests_waiting",
        Signal.KV_USAGE: "vllm:kv_cache_usage_perc",
        Signal.TTFT: "vllm:time_to_first_token_seconds_bucket",
        Signal.ITL: "vllm:inter_token_latency_seconds_bucket",
        Signal.FINISHED: "vllm:request_success_total",
        Signal.PROMPT_TOKENS: "vllm:prompt_tokens_total",
        Signal.OUTPUT_TOKENS: "vllm:generation_tokens_total",
    }


def test_older_release_uses_the_old_names_and_not_the_per_request_tpot():
    names = detect(series_names("vllm_metrics_old_names.txt"))
    assert names[Signal.KV_USAGE] == "vllm:gpu_cache_usage_perc"
    # vllm:request_time_per_output_token_seconds is a per-request mean, not the ITL histogram.
    assert names[Signal.ITL] == "vllm:time_per_output_token_seconds_bucket"
    assert len(names) == len(Signal)


@pytest.mark.parametrize("prefix", ["vllm_", ""])
def test_rewritten_prefixes_are_found(prefix):
    present = {prefix + "num_requests_running", prefix + "gpu_cache_usage_perc"}
    assert detect(present) == {Signal.RUNNING: prefix + "num_requests_running",
                               Signal.KV_USAGE: prefix + "gpu_cache_usage_perc"}


def test_the_newest_name_wins_when_a_release_exports_both():
    present = {"vllm:time_per_output_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket"}
    assert detect(present)[Signal.ITL] == "vllm:inter_token_latency_seconds_bucket"


def test_absent_signals_are_left_out():
    assert detect({"vllm:num_requests_waiting", "some_other_metric"}) == {
        Signal.WAITING: "vllm:num_requests_waiting"}


def test_every_spelling_is_a_valid_prometheus_metric_name():
    assert all(re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", s) for s in ALL_SPELLINGS)
