"""Cost at the SLO: the `controller` policy against every baseline, one compare per trace.

Issue 4's yardsticks, printed side by side: controller cost over the cheapest `hpa` (target
swept) that reaches the SLO, over `modal-only`, over `oracle`, over `static-peak`. A ratio
is only given against a baseline that reaches the SLO too (a cheaper policy that misses it
is no yardstick). The HPA is swept twice: on the same hybrid target (Modal's own autoscaler
takes what the pods cannot) and on Kubernetes alone, the usual set-up without this product.
The right-sized static pool is the cheapest fixed number of Kubernetes pods that reaches the
SLO, on each of the two set-ups.
Run: python tests/benchmarks/bench_policies.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vllm_autoscaler.config.loader import load_config, shipped_path
from vllm_autoscaler.simulations import generators
from vllm_autoscaler.simulations.hindsight import cheapest_static_pool, fewest_pods
from vllm_autoscaler.simulations.report import write_comparison
from vllm_autoscaler.simulations.run import compare, simulate
from vllm_autoscaler.simulations.traces import load_trace

HPA_TARGETS = (5, 10, 15, 20, 40)
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


def verdict(results: dict, k8s_only: dict, static: tuple | None, static_k8s_only: tuple | None) -> dict:
    """`results`: every policy on the hybrid target; `k8s_only`: the controller and the HPAs
    on Kubernetes alone; the right-sized static pools (pods, summary) of both set-ups."""
    s = {name: r.summary for name, r in results.items()}
    target = load_config().targets[0].slo.attainment
    ok = {n: v["cost_total"] for n, v in s.items() if v["slo_attainment"] >= target}
    ok_k8s = [r.summary["cost_total"] for n, r in k8s_only.items()
              if n.startswith("hpa") and r.summary["slo_attainment"] >= target]  # fmt: skip
    cost = s["controller"]["cost_total"]
    alone = k8s_only["controller"].summary

    def ratio(costs, cost=cost):
        return cost / min(costs) if costs else None

    return {
        "controller_attainment": s["controller"]["slo_attainment"],
        "controller_cost": cost,
        "vs_cheapest_hpa_at_slo (<=0.65)": ratio([c for n, c in ok.items() if n.startswith("hpa")]),
        "vs_cheapest_k8s_only_hpa_at_slo": ratio(ok_k8s),
        "vs_modal_only (<=0.80)": ratio([ok["modal-only"]] if "modal-only" in ok else []),
        "vs_oracle (<=1.15)": ratio([ok["oracle"]] if "oracle" in ok else []),
        "vs_cheapest_baseline_at_slo": ratio([c for n, c in ok.items() if n != "controller"]),
        "k8s_only_controller_attainment": alone["slo_attainment"],
        "k8s_only_controller_cost": alone["cost_total"],
        "k8s_only_controller_vs_cheapest_k8s_only_hpa_at_slo": ratio(ok_k8s, alone["cost_total"]),
        "right_sized_static_pods": static and static[0],
        "right_sized_static_cost": static and static[1]["cost_total"],
        "vs_right_sized_static (steady: <=1.05)": ratio([static[1]["cost_total"]] if static else []),
        "k8s_only_right_sized_static_pods": static_k8s_only and static_k8s_only[0],
        "k8s_only_right_sized_static_cost": static_k8s_only and static_k8s_only[1]["cost_total"],
        "k8s_only_controller_vs_right_sized_static": ratio(
            [static_k8s_only[1]["cost_total"]] if static_k8s_only else [], alone["cost_total"]
        ),
        "costs": {n: round(v["cost_total"], 2) for n, v in s.items()}
        | {f"k8s-only {n}": round(r.summary["cost_total"], 2) for n, r in k8s_only.items()},
        "attainment": {n: round(v["slo_attainment"], 4) for n, v in s.items()}
        | {f"k8s-only {n}": round(r.summary["slo_attainment"], 4) for n, r in k8s_only.items()},
    }


def fmt(value) -> str:
    return "  -  " if value is None else f"{value:5.2f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="6-hour synthetic days")
    parser.add_argument("--out", type=Path, default=Path("out/bench_policies"))
    args = parser.parse_args()
    config = load_config()
    k8s_only = load_config(overrides=["targets.0.modal.enabled=false"])
    alone = ["controller"] + [p for p in POLICIES if p.startswith("hpa")]
    table = {}
    for name, trace in scenarios(args.quick):
        results = compare(trace, config, POLICIES, workers=2)
        alone_static = fewest_pods(trace, k8s_only)
        hybrid_static = cheapest_static_pool(trace, config, fewest=alone_static)
        table[name] = row = verdict(
            results, compare(trace, k8s_only, alone, workers=2), hybrid_static, alone_static
        )
        print(f"{name:>11}: {len(trace):>8,} req  controller {row['controller_attainment']:.2%} "
              f"${row['controller_cost']:.2f} | / hpa@slo {fmt(row['vs_cheapest_hpa_at_slo (<=0.65)'])}"
              f" / k8s-only hpa@slo {fmt(row['vs_cheapest_k8s_only_hpa_at_slo'])}"
              f" / modal-only {fmt(row['vs_modal_only (<=0.80)'])} / oracle {fmt(row['vs_oracle (<=1.15)'])}"
              f" / cheapest baseline@slo {fmt(row['vs_cheapest_baseline_at_slo'])}"
              f" / right-sized static ({row['right_sized_static_pods']} pods)"
              f" {fmt(row['vs_right_sized_static (steady: <=1.05)'])}"
              f" || Kubernetes only: controller {row['k8s_only_controller_attainment']:.2%}"
              f" ${row['k8s_only_controller_cost']:.2f} / hpa@slo"
              f" {fmt(row['k8s_only_controller_vs_cheapest_k8s_only_hpa_at_slo'])}"
              f" / right-sized static ({row['k8s_only_right_sized_static_pods']} pods)"
              f" {fmt(row['k8s_only_controller_vs_right_sized_static'])}", flush=True)
        summaries = {n: r.summary for n, r in results.items()}
        write_comparison(summaries, config.targets[0], args.out / name, f"{name}: {len(trace):,} requests")
    (args.out / "verdict.json").write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
