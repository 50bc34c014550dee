"""Cost at the SLO: the `controller` policy against every baseline, one compare per trace.

Issue 4's yardsticks, printed side by side: controller cost over the cheapest `hpa` (target
swept) that reaches the SLO, over `modal-only`, over `oracle`, over `static-peak`.
Run: python tests/benchmarks/bench_policies.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vllm_autoscaler.config.loader import load_config, shipped_path
from vllm_autoscaler.simulations import generators
from vllm_autoscaler.simulations.report import write_comparison
from vllm_autoscaler.simulations.run import compare
from vllm_autoscaler.simulations.traces import load_trace

HPA_TARGETS = (5, 10, 20, 40, 60)
POLICIES = ["controller", "modal-only", "static-peak", "oracle"] + [
    f"hpa:target_average={t}" for t in HPA_TARGETS
]
DATA = Path(str(shipped_path("default.yaml"))).parents[1] / "simulations" / "data"


def scenarios(quick: bool):
    hours = 6 if quick else 24
    yield "azure-conv", load_trace(DATA / "azure_conv_2023.csv")
    yield "azure-code", load_trace(DATA / "azure_code_2023.csv")
    yield "steady", generators.poisson(rate_per_s=5, duration_s=4 * 3600, seed=1)
    yield "diurnal", generators.diurnal(mean_rate=4, peak_to_trough=4, duration_s=hours * 3600,
                                        period_s=hours * 3600, seed=2)
    yield "step", generators.step(rates=(2, 8, 4, 10, 3), step_duration_s=2400, seed=3)
    yield "spiky", generators.spiky_daily(base_rate_per_s=1, peak_rate_per_s=10, peak_hours_per_day=3,
                                    duration_s=hours * 3600, seed=4)


def verdict(results: dict) -> dict:
    s = {name: r.summary for name, r in results.items()}
    target = load_config().targets[0].slo.attainment
    ok = {n: v for n, v in s.items() if v["slo_attainment"] >= target}
    hpas = [v["cost_total"] for n, v in ok.items() if n.startswith("hpa")]
    cost = s["controller"]["cost_total"]

    def ratio(other):
        return cost / other if other else None

    return {
        "controller_attainment": s["controller"]["slo_attainment"],
        "controller_cost": cost,
        "vs_cheapest_hpa_at_slo (<=0.65)": ratio(min(hpas)) if hpas else None,
        "vs_modal_only (<=0.80)": ratio(s["modal-only"]["cost_total"]),
        "vs_oracle (<=1.15)": ratio(s["oracle"]["cost_total"]),
        "vs_static_peak": ratio(s["static-peak"]["cost_total"]),
        "meets": sorted(ok),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="6-hour synthetic days")
    parser.add_argument("--out", type=Path, default=Path("out/bench_policies"))
    args = parser.parse_args()
    config = load_config()
    table = {}
    for name, trace in scenarios(args.quick):
        results = compare(trace, config, POLICIES, workers=2)
        table[name] = verdict(results)
        row = table[name]
        print(f"{name:>11}: {len(trace):>8,} req  controller {row['controller_attainment']:.2%} "
              f"${row['controller_cost']:.2f} | / hpa@slo {row['vs_cheapest_hpa_at_slo (<=0.65)'] or float('nan'):.2f}"
              f" / modal-only {row['vs_modal_only (<=0.80)']:.2f} / oracle {row['vs_oracle (<=1.15)']:.2f}"
              f" / static-peak {row['vs_static_peak']:.2f}", flush=True)
        summaries = {n: r.summary for n, r in results.items()}
        write_comparison(summaries, config.targets[0], args.out / name, f"{name}: {len(trace):,} requests")
    (args.out / "verdict.json").write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
