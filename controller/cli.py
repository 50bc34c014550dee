"""The `vllm-autoscaler` command."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..config.loader import ConfigError, load_config
from ..config.schema import Config
from ..controller.profile import ProfileError
from .logs import configure_logging

app = typer.Typer(
    help="Cost-aware autoscaler for vLLM on Kubernetes and Modal, with a trace-replay simulator.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="YAML config (default: the shipped one)")
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a config value: a.b.c=value (repeatable)"),
]
TraceOpt = Annotated[Path, typer.Option("--trace", "-t", help="Trace CSV (normalised, Azure or BurstGPT)")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory")]
TargetOpt = Annotated[Optional[str], typer.Option("--target", help="Target name (default: the first)")]
StartOpt = Annotated[Optional[float], typer.Option(help="Slice: start (s into the trace)")]
EndOpt = Annotated[Optional[float], typer.Option(help="Slice: end (s into the trace)")]
RateOpt = Annotated[float, typer.Option(help="Scale the request rate (same duration)")]
ClockOpt = Annotated[float, typer.Option(help="Scale time (0.5 = twice as fast)")]
SkipOpt = Annotated[bool, typer.Option(help="Skip and count bad trace rows instead of failing")]


def fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(2)


def _config(path: Path | None, overrides: list[str] | None) -> Config:
    try:
        config = load_config(path, overrides)
    except ConfigError as exc:
        fail(str(exc))
    configure_logging(config.log_level)
    return config


def _trace(path: Path, start, end, rate_scale, time_scale, skip_bad_rows, seed):
    from ..simulations.traces import load_trace

    try:
        return load_trace(
            path, start_s=start, end_s=end, rate_scale=rate_scale, time_scale=time_scale,
            skip_bad_rows=skip_bad_rows, seed=seed,
        )  # fmt: skip
    except (ValueError, OSError) as exc:
        fail(str(exc))


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(), console=console, transient=True, disable=not console.is_terminal,
    )  # fmt: skip


@app.command()
def simulate(
    trace: TraceOpt,
    out: OutOpt = Path("out/simulate"),
    policy: Annotated[str, typer.Option(help="Policy name, or name:key=value")] = "controller",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    target: TargetOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    rate_scale: RateOpt = 1.0,
    time_scale: ClockOpt = 1.0,
    skip_bad_rows: SkipOpt = False,
) -> None:
    """Replay a trace through one policy; write summary.json, report.md and plots."""
    from ..simulations.report import write_simulation_report
    from ..simulations.run import pick_target
    from ..simulations.run import simulate as run_simulation

    cfg = _config(config, set_)
    requests = _trace(trace, start, end, rate_scale, time_scale, skip_bad_rows, cfg.simulation.seed)
    try:
        chosen = pick_target(cfg, target)
        with _progress() as bar:
            task = bar.add_task(f"simulating {policy}", total=requests.duration_s or 1)
            result = run_simulation(requests, cfg, policy, target, lambda t: bar.update(task, completed=t))
    except (ConfigError, ProfileError, ValueError) as exc:
        fail(str(exc))
    write_simulation_report(result, requests, chosen, out)
    s = result.summary
    console.print(
        f"{policy}: {s['requests']:,} requests, SLO attainment {s['slo_attainment']:.2%}, "
        f"cost ${s['cost_total']:.2f}, {s['sim_wall_seconds']:.1f} s -> {out}/report.md"
    )


@app.command()
def compare(
    trace: TraceOpt,
    policies: Annotated[str, typer.Option(help="Comma-separated policies (name or name:key=value)")],
    out: OutOpt = Path("out/compare"),
    config: ConfigOpt = None,
    set_: SetOpt = None,
    target: TargetOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    rate_scale: RateOpt = 1.0,
    time_scale: ClockOpt = 1.0,
    skip_bad_rows: SkipOpt = False,
    workers: Annotated[int, typer.Option(help="Parallel processes")] = os.cpu_count() or 1,
) -> None:
    """Run several policies on the same trace; write compare.json and a comparison plot."""
    from ..simulations.report import write_comparison
    from ..simulations.run import compare as run_compare
    from ..simulations.run import pick_target

    cfg = _config(config, set_)
    requests = _trace(trace, start, end, rate_scale, time_scale, skip_bad_rows, cfg.simulation.seed)
    specs = [p for p in policies.split(",") if p.strip()]
    try:
        chosen = pick_target(cfg, target)
        with _progress() as bar:
            task = bar.add_task("policies", total=len(specs))
            results = run_compare(
                requests, cfg, specs, target, workers=min(workers, len(specs)),
                on_done=lambda r: bar.advance(task),
            )  # fmt: skip
    except (ConfigError, ProfileError, ValueError) as exc:
        fail(str(exc))
    write_comparison({name: r.summary for name, r in results.items()}, chosen, out)
    table = Table(title=f"{requests.name}: {len(requests):,} requests")
    for column in ("policy", "SLO attainment", "TTFT p99 (s)", "cost ($)", "K8s GPU-h", "Modal GPU-h", "failed"):
        table.add_column(column, justify="right")
    for name, result in results.items():
        s = result.summary
        table.add_row(
            name, f"{s['slo_attainment']:.2%}", f"{s['ttft_p99'] or 0:.2f}", f"{s['cost_total']:.2f}",
            f"{s['gpu_hours_k8s']:.1f}", f"{s['gpu_hours_modal']:.1f}", str(s["failed"]),
        )  # fmt: skip
    Console(width=max(Console().width, 120)).print(table)
    console.print(f"-> {out}/compare.json, {out}/compare.png")


@app.command()
def tune(
    trace: TraceOpt,
    trials: Annotated[int, typer.Option(help="Trials to run (added to a resumed study)")],
    out: OutOpt = Path("out/tune"),
    config: ConfigOpt = None,
    set_: SetOpt = None,
    target: TargetOpt = None,
    split: Annotated[float, typer.Option(help="Share of the trace (by time) tuned on; the rest is held out")] = 0.7,
    storage: Annotated[
        Optional[str], typer.Option(help="Optuna storage: database URL or journal file (default OUT/study.journal)")
    ] = None,
    study_name: Annotated[str, typer.Option(help="Study in the storage; the same one resumes")] = "vllm-autoscaler",
    workers: Annotated[int, typer.Option(help="Parallel trial processes")] = os.cpu_count() or 1,
    gpu_choice: Annotated[
        Optional[list[str]],
        typer.Option(help="Also choose the GPU: PROFILE:K8S_PRICE_PER_GPU_HOUR:MODAL_PRICE_PER_GPU_SECOND (repeatable)"),
    ] = None,
    min_gain: Annotated[
        float, typer.Option(help="Keep the starting config unless a trial is this much cheaper on the tuning part")
    ] = 0.05,
    resamples: Annotated[
        int, typer.Option(help="Copies of the tuning part, its 5-minute blocks redrawn, that every trial also replays")
    ] = 4,
    start: StartOpt = None,
    end: EndOpt = None,
    rate_scale: RateOpt = 1.0,
    time_scale: ClockOpt = 1.0,
    skip_bad_rows: SkipOpt = False,
) -> None:
    """Tune the controller's parameters: the cheapest config that meets the SLO on the first part
    of the trace, checked on the rest; write tuned.yaml, tune.json and pareto.png."""
    from ..simulations.tune import GpuChoice, TuneOptions
    from ..simulations.tune import tune as run_tune

    cfg = _config(config, set_)
    requests = _trace(trace, start, end, rate_scale, time_scale, skip_bad_rows, cfg.simulation.seed)
    try:
        choices = tuple(GpuChoice.parse(c) for c in gpu_choice or [])
        options = TuneOptions(trials, split, storage, study_name, workers, target, choices, min_gain, resamples)
        with _progress() as bar:
            task = bar.add_task("trials", total=trials)
            report = run_tune(requests, cfg, out, options, lambda done: bar.update(task, completed=done))
    except (ConfigError, ProfileError, ValueError) as exc:
        fail(str(exc))
    best = report["best_trial"]
    kept = " (the starting config: no trial was enough cheaper)" if report["kept_starting_config"] else ""
    resampled = f" and its {report['resamples']} resamples" if report["resamples"] else ""
    console.print(
        f"chosen of {report['study']['trials']} trials: trial {best['number']}{kept}, ${best['cost']:.2f} at "
        f"{best['slo_attainment']:.2%} on the tuning part{resampled}; held out:"
    )
    if report["saturated"]:
        console.print(
            f"[yellow]note: the chosen config asked for a pool's maximum {best['at_max_share']:.0%} of the "
            "tuning part: the SLO needed every replica the bounds allow, so trials could hardly differ in "
            "cost there; raise max_replicas / max_containers if you have the GPUs, or tune on another part[/]"
        )
    for name, s in report["held_out"].items():
        pods = f" ({s['kubernetes_replicas']} pods)" if "kubernetes_replicas" in s else ""
        console.print(f"  {name:>12}: ${s['cost_total']:.2f}, SLO attainment {s['slo_attainment']:.2%}{pods}")
    if report["held_out_note"]:
        console.print(f"[yellow]note: {report['held_out_note']}[/]")
    if importances := report["cost_importances"]:
        top = ", ".join(f"{name} {share:.0%}" for name, share in list(importances.items())[:3])
        console.print(f"what set the cheapest trials that met the SLO apart: {top}")
    console.print(f"-> {out}/tuned.yaml, {out}/tune.json, {out}/pareto.png")


@app.command()
def generate(
    kind: Annotated[str, typer.Argument(help="poisson, diurnal, step, bursty or spiky")],
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV to write")],
    param: Annotated[
        Optional[list[str]], typer.Option("--param", "-p", help="Generator parameter key=value")
    ] = None,
    seed: int = 0,
) -> None:
    """Write a synthetic trace (seeded) as a normalised CSV."""
    import yaml

    from ..simulations.generators import GENERATORS
    from ..simulations.traces import save_trace

    if kind not in GENERATORS:
        fail(f"unknown generator {kind!r}; choose from {', '.join(GENERATORS)}")
    kwargs = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--param {item!r}: expected key=value")
        kwargs[key] = yaml.safe_load(value)
    try:
        trace = GENERATORS[kind](seed=seed, **kwargs)
    except (TypeError, ValueError) as exc:
        fail(f"{kind}: {exc}")
    save_trace(trace, out)
    console.print(f"{len(trace):,} requests over {trace.duration_s / 3600:.2f} h -> {out}")


@app.command()
def profile(
    endpoint: Annotated[str, typer.Option(help="Base URL of a live vLLM server")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Profile YAML to write (plot and CSV beside it)")],
    model: Annotated[Optional[str], typer.Option(help="Served model (default: the only one)")] = None,
    trace: Annotated[Optional[Path], typer.Option("--trace", "-t", help="Draw lengths from this trace")] = None,
    prompt_tokens: Annotated[int, typer.Option(help="Prompt length (without --trace)")] = 256,
    output_tokens: Annotated[int, typer.Option(help="Output length (without --trace)")] = 64,
    concurrency: Annotated[str, typer.Option(help="Comma-separated concurrency steps")] = "1,2,4,8,16",
    duration_per_step: Annotated[float, typer.Option(help="Seconds of load per step")] = 20.0,
    max_num_seqs: Annotated[Optional[int], typer.Option(help="The server's --max-num-seqs (default: seen)")] = None,
    max_num_batched_tokens: Annotated[int, typer.Option(help="The server's --max-num-batched-tokens")] = 2048,
    kv_watermark: Annotated[float, typer.Option(help="The server's --watermark (vLLM V1's default: 0)")] = 0.0,
    gpu: Annotated[str, typer.Option(help="Accelerator name recorded in the profile")] = "unspecified",
    seed: int = 0,
) -> None:
    """Measure a live vLLM server under a load sweep and fit its replica profile."""
    import asyncio

    from ..simulations.loadgen import EndpointError
    from ..simulations.profiling import (
        Lengths, ProfilingError, SweepOptions, build_profile, fit, fit_summary, resolve_max_num_seqs,
        run_sweep, write_profile,
    )  # fmt: skip

    lengths = (Lengths.of_trace(_trace(trace, None, None, 1.0, 1.0, False, seed)) if trace
               else Lengths.fixed(prompt_tokens, output_tokens))  # fmt: skip
    try:
        steps = tuple(int(c) for c in concurrency.split(","))
    except ValueError:
        fail(f"--concurrency {concurrency!r}: expected comma-separated whole numbers, e.g. 1,2,4,8")
    if min(steps) < 1:
        fail(f"--concurrency {concurrency!r}: every step needs at least 1 request in flight")
    try:
        options = SweepOptions(lengths, steps, duration_per_step, seed, model)
        sweep = asyncio.run(run_sweep(endpoint, options, lambda stage: console.print(f"{stage} ...")))
        seqs = resolve_max_num_seqs(sweep, max_num_seqs)
        fitted = fit(sweep.measurements, seqs[0])
        result = build_profile(sweep, fitted, out.stem, gpu, seqs, max_num_batched_tokens, kv_watermark)
    except (EndpointError, ProfilingError, ProfileError, ValueError) as exc:
        fail(str(exc))
    written = write_profile(result, fitted, sweep, out)
    for line in fit_summary(fitted):
        console.print(line)
    console.print(f"{len(sweep.measurements.sent)} requests -> {', '.join(map(str, written))}")


@app.command()
def fidelity(
    endpoint: Annotated[str, typer.Option(help="Base URL of a live vLLM server")],
    profile: Annotated[Path, typer.Option(help="Replica profile fitted on another load sweep")],
    trace: TraceOpt,
    out: OutOpt = Path("out/fidelity"),
    model: Annotated[Optional[str], typer.Option(help="Served model (default: the only one)")] = None,
    start: StartOpt = None,
    end: EndOpt = None,
    rate_scale: RateOpt = 1.0,
    burst: Annotated[
        Optional[str], typer.Option(help="START:END:FACTOR: multiply the rate over that stretch (s into the slice)")
    ] = None,
    seed: int = 0,
    engine_log: Annotated[
        Optional[Path], typer.Option(help="The server's log with --enable-logging-iteration-details: "
                                          "also simulate at the speed it had during the replay")
    ] = None,
) -> None:
    """Replay a trace slice in real time against a live server and through the simulator with
    the profile (one static replica); write fidelity.md, fidelity.json and fidelity.png."""
    from ..simulations.fidelity import Burst, FidelityOptions, run_fidelity
    from ..simulations.loadgen import EndpointError

    requests = _trace(trace, start, end, rate_scale, 1.0, False, seed)
    try:
        options = FidelityOptions(profile, Burst.parse(burst) if burst else None, model, seed, engine_log)
        report = run_fidelity(endpoint, requests, options, out)
    except (EndpointError, ProfileError, ConfigError, ValueError) as exc:
        fail(str(exc))
    for stretch, r in report["stretches"].items():
        errors = ", ".join(f"{k} {v:+.1%}" for k, v in r["relative_error"].items())
        console.print(f"{stretch}: {errors}")
    for stretch, r in report.get("at_measured_speed", {}).get("stretches", {}).items():
        errors = ", ".join(f"{k} {v:+.1%}" for k, v in r["relative_error"].items())
        console.print(f"{stretch}, at the server's measured speed: {errors}")
    if "error" in report.get("at_measured_speed", {}):
        console.print(f"no figures at the server's measured speed: {report['at_measured_speed']['error']}")
    console.print(f"-> {out}/fidelity.md, {out}/fidelity.json, {out}/fidelity.png")


@app.command("check-config")
def check_config(
    path: Annotated[Path, typer.Argument(help="YAML config to validate")],
    set_: SetOpt = None,
) -> None:
    """Validate a config file (and its replica profiles); exit 2 with the reason if invalid."""
    from .profile import load_profile

    cfg = _config(path, set_)
    try:
        for target in cfg.targets:
            load_profile(target.profile)
    except ProfileError as exc:
        fail(str(exc))
    console.print(f"{path}: ok ({len(cfg.targets)} target(s))")


@app.command()
def run(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    dry_run: Annotated[bool, typer.Option(help="Log what would change; write nothing")] = False,
    port: Annotated[int, typer.Option(help="HTTP port of /healthz, /readyz, /metrics")] = 8080,
    host: Annotated[str, typer.Option(help="Address the HTTP port listens on")] = "0.0.0.0",
    kubeconfig: Annotated[
        Optional[Path], typer.Option(help="Kubeconfig (default: in-cluster, $KUBECONFIG)")
    ] = None,
) -> None:
    """Run the controller: every tick, observe each target, decide, scale its pools."""
    from .daemon import Daemon, StartupError, run_daemon

    cfg = _config(config, set_)
    try:
        daemon = Daemon(
            cfg, config_path=config, overrides=set_ or [], dry_run=dry_run,
            kubeconfig=str(kubeconfig) if kubeconfig else None, host=host, port=port,
        )  # fmt: skip
        code = run_daemon(daemon)
    except StartupError as exc:
        fail(str(exc))
    raise typer.Exit(code)


def main() -> None:
    app()
