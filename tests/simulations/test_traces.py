"""Trace files: format detection, bad rows, slicing and scaling (simulations/traces.py)."""

from __future__ import annotations

import csv
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from vllm_autoscaler.simulations.traces import (
    Trace,
    TraceError,
    load_trace,
    resample_blocks,
    save_trace,
    scale_rate,
    slice_trace,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "traces"
AZURE_CODE = DATA / "azure_code_head.csv"
AZURE_CONV = DATA / "azure_conv_head.csv"
BURSTGPT = DATA / "burstgpt_sample.csv"


def csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))[1:]


def azure_expected(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The file read the slow, obvious way: datetime per row (microseconds), ints."""
    rows = csv_rows(path)
    # Python's datetime takes at most 6 fractional digits; the trace has 7.
    stamps = [datetime.strptime(r[0][:26], "%Y-%m-%d %H:%M:%S.%f") for r in rows]
    seconds = np.array([(s - stamps[0]).total_seconds() for s in stamps])
    return seconds, np.array([int(r[1]) for r in rows]), np.array([int(r[2]) for r in rows])


@pytest.mark.parametrize("path", [AZURE_CODE, AZURE_CONV], ids=["code", "conv"])
def test_azure_trace_read_relative_to_first_request(path):
    trace = load_trace(path)
    arrival, prompt, output = azure_expected(path)
    assert len(trace) == len(arrival) and trace.skipped_rows == 0
    assert trace.arrival_s[0] == 0.0
    np.testing.assert_allclose(trace.arrival_s, arrival, atol=2e-6)
    np.testing.assert_array_equal(trace.prompt_tokens, prompt)
    np.testing.assert_array_equal(trace.output_tokens, output)
    assert trace.arrival_s.dtype == np.float64 and trace.prompt_tokens.dtype == np.int64
    assert trace.name == path.stem


def test_burstgpt_failed_requests_left_out_and_counted():
    trace = load_trace(BURSTGPT)
    rows = csv_rows(BURSTGPT)
    served = [r for r in rows if r[3] != "0"]
    assert trace.skipped_rows == len(rows) - len(served) == 3
    np.testing.assert_array_equal(trace.arrival_s, [float(r[0]) - float(rows[0][0]) for r in served])
    np.testing.assert_array_equal(trace.prompt_tokens, [int(r[2]) for r in served])
    np.testing.assert_array_equal(trace.output_tokens, [int(r[3]) for r in served])


def test_normalised_round_trip_keeps_the_lead_in(tmp_path):
    trace = load_trace(AZURE_CONV, start_s=5.0, end_s=40.0)
    assert trace.arrival_s[0] > 0  # the slice starts with idle time
    path = tmp_path / "slice.csv"
    save_trace(trace, path)
    back = load_trace(path)
    np.testing.assert_allclose(back.arrival_s, trace.arrival_s, atol=1e-6)
    np.testing.assert_array_equal(back.prompt_tokens, trace.prompt_tokens)
    np.testing.assert_array_equal(back.output_tokens, trace.output_tokens)


def write(tmp_path: Path, header: str, rows: list[str], name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_header_detection_ignores_case_spaces_and_bom(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("\ufeff Arrival_S , prompt_tokens,OUTPUT_TOKENS\r\n0,5,6\r\n1.5,7,8\r\n")
    trace = load_trace(path)
    np.testing.assert_array_equal(trace.arrival_s, [0, 1.5])
    np.testing.assert_array_equal(trace.output_tokens, [6, 8])


def test_unknown_header_lists_the_supported_formats(tmp_path):
    path = write(tmp_path, "time,in,out", ["0,1,1"])
    with pytest.raises(TraceError) as err:
        load_trace(path)
    message = str(err.value)
    assert message.startswith(f"{path}:1: unknown trace format")
    for header in ("arrival_s,prompt_tokens,output_tokens", "TIMESTAMP,ContextTokens,GeneratedTokens",
                   "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"):  # fmt: skip
        assert header in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty file"),
        ("arrival_s,prompt_tokens,output_tokens\n", "no requests, the file has only a header"),
        ("arrival_s,prompt_tokens,output_tokens\n\n\n", "no requests, the file has only a header"),
    ],
    ids=["empty", "header-only", "blank-lines"],
)
def test_empty_traces_are_clear_errors(tmp_path, text, expected):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=expected):
        load_trace(path)


AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
NORMALISED_HEADER = "arrival_s,prompt_tokens,output_tokens"
BURSTGPT_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"
GOOD_AZURE = [",".join(r) for r in csv_rows(AZURE_CODE)[:50]]

# (header, good rows, bad row, message) -- the bad row goes in the middle of the good rows.
BAD_ROWS = {
    "non-numeric": (AZURE_HEADER, GOOD_AZURE, "2023-11-16 18:17:05.5,12x,3",
                    "ContextTokens is not an integer (got '12x')"),
    "float-tokens": (AZURE_HEADER, GOOD_AZURE, "2023-11-16 18:17:05.5,12,3.5",
                     "GeneratedTokens is not an integer (got '3.5')"),
    "zero-prompt": (AZURE_HEADER, GOOD_AZURE, "2023-11-16 18:17:05.5,0,3",
                    "ContextTokens must be >= 1 (got '0')"),
    "negative-output": (AZURE_HEADER, GOOD_AZURE, "2023-11-16 18:17:05.5,12,-3",
                        "GeneratedTokens must be >= 0 (got '-3')"),
    "bad-timestamp": (AZURE_HEADER, GOOD_AZURE, "2023-11-16 25:17:05.5,12,3",
                      ("TIMESTAMP is not a date and time like 2023-11-16 18:17:03.9799600 "
                      "(got '2023-11-16 25:17:05.5')")),
    "missing-timestamp": (AZURE_HEADER, GOOD_AZURE, ",12,3",
                          "TIMESTAMP is not a date and time like 2023-11-16 18:17:03.9799600 (got '')"),
    "too-few-columns": (AZURE_HEADER, GOOD_AZURE, "2023-11-16 18:17:05.5,12",
                        ("expected 3 columns (TIMESTAMP,ContextTokens,GeneratedTokens), got 2 "
                        "(got '2023-11-16 18:17:05.5,12')")),
    "too-many-columns": (AZURE_HEADER, GOOD_AZURE, "2023-11-16 18:17:05.5,12,3,4",
                         "expected 3 columns (TIMESTAMP,ContextTokens,GeneratedTokens), got 4"),
    "backwards": (AZURE_HEADER, GOOD_AZURE, "2023-11-16 18:17:03.0,12,3",
                  "time goes backwards, "),
    "zero-output-normalised": (NORMALISED_HEADER, [f"{i * 0.5},10,20" for i in range(50)],
                               "12.6,10,0", "output_tokens must be >= 1 (got '0')"),
    "negative-time-normalised": (NORMALISED_HEADER, [f"{i * 0.5},10,20" for i in range(50)],
                                 "-1,10,3", "arrival_s must be >= 0 (got '-1')"),
    "nan-time-normalised": (NORMALISED_HEADER, [f"{i * 0.5},10,20" for i in range(50)],
                            "nan,10,3", "arrival_s is not a finite number (got 'nan')"),
    "text-time-burstgpt": (BURSTGPT_HEADER, [f"{i},ChatGPT,10,20,30,API log" for i in range(50)],
                           "soon,ChatGPT,10,20,30,API log",
                           "Timestamp is not a number of seconds (got 'soon')"),
    "zero-prompt-burstgpt": (BURSTGPT_HEADER, [f"{i},ChatGPT,10,20,30,API log" for i in range(50)],
                             "25,ChatGPT,0,20,20,API log", "Request tokens must be >= 1 (got '0')"),
}  # fmt: skip


@pytest.mark.parametrize("kind", BAD_ROWS)
def test_bad_row_names_file_line_and_value(tmp_path, kind):
    header, good, bad, message = BAD_ROWS[kind]
    rows = [*good[:25], bad, *good[25:]]
    path = write(tmp_path, header, rows)
    with pytest.raises(TraceError) as err:
        load_trace(path)
    # Header on line 1, so the 26th row is line 27.
    assert str(err.value).startswith(f"{path}:27: {message}")


def test_line_numbers_count_blank_lines(tmp_path):
    rows = [*GOOD_AZURE[:3], "", "", *GOOD_AZURE[3:10], "2023-11-16 18:17:05.5,x,3"]
    path = write(tmp_path, AZURE_HEADER, rows)
    with pytest.raises(TraceError, match=rf"^{path}:14: ContextTokens is not an integer"):
        load_trace(path)


def test_skip_mode_counts_every_bad_row_and_keeps_the_good(tmp_path):
    bad = [BAD_ROWS[k][2] for k in BAD_ROWS if BAD_ROWS[k][0] == AZURE_HEADER]
    rng = np.random.default_rng(3)
    rows = list(GOOD_AZURE)
    for row in bad:
        rows.insert(int(rng.integers(1, len(rows))), row)
    path = write(tmp_path, AZURE_HEADER, rows)
    trace = load_trace(path, skip_bad_rows=True)
    assert trace.skipped_rows == len(bad)
    good = write(tmp_path, AZURE_HEADER, GOOD_AZURE, name="good.csv")
    expected = load_trace(good)
    np.testing.assert_array_equal(trace.arrival_s, expected.arrival_s)
    np.testing.assert_array_equal(trace.prompt_tokens, expected.prompt_tokens)


def test_all_rows_bad_in_skip_mode_is_an_error(tmp_path):
    path = write(tmp_path, AZURE_HEADER, ["x,1,1", "y,2,2"])
    with pytest.raises(TraceError, match="no requests left, all 2 rows were bad"):
        load_trace(path, skip_bad_rows=True)


def test_small_disorder_is_sorted_not_an_error(tmp_path):
    rows = ["2023-11-16 18:17:03.5000,1,1", "2023-11-16 18:17:03.4995,2,2", "2023-11-16 18:17:04,3,3"]
    trace = load_trace(write(tmp_path, AZURE_HEADER, rows))
    np.testing.assert_array_equal(trace.prompt_tokens, [2, 1, 3])
    assert trace.arrival_s[0] == 0.0 and np.all(np.diff(trace.arrival_s) >= 0)


def test_azure_utc_offsets_are_applied_quietly(tmp_path):
    rows = ["2024-05-10 00:00:00.5+00:00,10,1", "2024-05-10 02:00:01.5+02:00,10,1"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trace = load_trace(write(tmp_path, AZURE_HEADER, rows))
    np.testing.assert_array_equal(trace.arrival_s, [0.0, 1.0])


def test_azure_zero_output_tokens_read_as_one(tmp_path):
    rows = ["2023-11-16 18:17:03.5,10,0", "2023-11-16 18:17:04.5,10,7"]
    trace = load_trace(write(tmp_path, AZURE_HEADER, rows))
    np.testing.assert_array_equal(trace.output_tokens, [1, 7])


def test_slice_is_half_open_and_rebased():
    full = load_trace(AZURE_CONV)
    start, end = 10.0, 30.0
    part = load_trace(AZURE_CONV, start_s=start, end_s=end)
    inside = (full.arrival_s >= start) & (full.arrival_s < end)
    np.testing.assert_allclose(part.arrival_s, full.arrival_s[inside] - start)
    np.testing.assert_array_equal(part.prompt_tokens, full.prompt_tokens[inside])
    assert part.arrival_s.min() >= 0 and part.arrival_s.max() < end - start


def test_slice_errors(tmp_path):
    with pytest.raises(TraceError, match=r"need 0 <= start_s < end_s"):
        load_trace(AZURE_CONV, start_s=20, end_s=10)
    with pytest.raises(TraceError, match=r"no requests in \[5000, end\) s; the trace spans 0\.\."):
        load_trace(AZURE_CONV, start_s=5000)


def test_time_scale_changes_spacing_not_requests():
    full = load_trace(AZURE_CODE)
    fast = load_trace(AZURE_CODE, time_scale=0.5)
    np.testing.assert_allclose(fast.arrival_s, full.arrival_s * 0.5)
    np.testing.assert_array_equal(fast.output_tokens, full.output_tokens)


@pytest.mark.parametrize("factor", [0.3, 1.0, 2.0, 2.6])
def test_rate_scale_changes_count_at_the_same_duration(factor):
    full = load_trace(AZURE_CONV)
    scaled = load_trace(AZURE_CONV, rate_scale=factor, seed=5)
    n = len(full)
    frac = factor - int(factor)
    # Count: n*floor + Binomial(n, frac); allow 5 standard deviations.
    assert abs(len(scaled) - n * factor) <= 5 * np.sqrt(n * frac * (1 - frac)) + 1e-9
    assert np.all(np.diff(scaled.arrival_s) >= 0)
    assert scaled.arrival_s.min() >= 0
    mean_gap = full.duration_s / (n - 1)
    assert scaled.duration_s <= full.duration_s + mean_gap
    # Same request mix: every (prompt, output) pair comes from the original trace.
    pairs = set(zip(full.prompt_tokens.tolist(), full.output_tokens.tolist()))
    assert set(zip(scaled.prompt_tokens.tolist(), scaled.output_tokens.tolist())) <= pairs
    if factor > 1:  # copies are spread out, not stacked on the originals
        assert len(np.unique(scaled.arrival_s)) == len(scaled)


def test_rate_scale_below_one_thins_the_original_arrivals():
    full = load_trace(AZURE_CONV)
    thin = load_trace(AZURE_CONV, rate_scale=0.5, seed=2)
    assert np.isin(thin.arrival_s, full.arrival_s).all()


def test_rate_scale_is_reproducible_and_seeded():
    full = load_trace(AZURE_CODE)
    a, b, c = (scale_rate(full, 1.7, seed) for seed in (1, 1, 2))
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    assert len(a) != len(c) or not np.array_equal(a.arrival_s, c.arrival_s)


def tagged_blocks(blocks: int, block_s: float) -> Trace:
    """Block i holds i + 1 requests whose prompt length is i + 1: a request names its block."""
    block = np.repeat(np.arange(blocks), np.arange(1, blocks + 1))
    offset = np.concatenate([np.linspace(0, block_s, i + 1, endpoint=False) + 1 for i in range(blocks)])
    return Trace(block * block_s + offset, block + 1, np.full(len(block), 10), name="tagged")


def test_resampled_blocks_come_whole_from_the_same_or_a_neighbouring_slot():
    block_s = 60.0
    trace = slice_trace(tagged_blocks(12, block_s), 2 * block_s)  # after a lead-in of blocks 0-1
    block_of = trace.prompt_tokens - 3  # re-based: block 2 (tag 3) is now block 0
    copies = [resample_blocks(trace, block_s, seed) for seed in (1, 1, 2)]
    for copy in copies:
        assert np.all(np.diff(copy.arrival_s) >= 0) and copy.before is trace.before
        slot, drawn = (copy.arrival_s // block_s).astype(int), copy.prompt_tokens - 3
        assert set(slot) == set(range(10))
        for j in range(10):
            (block,) = set(drawn[slot == j])  # one block per slot, from itself or a neighbour
            assert abs(block - j) <= 1
            shifted = trace.arrival_s[block_of == block] + (j - block) * block_s
            np.testing.assert_allclose(copy.arrival_s[slot == j], shifted)  # whole, same offsets
        assert set(drawn[slot == 9]) == {9}  # the last block ends early (at 9:56): it stays
    np.testing.assert_array_equal(copies[0].arrival_s, copies[1].arrival_s)  # seeded
    assert not np.array_equal(copies[0].prompt_tokens, trace.prompt_tokens)  # blocks moved
    assert not np.array_equal(copies[0].prompt_tokens, copies[2].prompt_tokens)


@pytest.mark.parametrize(("option", "value"), [("rate_scale", 0), ("time_scale", -1.0)])
def test_scale_must_be_positive(option, value):
    with pytest.raises(TraceError, match=f"{option} must be > 0, got {value}"):
        load_trace(AZURE_CODE, **{option: value})


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(TraceError, match="cannot read trace"):
        load_trace(tmp_path / "nope.csv")
