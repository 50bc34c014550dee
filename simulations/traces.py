"""Request traces: loading real trace files and the in-memory form the simulator replays.

Trace files are CSV; the format is told by the header row:

- normalised, `arrival_s,prompt_tokens,output_tokens` (what `save_trace` writes): seconds
  from the trace's start (>= 0, kept as they are, so a saved slice keeps its idle lead-in).
- Azure LLM inference trace 2023, `TIMESTAMP,ContextTokens,GeneratedTokens`, times like
  `2023-11-16 18:17:03.9799600`. GeneratedTokens 0 is read as 1: the request was served (its
  prefill ran) and vLLM always generates at least one token.
- BurstGPT, `Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type`, Timestamp
  in seconds. Rows with 0 response tokens are requests that failed at the service, not load
  the autoscaler could have served: they are left out and counted in `skipped_rows`.

Absolute times (Azure, BurstGPT) are made relative to the first request. Rows out of order
by at most `TIME_TOLERANCE_S` are sorted; further back is a bad row.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Trace:
    """Requests sorted by arrival; times in seconds from the trace's start (first arrival >= 0)."""

    arrival_s: np.ndarray  # float64, non-decreasing
    prompt_tokens: np.ndarray  # int64, >= 1
    output_tokens: np.ndarray  # int64, >= 1
    name: str = "trace"
    skipped_rows: int = 0
    # For a slice of a longer trace: the requests that came before it (times < 0, from the
    # slice's start), so that a replay warms up on the traffic that really preceded it.
    before: Trace | None = None

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0


class TraceError(ValueError):
    """A trace that cannot be used; the message names the file, the line and what is wrong."""


TIME_TOLERANCE_S = 1e-3
MAX_REQUESTS = 10**9  # a trace of more (8 bytes a field, 3 fields) cannot be held in memory
CHUNK_ROWS = 1 << 18  # rows parsed at once: bounds the memory of the field table

# arrival seconds, prompt tokens, output tokens, and which rows are failed requests to leave out
Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class TraceFormat:
    name: str
    header: tuple[str, ...]
    # Parses a block of rows (a 2-D array of field strings); raises ValueError naming the
    # first bad field. The loader narrows a failing block down to one row before reporting.
    parse: Callable[[np.ndarray], Columns]
    absolute_times: bool


def _got(value: str | bytes) -> str:
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return f"(got {text!r})"


def _require(ok: np.ndarray, raw: np.ndarray, what: str) -> None:
    if not ok.all():
        raise ValueError(f"{what} {_got(raw[np.argmin(ok)])}")


def _integers(raw: np.ndarray, column: str, minimum: int) -> np.ndarray:
    try:
        values = raw.astype(np.int64)
    except (ValueError, OverflowError):
        raise ValueError(f"{column} is not an integer {_got(raw[0])}") from None
    _require(values >= minimum, raw, f"{column} must be >= {minimum}")
    return values


def _seconds(raw: np.ndarray, column: str) -> np.ndarray:
    try:
        values = raw.astype(np.float64)
    except ValueError:
        raise ValueError(f"{column} is not a number of seconds {_got(raw[0])}") from None
    _require(np.isfinite(values), raw, f"{column} is not a finite number")
    return values


def _timestamps(raw: np.ndarray, column: str) -> np.ndarray:
    """Date-time strings to float seconds since the epoch (sub-microsecond precision)."""
    what = f"{column} is not a date and time like 2023-11-16 18:17:03.9799600"
    try:
        with warnings.catch_warnings():
            # UTC offsets (the 2024 Azure trace has +00:00) are applied; numpy warns that
            # the result keeps no time zone, which is what we want.
            warnings.filterwarnings("ignore", "no explicit representation of timezones")
            stamps = raw.astype("datetime64[ns]")
    except ValueError:
        raise ValueError(f"{what} {_got(raw[0])}") from None
    _require(~np.isnat(stamps), raw, what)
    return stamps.astype(np.int64) / 1e9


def _no_failures(table: np.ndarray) -> np.ndarray:
    return np.zeros(len(table), dtype=bool)


def _parse_normalised(table: np.ndarray) -> Columns:
    arrival = _seconds(table[:, 0], "arrival_s")
    _require(arrival >= 0, table[:, 0], "arrival_s must be >= 0")
    prompt = _integers(table[:, 1], "prompt_tokens", minimum=1)
    output = _integers(table[:, 2], "output_tokens", minimum=1)
    return arrival, prompt, output, _no_failures(table)


def _parse_azure(table: np.ndarray) -> Columns:
    arrival = _timestamps(table[:, 0], "TIMESTAMP")
    prompt = _integers(table[:, 1], "ContextTokens", minimum=1)
    output = _integers(table[:, 2], "GeneratedTokens", minimum=0)
    return arrival, prompt, np.maximum(output, 1), _no_failures(table)


def _parse_burstgpt(table: np.ndarray) -> Columns:
    arrival = _seconds(table[:, 0], "Timestamp")
    output = _integers(table[:, 3], "Response tokens", minimum=0)
    failed = output == 0
    # A failed request may have no prompt tokens either; a served one cannot.
    prompt = _integers(table[:, 2], "Request tokens", minimum=0)
    _require((prompt >= 1) | failed, table[:, 2], "Request tokens must be >= 1")
    return arrival, prompt, output, failed


FORMATS = (
    TraceFormat("normalised", ("arrival_s", "prompt_tokens", "output_tokens"),
                _parse_normalised, absolute_times=False),
    TraceFormat("azure", ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
                _parse_azure, absolute_times=True),
    TraceFormat("burstgpt",
                ("Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type"),
                _parse_burstgpt, absolute_times=True),
)  # fmt: skip


def detect_format(header_line: str) -> TraceFormat:
    fields = tuple(f.strip().lower() for f in next(csv.reader([header_line]), []))
    for fmt in FORMATS:
        if fields == tuple(name.lower() for name in fmt.header):
            return fmt
    supported = "; ".join(f"{fmt.name}: {','.join(fmt.header)}" for fmt in FORMATS)
    raise ValueError(f"unknown trace format, header {header_line!r}; supported headers are {supported}")


def _parse_block(fmt: TraceFormat, rows: list[str]) -> Columns:
    # Fields as bytes as wide as the longest line, so nothing is cut: several times faster
    # than str fields, and numpy converts bytes to numbers and dates in bulk.
    width = max(map(len, rows))
    table = np.loadtxt(rows, delimiter=",", dtype=f"S{width}", quotechar='"', comments=None, ndmin=2)
    if table.shape[1] != len(fmt.header):
        raise ValueError(
            f"expected {len(fmt.header)} columns ({','.join(fmt.header)}), got {table.shape[1]} {_got(rows[0])}"
        )
    return fmt.parse(table)


@dataclass
class _BadRow(Exception):
    index: int
    message: str


def _parse_rows(fmt: TraceFormat, rows: list[str], start: int, stop: int,
                bad: list[_BadRow] | None) -> list[Columns]:
    """Parse rows[start:stop] in bulk; on failure halve until the bad rows are single lines.

    With `bad` None the first bad row raises `_BadRow`; otherwise bad rows are collected there.
    """  # fmt: skip
    try:
        return [_parse_block(fmt, rows[start:stop])]
    except ValueError as exc:
        if stop - start == 1:
            if bad is None:
                raise _BadRow(start, str(exc)) from None
            bad.append(_BadRow(start, str(exc)))
            return []
    middle = (start + stop) // 2
    return _parse_rows(fmt, rows, start, middle, bad) + _parse_rows(fmt, rows, middle, stop, bad)


def _read_rows(path: Path) -> tuple[str, list[str], np.ndarray]:
    """Header, non-empty data rows, and each row's 1-based line number in the file."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: cannot read trace: {exc}") from exc
    if not lines:
        raise TraceError(f"{path}: empty file, expected a CSV header and request rows")
    body = lines[1:]
    numbers = np.arange(2, len(lines) + 1)
    if "" in body:
        blank = np.array([not line for line in body])
        body = [line for line in body if line]
        numbers = numbers[~blank]
    return lines[0], body, numbers


def _requests(
    path: Path, fmt: TraceFormat, rows: list[str], line_numbers: np.ndarray, skip_bad_rows: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Arrival times (sorted), prompt and output tokens of the served requests, rows skipped."""
    bad: list[_BadRow] | None = [] if skip_bad_rows else None
    try:
        blocks = [block for start in range(0, len(rows), CHUNK_ROWS)
                  for block in _parse_rows(fmt, rows, start, min(start + CHUNK_ROWS, len(rows)), bad)]
    except _BadRow as exc:
        raise TraceError(f"{path}:{line_numbers[exc.index]}: {exc.message}") from None
    if not blocks:
        raise TraceError(f"{path}: no requests left, all {len(rows)} rows were bad")
    arrival, prompt, output, failed = (np.concatenate(column) for column in zip(*blocks))
    parsed = np.ones(len(rows), dtype=bool)
    parsed[[b.index for b in bad or []]] = False
    row_index = np.flatnonzero(parsed)[~failed]
    arrival, prompt, output = arrival[~failed], prompt[~failed], output[~failed]
    if not len(arrival):
        raise TraceError(
            f"{path}: no requests left of {len(rows)} rows: {len(bad or [])} bad, "
            f"{int(failed.sum())} failed requests"
        )

    backwards = arrival < np.maximum.accumulate(arrival) - TIME_TOLERANCE_S
    if backwards.any() and not skip_bad_rows:
        i = int(np.argmax(backwards))
        late = arrival[:i].max() - arrival[i]
        row = row_index[i]
        raise TraceError(
            f"{path}:{line_numbers[row]}: time goes backwards, {late:.6g} s before an earlier "
            f"row {_got(rows[row])}"
        )
    arrival, prompt, output = arrival[~backwards], prompt[~backwards], output[~backwards]
    order = np.argsort(arrival, kind="stable")
    return arrival[order], prompt[order], output[order], len(rows) - len(arrival)


def load_trace(
    path: str | Path,
    *,
    start_s: float | None = None,
    end_s: float | None = None,
    rate_scale: float = 1.0,
    time_scale: float = 1.0,
    skip_bad_rows: bool = False,
    seed: int = 0,
) -> Trace:
    """Read a trace file (see the module doc for formats), then slice and scale it.

    `start_s`/`end_s` select [start_s, end_s) in the file's own seconds, re-based so that
    start_s becomes 0; `time_scale` then multiplies all times and `rate_scale` changes the
    request rate over the same duration (`scale_rate`, seeded by `seed`). Bad rows raise
    `TraceError("path:line: what is wrong (got '...')")`, or with `skip_bad_rows` are left
    out and counted in `skipped_rows`.
    """
    path = Path(path)
    header, rows, line_numbers = _read_rows(path)
    try:
        fmt = detect_format(header)
    except ValueError as exc:
        raise TraceError(f"{path}:1: {exc}") from None
    if not rows:
        raise TraceError(f"{path}: no requests, the file has only a header")
    arrival, prompt, output, skipped = _requests(path, fmt, rows, line_numbers, skip_bad_rows)
    if fmt.absolute_times:
        arrival = arrival - arrival[0]
    trace = Trace(arrival, prompt, output, name=path.stem, skipped_rows=skipped)
    try:
        return transform(trace, start_s=start_s, end_s=end_s, rate_scale=rate_scale,
                         time_scale=time_scale, seed=seed)  # fmt: skip
    except ValueError as exc:
        raise TraceError(f"{path}: {exc}") from None


def transform(
    trace: Trace,
    *,
    start_s: float | None = None,
    end_s: float | None = None,
    rate_scale: float = 1.0,
    time_scale: float = 1.0,
    seed: int = 0,
) -> Trace:
    """Slice, then scale time, then scale the rate (see `load_trace`)."""
    if start_s is not None or end_s is not None:
        trace = slice_trace(trace, start_s or 0.0, end_s)
    if time_scale != 1.0:
        trace = scale_time(trace, time_scale)
    if rate_scale != 1.0:
        trace = scale_rate(trace, rate_scale, seed)
    return trace


def _take(trace: Trace, index: np.ndarray | slice, arrival_s: np.ndarray) -> Trace:
    return Trace(arrival_s, trace.prompt_tokens[index], trace.output_tokens[index],
                 name=trace.name, skipped_rows=trace.skipped_rows)  # fmt: skip


def slice_trace(trace: Trace, start_s: float, end_s: float | None = None) -> Trace:
    """Requests arriving in [start_s, end_s), with start_s re-based to 0."""
    if not 0 <= start_s < math.inf or (end_s is not None and not end_s > start_s):
        raise ValueError(f"need 0 <= start_s < end_s, got start_s={start_s}, end_s={end_s}")
    first = int(np.searchsorted(trace.arrival_s, start_s, side="left"))
    last = len(trace) if end_s is None else int(np.searchsorted(trace.arrival_s, end_s, side="left"))
    if first >= last:
        raise ValueError(
            f"no requests in [{start_s:g}, {'end' if end_s is None else f'{end_s:g}'}) s; "
            f"the trace spans 0..{trace.duration_s:g} s"
        )
    window, earlier = slice(first, last), slice(0, first)
    before = _take(trace, earlier, trace.arrival_s[earlier] - start_s) if first else None
    return replace(_take(trace, window, trace.arrival_s[window] - start_s), before=before)


def scale_time(trace: Trace, factor: float) -> Trace:
    """Multiply every inter-arrival time by `factor` (0.5: the same requests twice as fast)."""
    if not factor > 0:
        raise ValueError(f"time_scale must be > 0, got {factor}")
    if not math.isfinite(factor):
        raise ValueError(f"time_scale must be finite, got {factor}")
    with np.errstate(over="ignore"):
        arrival = trace.arrival_s * factor
    if not np.isfinite(arrival).all():
        raise ValueError(f"time_scale {factor} stretches the arrival times past any number")
    return _take(trace, slice(None), arrival)


def scale_rate(trace: Trace, factor: float, seed: int = 0) -> Trace:
    """Change the request rate by `factor` over the same duration, reproducibly.

    Each request is kept floor(factor) or ceil(factor) times (at random, so the expected
    count is `factor`; below 1 this is thinning). The original keeps its time; each extra copy
    arrives uniformly at random before the next original request, so bursts stay bursts.
    """
    n = len(trace)
    if not factor > 0:
        raise ValueError(f"rate_scale must be > 0, got {factor}")
    if not math.isfinite(factor):
        raise ValueError(f"rate_scale must be finite, got {factor}")
    if n * factor > MAX_REQUESTS:
        raise ValueError(f"rate_scale {factor} would make ~{n * factor:.3g} requests of {n}; "
                         f"at most {MAX_REQUESTS:.0e} fit in memory")
    rng = np.random.default_rng(seed)
    copies = int(factor) + (rng.random(n) < factor - int(factor))
    index = np.repeat(np.arange(n), copies)
    if not len(index):
        raise ValueError(f"rate_scale {factor} left no requests of {n}")
    mean_gap = trace.duration_s / (n - 1) if n > 1 else 0.0
    gap_to_next = np.diff(trace.arrival_s, append=trace.arrival_s[-1] + mean_gap)
    extra = np.r_[False, index[1:] == index[:-1]]  # copies after a request's first
    arrival = trace.arrival_s[index] + extra * rng.random(len(index)) * gap_to_next[index]
    order = np.argsort(arrival, kind="stable")
    return _take(trace, index[order], arrival[order])


def resample_blocks(trace: Trace, block_s: float, seed: int) -> Trace:
    """Another day like this one: the trace cut into blocks of `block_s` seconds, each slot
    refilled with the requests of a block drawn at random from itself or its neighbours (a
    local block bootstrap). Bursts and the order within a block are kept, and so is the
    shape over the day (the load never jumps further than a block away); which block's
    bursts arrive where is new. A last, shorter block stays where it is (moved, it would
    leave a gap or run past the end), and so does the lead-in (`before`)."""
    if not block_s > 0:
        raise ValueError(f"block_s must be > 0, got {block_s}")
    slots = int(trace.duration_s // block_s)
    if slots < 2:
        return trace
    rng = np.random.default_rng(seed)
    # Block i holds requests edges[i]:edges[i + 1]; block `slots` is the shorter last one.
    edges = np.r_[np.searchsorted(trace.arrival_s, np.arange(slots + 1) * block_s, side="left"), len(trace)]
    drawn = np.r_[np.clip(np.arange(slots) + rng.integers(-1, 2, slots), 0, slots - 1), slots]
    index = np.concatenate([np.arange(edges[b], edges[b + 1]) for b in drawn])
    shift = np.repeat((np.arange(slots + 1) - drawn) * block_s, edges[drawn + 1] - edges[drawn])
    return replace(_take(trace, index, trace.arrival_s[index] + shift), before=trace.before)


def save_trace(trace: Trace, path: str | Path) -> None:
    """Write the normalised CSV (`arrival_s` with microsecond precision)."""
    rows = zip(trace.arrival_s.tolist(), trace.prompt_tokens.tolist(), trace.output_tokens.tolist())
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("arrival_s,prompt_tokens,output_tokens\n")
        f.writelines(f"{t:.6f},{p},{o}\n" for t, p, o in rows)
