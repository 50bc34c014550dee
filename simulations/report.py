"""What a run leaves on disk: summary.json, report.md and plots (simulate); compare.json
and a comparison plot (compare)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..config.schema import Target  # noqa: E402
from .simulator import SimResult  # noqa: E402
from .summary import SUMMARY_KEYS  # noqa: E402
from .traces import Trace  # noqa: E402

PLOTS = {
    "capacity": "capacity.png",
    "ttft": "ttft.png",
    "cost": "cost.png",
}


def write_simulation_report(result: SimResult, trace: Trace, target: Target, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(result.summary, indent=2) + "\n")
    hours = np.asarray(result.timeline.time) / 3600
    _plot_capacity(result, trace, hours, out / PLOTS["capacity"])
    _plot_ttft(result, target, hours, out / PLOTS["ttft"])
    _plot_cost(result, hours, out / PLOTS["cost"])
    (out / "report.md").write_text(_markdown(result, trace, target))


def _plot_capacity(result: SimResult, trace: Trace, hours: np.ndarray, path: Path) -> None:
    tl = result.timeline
    fig, ax = plt.subplots(figsize=(10, 4))
    arrivals = np.diff(np.asarray(tl.arrivals), prepend=0)
    ticks = np.diff(np.asarray(tl.time), prepend=0)
    rate = np.divide(arrivals, ticks, out=np.zeros(len(ticks)), where=ticks > 0)
    ax.plot(hours, rate, color="0.6", lw=0.8, label="arrivals (req/s)")
    ax.set_ylabel("requests/s")
    twin = ax.twinx()
    twin.step(hours, tl.k8s_ready, where="post", color="tab:blue", label="Kubernetes ready")
    twin.step(hours, tl.modal_ready, where="post", color="tab:orange", label="Modal ready")
    twin.set_ylabel("ready replicas / containers")
    lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="upper left", fontsize=8)
    _save(fig, ax, f"{result.policy}: arrivals and ready capacity per pool ({trace.name})", path)


def _plot_ttft(result: SimResult, target: Target, hours: np.ndarray, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot(hours, result.timeline.ttft_p99, lw=0.9, label="TTFT p99 over the metrics window")
    ax.axhline(target.slo.ttft_seconds, color="tab:red", ls="--", label="TTFT SLO")
    ax.set_yscale("log")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=8)
    _save(fig, ax, f"{result.policy}: time to first token against the SLO", path)


def _plot_cost(result: SimResult, hours: np.ndarray, path: Path) -> None:
    tl = result.timeline
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot(hours, tl.cost_k8s, label="Kubernetes")
    ax.plot(hours, tl.cost_modal, label="Modal")
    ax.plot(hours, np.add(tl.cost_k8s, tl.cost_modal), color="k", lw=1, label="total")
    ax.set_ylabel("cumulative cost ($)")
    ax.legend(fontsize=8)
    _save(fig, ax, f"{result.policy}: cumulative cost per pool", path)


def _save(fig, ax, title: str, path: Path) -> None:
    ax.set_xlabel("hours")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _markdown(result: SimResult, trace: Trace, target: Target) -> str:
    s = result.summary
    rows = "\n".join(f"| {key} | {_fmt(s[key])} |" for key in SUMMARY_KEYS)
    failures = s.get("failures_by_reason") or {}
    failed = "\n".join(f"- {why}: {n}" for why, n in failures.items()) or "- none"
    return f"""# Simulation: `{result.policy}` on `{trace.name}`

{len(trace):,} requests over {trace.duration_s / 3600:.2f} h; target `{target.name}`
(profile `{target.profile}`, TTFT SLO {target.slo.ttft_seconds} s for
{target.slo.attainment:.0%} of requests).

**SLO attainment {s['slo_attainment']:.2%}, cost ${s['cost_total']:.2f}**
(Kubernetes ${s['cost_k8s']:.2f}, Modal ${s['cost_modal']:.2f}).

| metric | value |
|---|---|
{rows}

Failed requests by reason:
{failed}

![capacity]({PLOTS['capacity']})

![ttft]({PLOTS['ttft']})

![cost]({PLOTS['cost']})
"""


def write_comparison(
    summaries: dict[str, dict], target: Target, out: Path, title: str = "Policies on the same trace"
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(summaries, indent=2) + "\n")
    names = list(summaries)
    costs = [summaries[n]["cost_total"] for n in names]
    attain = [summaries[n]["slo_attainment"] for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colors = ["tab:green" if a >= target.slo.attainment else "tab:red" for a in attain]
    left.barh(names, costs, color=colors)
    left.set_xlabel("cost ($)  (green: meets the SLO)")
    right.barh(names, [100 * a for a in attain], color=colors)
    right.axvline(100 * target.slo.attainment, color="k", ls="--", lw=1)
    right.set_xlabel("requests within the TTFT SLO (%)")
    right.set_xlim(min(90.0, 100 * min(attain)), 100)
    right.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "compare.png", dpi=110)
    plt.close(fig)
