"""Scale: orchestration cost per task step, and a sweep's driver cost per trial.

1. Generated pipelines of ``--steps`` small task steps (``bench/scale_pipelines.py``): a chain,
   a wide fan-out/fan-in, and one step mapped over ``--steps`` items, each run cold and then
   again unchanged (every step a cache hit), ``--rounds`` times (medians). Orchestration per step
   (per item of the mapped step) is the run's time from its start record to its end record,
   divided by the steps, set against one bare Ray task round trip
   (``ray.get(f.remote())``) measured in the same run; a cold run's per-step breakdown (medians)
   is read from its events. With ``--before DIR`` (a checkout of other code), that code's runs
   alternate with these, for ratios measured side by side.
2. A sweep of ``--trials`` tiny trials (one DDP worker, three epochs of a linear model, random
   search, FIFO): the driver process's CPU time per trial (its bookkeeping: Tune's controller,
   this project's callbacks, events and MLflow trial runs) and its memory (RSS sampled every
   second) as trials finish: flat memory means no per-trial growth.

    .venv/bin/python bench/scale.py                      # → bench/results/scale.json
    .venv/bin/python bench/scale.py --steps 50 --trials 10
    .venv/bin/python bench/scale.py --skip-pipelines     # the sweep only (keeps the rest of the file)
    .venv/bin/python bench/scale.py --skip-sweep --rounds 3 --before /work/main   # side by side
    .venv/bin/python bench/scale.py --only pipelines --shapes mapped            # a 200-item mapped step
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "bench"
BIN = Path(sys.executable).parent
RESULTS = HERE / "results"
sys.path.insert(0, str(REPO))

from raytrain_orch.core import constants  # noqa: E402
from raytrain_orch.store.state import RunStore  # noqa: E402
from raytrain_orch.store.storage import Storage  # noqa: E402
from tests.object_store import s3_server  # noqa: E402


def write_config(directory: Path, pipeline: str, steps: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    config = {
        "name": f"scale-{pipeline}",
        "pipeline": f"scale_pipelines:{pipeline}",
        "storage": str(directory / "runs"),
        "mlflow": {"tracking_uri": f"sqlite:///{directory.parent / 'mlflow.db'}", "experiment": f"scale-{pipeline}"},
        "steps": steps,
        **(extra or {}),
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(config: Path, env: dict[str, str], monitor: bool = False, code: Path = REPO) -> dict[str, Any]:
    """``rto run CONFIG`` in a new process, with the code of ``code`` (from its ``bench/``, where
    the pipelines live)."""
    started = time.time()
    process = subprocess.Popen(
        [sys.executable, "-m", "raytrain_orch", "run", str(config)],
        cwd=code / "bench",
        env={**os.environ, **env, "PYTHONPATH": str(code)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    samples: list[dict[str, float]] = []
    if monitor:
        threading.Thread(target=_sample, args=(process.pid, config.parent / "runs", samples), daemon=True).start()
    output, _ = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"rto run {config} failed ({process.returncode}):\n{output[-4000:]}")
    run_dir = max(
        (config.parent / "runs" / "runs").iterdir(),
        key=lambda d: json.loads((d / "state.json").read_text())["created_at"],
    )  # this run's
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    span = {e["event"]: e["ts"] for e in events if e["event"] in ("run_started", "run_finished")}
    return {
        "wall_s": time.time() - started,
        "run_s": span["run_finished"] - span["run_started"],
        "events": events,
        "samples": samples,
    }


def _sample(pid: int, runs: Path, samples: list[dict[str, float]]) -> None:
    """The driver's own RSS and CPU time (not its children's) each second, with trials ended so far."""
    try:
        process = psutil.Process(pid)
        while process.is_running():
            cpu = process.cpu_times()
            ended = 0
            for events in runs.glob("runs/*/events.jsonl"):
                text = events.read_text()
                ended = text.count('"trial_finished"') + text.count('"trial_stopped"')
            samples.append(
                {
                    "t": time.time(),
                    "rss_mb": process.memory_info().rss / 2**20,
                    "cpu_s": cpu.user + cpu.system,
                    "trials_ended": ended,
                }
            )
            time.sleep(1.0)
    except psutil.Error:
        return


def bare_task_round_trip(n: int = 200) -> dict[str, float]:
    """One bare Ray task round trip on a warm local Ray, the floor of any task step."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:

        @ray.remote(num_cpus=0.5)
        def step(value: float) -> float:
            return value + 1.0

        ray.get([step.remote(0.0) for _ in range(20)])  # warm the worker pool
        times = []
        for _ in range(n):
            began = time.perf_counter()
            ray.get(step.remote(0.0))
            times.append(time.perf_counter() - began)
        return {
            "median_ms": round(1000 * statistics.median(times), 3),
            "p90_ms": round(1000 * sorted(times)[int(0.9 * n)], 3),
        }
    finally:
        ray.shutdown()


def pipelines(
    scratch: Path, steps: int, rounds: int, before: Path | None, shapes: tuple[str, ...] = ("chain", "fan", "mapped")
) -> dict[str, Any]:
    """Each shape cold and cached, ``rounds`` times, alternating with ``before``'s code. A mapped
    step's per-step figure is per item (``steps`` items)."""
    env = {"RTO_BENCH_STEPS": str(steps)}
    sides = {"now": REPO, **({"before": before} if before else {})}
    out: dict[str, Any] = {}
    for shape in shapes:
        names = {
            "chain": [f"s{i:03d}" for i in range(steps)],
            "fan": ["source", *[f"w{i:03d}" for i in range(1, steps - 1)], "sink"],
            "mapped": ["source", "work", "sink"],  # work: one unit per item, `steps` of them
        }[shape]
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {side: {"cold": [], "cached": []} for side in sides}
        for turn in range(rounds):
            for side, code in sides.items():
                directory = scratch / f"{shape}-{side}-{turn}"
                directory.mkdir()
                config = write_config(directory, shape, {name: {"resources": {"CPU": 1}} for name in names})
                runs[side]["cold"].append(run(config, env, code=code))
                runs[side]["cached"].append(run(config, env, code=code))
                print(f"{shape} {side}: cold {runs[side]['cold'][-1]['run_s']:.2f} s", flush=True)
        figures = {side: _figures(found, steps) for side, found in runs.items()}
        out[shape] = {"steps": steps, "rounds": rounds, **figures.pop("now"), **figures}
        print(f"{shape}: {json.dumps(out[shape])}", flush=True)
    return out


def _figures(runs: dict[str, list[dict[str, Any]]], steps: int) -> dict[str, Any]:
    """Medians over the rounds: each kind of run's times, and a cold run's per-step breakdown."""
    figures: dict[str, Any] = {}
    for kind, found in runs.items():
        run_s = statistics.median(r["run_s"] for r in found)
        figures[kind] = {
            "wall_s": round(statistics.median(r["wall_s"] for r in found), 2),
            "run_s": round(run_s, 2),
            "per_step_ms": round(1000 * run_s / steps, 1),
            "run_s_all": [round(r["run_s"], 2) for r in found],
        }
    breakdowns = [step_breakdown(r["events"]) for r in runs["cold"]]
    figures["cold_per_step_ms (median step)"] = {
        k: round(statistics.median(b[k] for b in breakdowns), 2) for k in breakdowns[0]
    }
    return figures


def step_breakdown(events: list[dict[str, Any]]) -> dict[str, float]:
    """A cold run's median step, in ms: from its start record to its admission (the lease; sent by
    the step's thread), from there to its end record (the task and its result), and from that to
    the next step's start record (the driver's bookkeeping between steps)."""
    started, admitted, ended = {}, {}, {}
    for e in events:
        step = e.get("step")
        if e["event"] == "step_started":
            started[step] = e["ts"]
        elif e["event"] == "step_admitted":
            admitted[step] = e.get("sent_ts", e["ts"])
        elif e["event"] == "step_succeeded":
            ended[step] = e["ts"]
    done = sorted((started[s], admitted[s], ended[s]) for s in ended if s in started and s in admitted)
    between = [later[0] - earlier[2] for earlier, later in zip(done, done[1:], strict=False) if later[0] >= earlier[2]]
    return {
        "start to admitted": 1000 * statistics.median(a - s for s, a, _ in done),
        "admitted to end": 1000 * statistics.median(e - a for _, a, e in done),
        "end to the next start": 1000 * statistics.median(between) if between else 0.0,
    }


def sweep(scratch: Path, trials: int) -> dict[str, Any]:
    directory = scratch / "sweep"
    directory.mkdir()
    steps = {
        "train": {
            "params": {"epochs": 3},
            "scaling": {"num_workers": 1, "resources_per_worker": {"CPU": 0.5}},
            "checkpoint": {"num_to_keep": 1},
        }
    }
    extra = {
        "sweep": {
            "step": "train",
            "metric": "loss",
            "mode": "min",
            "num_samples": trials,
            "searcher": "random",
            "scheduler": "fifo",
            "space": {"lr": {"loguniform": [0.001, 0.1]}},
        }
    }
    config = write_config(directory, "sweep", steps, extra)
    result = run(config, {}, monitor=True)
    samples = [s for s in result["samples"] if s["trials_ended"] > 0]
    ended = [e for e in result["events"] if e["event"] in ("trial_finished", "trial_stopped")]
    first, last = samples[0], samples[-1]
    overheads = trial_overheads(result["events"])
    tenth = next((s for s in samples if s["trials_ended"] >= max(1, trials // 10)), first)
    cpu_per_trial = (last["cpu_s"] - tenth["cpu_s"]) / max(1, last["trials_ended"] - tenth["trials_ended"])
    return {
        "trials": trials,
        "trials_ended": len(ended),
        "wall_s": round(result["wall_s"], 1),
        "driver_cpu_s_total": round(last["cpu_s"], 2),
        "driver_cpu_s_per_trial": round(cpu_per_trial, 3),
        "driver_rss_mb": {
            f"after {tenth['trials_ended']} trials": round(tenth["rss_mb"], 1),
            f"after {last['trials_ended']} trials": round(last["rss_mb"], 1),
            "peak": round(max(s["rss_mb"] for s in result["samples"]), 1),
        },
        "trial_overhead_s (a trial's wall time minus its epochs' own work)": {
            "median": round(statistics.median(overheads), 2),
            "min": round(min(overheads), 2),
            "max": round(max(overheads), 2),
            "n": len(overheads),
        },
        "wall_s_per_trial": round(result["wall_s"] / max(1, len(ended)), 2),
        "driver_rss_growth_kb_per_trial": round(
            1024 * (last["rss_mb"] - tenth["rss_mb"]) / max(1, last["trials_ended"] - tenth["trials_ended"]), 1
        ),
    }


def trial_overheads(events: list[dict[str, Any]]) -> list[float]:
    """Per trial: from its start to its end record, less the time its epochs' own work took."""
    started, work, ended = {}, {}, {}
    for e in events:
        trial = e.get("trial")
        if trial is None:
            continue
        if e["event"] == "trial_started":
            started[trial] = e["ts"]
        elif e["event"] == "epoch":
            work[trial] = work.get(trial, 0.0) + e.get("epoch_s", 0.0)
        elif e["event"] in ("trial_finished", "trial_stopped"):
            ended[trial] = e["ts"]
    return [ended[t] - started[t] - work.get(t, 0.0) for t in ended if t in started]


def eventlog(scratch: Path, epochs: int) -> dict[str, Any]:
    """The long run on S3 and on a local directory, side by side on one warm runtime."""
    directory = scratch / "eventlog"
    directory.mkdir()
    recording = directory / "moto-recording.jsonl"
    os.environ["MOTO_RECORDER_FILEPATH"] = str(recording)  # where moto's server, started next, records
    env = {"RTO_HOME": str(directory / "home")}  # the runs' own runtime
    try:
        with s3_server() as s3:
            os.environ.update(s3.env())  # this process reads the bucket too; the runs inherit it
            bucket = f"s3://{s3.bucket()}/rto-runs"
            _long_run(directory / "warm", str(directory / "warm" / "runs"), 3, env)  # starts the runtime
            local = _long_run(directory / "local", str(directory / "local" / "runs"), epochs, env)
            _recorder(s3.endpoint, "start-recording")
            remote = _long_run(directory / "s3", bucket, epochs, env)
            _recorder(s3.endpoint, "stop-recording")
            written = _bytes_written(recording, f"/runs/{remote['run_id']}/{constants.EVENTS_DIR}/")
            events_dir = (constants.RUNS_DIR, remote["run_id"], constants.EVENTS_DIR)
            storage = Storage(bucket)
            objects = storage.listdir(*events_dir)
            size = sum(len(storage.read_bytes(*events_dir, name)) for name in objects)
    finally:
        subprocess.run([str(BIN / "rto"), "down", "--force"], cwd=HERE, env={**os.environ, **env}, check=False)
    return {
        "epochs": epochs,
        "wall_s": {"local": local["wall_s"], "s3": remote["wall_s"]},
        "s3 / local wall (target ≤ 1.2)": round(remote["wall_s"] / local["wall_s"], 3),
        "run_s (run_started → run_finished)": {"local": local["run_s"], "s3": remote["run_s"]},
        "events": remote["events"],
        "event log on s3": {
            "final size (bytes)": size,
            "objects at the end": len(objects),
            "bytes written": written["bytes"],
            "uploads": written["uploads"],
            "bytes written / final size (target ≤ 3)": round(written["bytes"] / size, 3),
        },
        "driver RSS (MB) by epochs recorded": {"local": local["rss"], "s3": remote["rss"]},
    }


def _long_run(directory: Path, storage: str, epochs: int, env: dict[str, str]) -> dict[str, Any]:
    """One ``rto run`` of the ``long`` pipeline; its wall time, its driver's RSS by epochs recorded."""
    directory.mkdir()
    steps = {"train": {"params": {"epochs": epochs}, "checkpoint": {"num_to_keep": 1}}}
    config = write_config(directory, "long", steps)
    raw = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**raw, "storage": storage}, sort_keys=False))
    began = time.time()
    process = subprocess.Popen(
        [str(BIN / "rto"), "run", str(config), "--no-cache"],
        cwd=HERE,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    samples: list[tuple[float, float]] = []
    threading.Thread(target=_rss, args=(process.pid, samples), daemon=True).start()
    _, errors = process.communicate()
    wall = time.time() - began
    if process.returncode != 0:
        raise SystemExit(f"rto run {config} failed ({process.returncode}):\n{errors[-4000:]}")
    store = RunStore(Storage(storage))
    run_id = store.latest().run_id
    events = store.events(run_id)
    span = {e["event"]: e["ts"] for e in events if e["event"] in ("run_started", "run_finished")}
    stamps = sorted(e["ts"] for e in events if e["event"] == "epoch")
    rss = {}
    for fraction in (0.1, 0.25, 0.5, 0.75, 1.0):  # the RSS sampled once the run had recorded that many epochs
        mark = stamps[max(0, int(fraction * len(stamps)) - 1)]
        rss[f"{int(fraction * len(stamps))} epochs"] = next((round(m, 1) for t, m in samples if t >= mark), None)
    rss["peak"] = round(max(m for _, m in samples), 1)
    first, last = rss[f"{int(0.1 * len(stamps))} epochs"], rss[f"{len(stamps)} epochs"]
    if first is not None and last is not None:
        rss["growth from 10 % to 100 % of the epochs"] = round(last - first, 1)
    return {
        "run_id": run_id,
        "wall_s": round(wall, 2),
        "run_s": round(span["run_finished"] - span["run_started"], 2),
        "events": len(events),
        "rss": rss,
    }


def _rss(pid: int, samples: list[tuple[float, float]]) -> None:
    """The driver's RSS (MB) twice a second."""
    try:
        process = psutil.Process(pid)
        while process.is_running():
            samples.append((time.time(), process.memory_info().rss / 2**20))
            time.sleep(0.5)
    except psutil.Error:
        return


def _recorder(endpoint: str, action: str) -> None:
    with urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/recorder/{action}", method="POST")):
        pass


def _bytes_written(recording: Path, prefix: str) -> dict[str, int]:
    """The bytes uploaded below ``prefix`` (a single PUT's length, or a multipart part's decoded one)."""
    total = uploads = 0
    for line in recording.read_text().splitlines():
        request = json.loads(line)
        if request["method"] != "PUT" or prefix not in request["url"]:
            continue
        headers = {k.lower(): v for k, v in request["headers"].items()}
        size = int(headers.get("x-amz-decoded-content-length") or headers.get("content-length") or 0)
        total += size
        uploads += size > 0
    return {"bytes": total, "uploads": uploads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--skip-pipelines", action="store_true")
    parser.add_argument("--epochs", type=int, default=5000, help="the event log's long run")
    parser.add_argument(
        "--only", choices=["pipelines", "sweep", "eventlog"], help="run one section (keeps the rest of the file)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs of each pipeline shape (medians)")
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=["chain", "fan", "mapped"],
        help="the pipeline shapes (keeps the others' results)",
    )
    parser.add_argument("--before", type=Path, help="a checkout of other code, run alternating with this one")
    parser.add_argument("--out", default=str(RESULTS / "scale.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rto-scale-") as scratch_dir:
        scratch = Path(scratch_dir)
        result: dict[str, Any] = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
        sections = {
            "pipelines": not args.skip_pipelines and args.only in (None, "pipelines"),
            "sweep": not args.skip_sweep and args.only in (None, "sweep"),
            "eventlog": args.only in (None, "eventlog"),
        }
        if sections["pipelines"]:
            result["bare_ray_task_round_trip"] = bare_task_round_trip()
            print(f"bare task: {result['bare_ray_task_round_trip']}", flush=True)
            found = pipelines(scratch, args.steps, args.rounds, args.before, tuple(args.shapes))
            result["pipelines"] = {**result.get("pipelines", {}), **found}
            bare = result["bare_ray_task_round_trip"]["median_ms"]
            for numbers in found.values():
                for side in (numbers, numbers.get("before")):
                    if side:
                        side["orchestration_per_step_ms (cold, minus a bare task)"] = round(
                            side["cold"]["per_step_ms"] - bare, 1
                        )
                if "before" in numbers:
                    numbers["before"]["code"] = str(args.before)
                    numbers["ratio now / before (cold run time)"] = round(
                        numbers["cold"]["run_s"] / numbers["before"]["cold"]["run_s"], 3
                    )
        if sections["sweep"]:
            result["sweep"] = sweep(scratch, args.trials)
            print(f"sweep: {json.dumps(result['sweep'])}", flush=True)
        if sections["eventlog"]:
            result["event_log_on_s3"] = eventlog(scratch, args.epochs)
            print(f"event log: {json.dumps(result['event_log_on_s3'])}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
