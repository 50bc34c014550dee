"""Generated malformed inputs for the two parsers that read what users hand in: the trace
loader (simulations/traces.py) and the config loader (config/loader.py). Whatever the input,
each ends in a usable result or in its own clear error (TraceError, ConfigError) naming where
the problem is, never in another exception's traceback.

tests/simulations/test_traces.py and tests/test_config.py hold the worded examples; these
tests throw thousands of generated ones at the same entry points.
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vllm_autoscaler.config.loader import ConfigError, load_config, shipped_path
from vllm_autoscaler.config.schema import Config
from vllm_autoscaler.simulations.traces import FORMATS, Trace, TraceError, load_trace

MANY = settings(max_examples=1000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SOME = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def scratch() -> Path:
    """One file rewritten by every example (hypothesis runs them one after another)."""
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory) / "input"


# --- traces -----------------------------------------------------------------------------

# Fields as they go wrong in real files: numbers of every kind, dates good and bad, words,
# quotes, separators inside fields, blanks and non-ASCII text.
FIELDS = st.one_of(
    st.integers(-10**20, 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "nan", "inf", "-inf", "1e999", "0x10", "1_000", "٣", "12x",
                     '"5"', '"', "''", "a,b", "\t", "2023-11-16 18:17:03.9799600",
                     "2023-11-16 25:17:05.5", "2023-02-30 00:00:00", "2024-01-01T00:00:00+00:00",
                     "ChatGPT", "API log", "None", "null"]),
    st.text(max_size=12),
)


@st.composite
def trace_files(draw: st.DrawFn) -> str:
    """A trace file: a known header (or a near miss) and rows of plausible-to-absurd fields."""
    fmt = draw(st.sampled_from(FORMATS))
    header = ",".join(fmt.header)
    header = draw(st.sampled_from([header, header.upper(), f"\ufeff{header}",
                                   header.replace(",", ";"), header + ",extra", ""]))
    width = st.integers(len(fmt.header) - 1, len(fmt.header) + 1)
    rows = draw(st.lists(width.flatmap(lambda n: st.lists(FIELDS, min_size=n, max_size=n)),
                         max_size=12))
    lines = [header, *(",".join(row) for row in rows)]
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return newline.join(lines) + draw(st.sampled_from(["", newline, newline * 3]))


def assert_usable(trace: Trace) -> None:
    assert len(trace) >= 1
    assert np.all(np.isfinite(trace.arrival_s)) and np.all(trace.arrival_s >= 0)
    assert np.all(np.diff(trace.arrival_s) >= 0)
    assert np.all(trace.prompt_tokens >= 1) and np.all(trace.output_tokens >= 1)


def load_or_trace_error(path: Path, **options: object) -> Trace | None:
    try:
        trace = load_trace(path, **options)
    except TraceError as error:
        assert str(error).startswith(f"{path}"), error  # names the file (and the line)
        return None
    assert_usable(trace)
    return trace


@MANY
@given(text=trace_files(), skip=st.booleans())
def test_any_trace_file_loads_or_is_a_trace_error(scratch, text, skip):
    scratch.write_text(text, encoding="utf-8", errors="surrogatepass")
    load_or_trace_error(scratch, skip_bad_rows=skip)


@MANY
@given(data=st.binary(max_size=300))
def test_any_bytes_load_or_are_a_trace_error(scratch, data):
    scratch.write_bytes(data)
    load_or_trace_error(scratch)


GOOD = "arrival_s,prompt_tokens,output_tokens\n" + "".join(
    f"{i * 0.5},{10 + i},{20 + i}\n" for i in range(40))
NUMBERS = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))


@SOME
@given(start=NUMBERS, end=NUMBERS, rate=st.floats(allow_nan=True, allow_infinity=True),
       time=st.floats(allow_nan=True, allow_infinity=True))
def test_any_slice_and_scale_loads_or_is_a_trace_error(scratch, start, end, rate, time):
    scratch.write_text(GOOD)
    load_or_trace_error(scratch, start_s=start, end_s=end, rate_scale=rate, time_scale=time)


# --- configs ----------------------------------------------------------------------------

DEFAULT = yaml.safe_load(shipped_path("default.yaml").read_text())
JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(),
                                                         max_size=2))
YAML_SNIPPETS = st.sampled_from([
    "tick_seconds: 2001-13-01", "tick_seconds: !!float x", "tick_seconds: !!timestamp 2001-02-30",
    "a: !!binary xx", "a: !!python/object:os.system x", "a: &x [*x]", "? [a, b]\n: 1",
    "targets: [\n", "targets:\n- name: a\n  name: b", "\x00", "a: b: c", "- 1\n- 2", "42",
    "targets: " + "[" * 50 + "]" * 50, "metrics: {source: prometheus, prometheus: {url: 3}}",
])


def leaves(node: object, path: tuple = ()) -> list[tuple]:
    """Every path into a nested dict/list."""
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += leaves(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += leaves(value, (*path, index))
    return found


PATHS = [p for p in leaves(DEFAULT) if p]


@st.composite
def broken_configs(draw: st.DrawFn) -> dict:
    """The default config with a few values (or whole sections) replaced by junk."""
    config = copy.deepcopy(DEFAULT)
    for path in draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=3)):
        node = config
        for step in path[:-1]:
            try:
                node = node[step]
            except (KeyError, IndexError, TypeError):
                break
        else:
            key = path[-1]
            if isinstance(node, dict) or (isinstance(node, list) and isinstance(key, int)
                                          and key < len(node)):
                node[key] = draw(JUNK)
    return config


def load_or_config_error(path: Path, overrides: list[str] | None = None) -> Config | None:
    try:
        return load_config(path, overrides)
    except ConfigError as error:
        assert str(error), "an empty message"
        assert str(path) in str(error) or "--set" in str(error), error
        return None


@settings(MANY, max_examples=600)
@given(config=broken_configs())
def test_any_broken_config_loads_or_is_a_config_error(scratch, config):
    scratch.write_text(yaml.safe_dump(config))
    loaded = load_or_config_error(scratch)
    if loaded is not None:  # what validated is usable: the bounds hold
        for target in loaded.targets:
            pool = target.kubernetes_pool
            assert pool is None or pool.min_replicas <= pool.max_replicas
        assert math.isfinite(loaded.tick_seconds) and loaded.tick_seconds > 0


@MANY
@given(text=st.one_of(st.text(max_size=200), YAML_SNIPPETS,
                      st.tuples(YAML_SNIPPETS, st.text(max_size=30)).map("\n".join)))
def test_any_yaml_text_loads_or_is_a_config_error(scratch, text):
    scratch.write_text(text, encoding="utf-8", errors="surrogatepass")
    load_or_config_error(scratch)


KEYS = st.one_of(st.sampled_from(["tick_seconds", "targets.0.slo.ttft_seconds", "targets.5.name",
                                  "targets.0.kubernetes", "targets.x.y", "metrics..source", "",
                                  "log_level.deeper", "targets.0.kubernetes.max_replicas"]),
                 st.text(max_size=15))
VALUES = st.one_of(st.text(max_size=15), st.sampled_from(
    ["[", "{a: 1", "2001-13-01", "!!float x", "null", "-3", "1e999", ".nan", "[1, 2]", ""]))


@MANY
@given(overrides=st.lists(st.one_of(st.tuples(KEYS, VALUES).map("=".join), st.text(max_size=20)),
                          min_size=1, max_size=3))
def test_any_set_override_loads_or_is_a_config_error(overrides):
    load_or_config_error(shipped_path("default.yaml"), overrides)
