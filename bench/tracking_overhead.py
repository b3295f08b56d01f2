"""Logging per epoch: what MLflow costs a training loop, rto against plain PyTorch, in one run.

The "large" workload of ``bench/overhead.py`` (hidden 2048, batch 16, ``--epochs`` epochs, DDP
on 2 CPU processes), six ways, alternating within each round:

- ``plain``: ``bench/plain_digits.py`` as it is, no logging (the baseline);
- ``plain + mlflow (sqlite)`` / ``(http)``: the same, rank 0 calling ``mlflow.log_metrics``
  synchronously each epoch, into a SQLite store / an ``mlflow server`` over HTTP;
- ``rto, sqlite, system metrics on`` (the default) / ``off``: ``rto run configs/digits.yaml``,
  where rank 0 sends each epoch's metrics to the driver, whose outbox stores them;
- ``rto, http, system metrics on``: the same against the ``mlflow server``.

Per run, from epoch 1 on (epoch 0 carries the loop's set-up), the median of:

- the epoch's wall time: the time between consecutive epoch ends, the same span on both sides
  (plain: rank 0 after each epoch's barrier; rto: between rank 0's reports returning, i.e.
  ``epoch_s + log_s + report_s`` of its ``epoch`` events — ``epoch_s`` alone stops where the
  report starts);
- logging on the training path: plain, the time inside ``mlflow.log_metrics``; rto, ``log_s``
  (taking the system-metrics sample; storing is the driver's, off the training path). What the
  driver's outbox and MLflow's monitor thread take from 2 shared CPUs shows up in the epoch's
  wall time, not here;
- rto only: ``epoch_s``, ``report_s`` (Ray Train's report with its checkpoint) and the event's
  delay from rank 0 to the driver's record (``ts - sent_ts`` in ``events.jsonl``).

Across rounds: the median of the per-run medians, with their spread; ratios are to ``plain``.
Each run is a new process; rto runs get a fresh storage root. The MLflow stores live in a
temporary directory and grow over the rounds, as a user's do: one SQLite file for the plain
side, one for rto's two SQLite variants, and the ``mlflow server``'s (``--workers 1``, started
once in its own process group, stopped with it at the end) for both HTTP variants.

    .venv/bin/python bench/tracking_overhead.py                       # → bench/results/tracking_overhead.json
    .venv/bin/python bench/tracking_overhead.py --rounds 1 --epochs 5 --out /tmp/tracking_overhead.json
    .venv/bin/python bench/tracking_overhead.py --report bench/results/tracking_overhead.json   # the table again

``--sampling`` measures instead what the run report's usage sampler (``raytrain_orch/ray/usage.py``,
run in every rto worker) costs an epoch at the demo's size (hidden 128, batch 64, DDP on 2 CPU
processes), side by side in alternating rounds of ``bench/plain_digits.py``: without the sampler
(plain PyTorch), with it at its default interval (``RTO_USAGE_SAMPLE_S``), and with it sampling
every 0.05 s — about once an epoch, 200 times its default — so its cost shows above the noise. It
also times one sample directly (the ``/proc`` reads and building the record), in this process::

    .venv/bin/python bench/tracking_overhead.py --sampling        # → bench/results/usage_sampling.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from overhead import LARGE, REPO, RESULTS, Bench, _versions, spread

BIN = Path(sys.executable).parent  # this venv's rto and mlflow

PLAIN = "plain"
#: id → (label, side, MLflow store, rto's extra --set overrides)
VARIANTS: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    PLAIN: ("plain", "plain", "none", {}),
    "plain-sqlite": ("plain + mlflow (sqlite)", "plain", "sqlite", {}),
    "plain-http": ("plain + mlflow (http)", "plain", "http", {}),
    "rto-sqlite": ("rto, sqlite, system metrics on", "rto", "sqlite", {}),
    "rto-sqlite-nosys": ("rto, sqlite, system metrics off", "rto", "sqlite", {"mlflow.system_metrics": "false"}),
    "rto-http": ("rto, http, system metrics on", "rto", "http", {}),
}


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 in its own process group, backed by SQLite in ``directory``."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.process: subprocess.Popen | None = None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120) -> MlflowServer:
        command = [
            str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.directory / 'server.db'}",
            "--artifacts-destination", str(self.directory / "artifacts"),
        ]  # fmt: skip
        self._log = open(self.directory / "server.log", "wb")  # noqa: SIM115 — closed by stop()
        self.process = subprocess.Popen(
            command, cwd=self.directory, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        tail = (self.directory / "server.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise SystemExit(f"mlflow server on {self.uri} did not become healthy in {timeout_s:.0f} s:\n{tail}")

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL to what is left of it after 15 s."""
        if self.process is None:
            return
        for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)  # the server and its worker processes
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and _group_alive(self.process.pid):
                self.process.poll()  # reap the leader
                time.sleep(0.2)
        self.process.wait()
        self._log.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def after_first(values: list[float]) -> list[float]:
    """Epoch 0 carries the loop's set-up; with a single epoch there is nothing else."""
    return values[1:] or values


def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def run_plain(scratch: Path, epochs: int, tracking_uri: str | None) -> dict[str, Any]:
    timings = Path(tempfile.mkstemp(prefix="plain-timings-", suffix=".json", dir=scratch)[1])
    params: dict[str, Any] = {**LARGE, "timings_out": timings}
    if tracking_uri:
        params["mlflow"] = tracking_uri
    done = Bench.plain(epochs, params)
    t = json.loads(timings.read_text())
    epoch_s, log_s = after_first(t["epoch_s"]), after_first(t["log_s"])
    return {
        "wall_s": done["wall_s"],
        "test_accuracy": done["test_accuracy"],
        "epoch_wall_s": statistics.median(epoch_s),
        "logging_s": median_or_none(log_s),
        "epochs": {"epoch_wall_s": t["epoch_s"], "log_s": t["log_s"]},
    }


def run_rto(scratch: Path, epochs: int, tracking_uri: str, extra: dict[str, Any]) -> dict[str, Any]:
    storage = Path(tempfile.mkdtemp(prefix="runs-", dir=scratch))
    sets = {"storage": str(storage), "mlflow.tracking_uri": tracking_uri, "train.params.epochs": epochs}
    sets.update({f"train.params.{k}": v for k, v in LARGE.items()})
    sets.update(extra)
    command = [
        str(BIN / "rto"),
        "run",
        "configs/digits.yaml",
        *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
    ]
    started = time.time()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    wall_s = time.time() - started
    if done.returncode != 0:
        raise SystemExit(f"rto run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    (run_dir,) = (storage / "runs").iterdir()  # a fresh storage root holds this run only
    state = json.loads((run_dir / "state.json").read_text())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    reports = sorted((e for e in events if e["event"] == "epoch" and "epoch_s" in e), key=lambda e: e["epoch"])
    if len(reports) != epochs:
        raise SystemExit(
            f"rto run {run_dir.name}: {len(reports)} epoch events for {epochs} epochs (a worker restarted?)"
        )
    cycle = [e["epoch_s"] + e["log_s"] + e["report_s"] for e in reports]
    column = {key: [e[key] for e in reports] for key in ("epoch_s", "log_s", "report_s")}
    delay = [e["ts"] - e["sent_ts"] for e in reports]
    return {
        "wall_s": wall_s,
        "test_accuracy": state["steps"]["evaluate"]["metrics"]["test_accuracy"],
        "epoch_wall_s": statistics.median(after_first(cycle)),
        "logging_s": statistics.median(after_first(column["log_s"])),
        "epoch_s": statistics.median(after_first(column["epoch_s"])),
        "report_s": statistics.median(after_first(column["report_s"])),
        "event_delay_s": statistics.median(after_first(delay)),
        "system_metrics_logged": sorted({k for e in reports for k in (e.get("perf") or {}) if k.startswith("system/")}),
        "epochs": {"epoch_wall_s": cycle, **column, "event_delay_s": [round(d, 4) for d in delay]},
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant, the spread over rounds of the per-run medians (in ms, but the run's wall in
    s), and the ratios to ``plain``'s epoch."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_variant.setdefault(r["variant"], []).append(r)
    out: dict[str, Any] = {}
    for name, rs in by_variant.items():
        present = [
            k
            for k in ("epoch_wall_s", "logging_s", "epoch_s", "report_s", "event_delay_s")
            if all(r.get(k) is not None for r in rs)
        ]
        out[name] = {f"{k.removesuffix('_s')}_ms": spread([1000 * r[k] for r in rs]) for k in present}
        out[name]["wall_s"] = spread([r["wall_s"] for r in rs])
    base = out.get(PLAIN, {}).get("epoch_wall_ms", {}).get("median")
    for numbers in out.values():
        if base:
            numbers["ratio_to_plain"] = round(numbers["epoch_wall_ms"]["median"] / base, 3)
            if "logging_ms" in numbers:
                numbers["logging_share_of_plain_epoch"] = round(numbers["logging_ms"]["median"] / base, 4)
    return out


#: The demo's training step (configs/digits.yaml) and the sampler's settings compared (None: no sampler).
DEMO = {"hidden": 128, "batch_size": 64}
STRESSED_S = 0.05


def sampling_variants() -> dict[str, float | None]:
    from raytrain_orch.core import constants

    return {
        "plain": None,
        f"sampler every {constants.USAGE_SAMPLE_S:g} s (default)": constants.USAGE_SAMPLE_S,
        f"sampler every {STRESSED_S:g} s": STRESSED_S,
    }


def run_sampled(scratch: Path, epochs: int, interval_s: float | None) -> dict[str, Any]:
    timings = Path(tempfile.mkstemp(prefix="sampled-timings-", suffix=".json", dir=scratch)[1])
    params: dict[str, Any] = {**DEMO, "timings_out": timings}
    if interval_s is not None:
        params["usage_sample_s"] = interval_s
    done = Bench.plain(epochs, params)
    t = json.loads(timings.read_text())
    return {
        "wall_s": done["wall_s"],
        "test_accuracy": done["test_accuracy"],
        "epoch_wall_s": statistics.median(after_first(t["epoch_s"])),
        "usage_samples": t["usage_samples"],  # rank 0's records, its final one included
        "epochs": {"epoch_wall_s": t["epoch_s"]},
    }


def one_sample_s(samples: int = 2000) -> float:
    """The median time of one sample: CPU times of the process and its children, and the record."""
    from raytrain_orch.ray.usage import UsageSampler

    sampler = UsageSampler(lambda event, **fields: None, rank=0)
    sampler._gpu_opened = True  # no NVML to open here: a sample without GPUs, as on this machine
    took = []
    for _ in range(samples):
        began = time.perf_counter()
        sampler._send(final=False)
        took.append(time.perf_counter() - began)
    return statistics.median(took)


def measure_sampling(args: argparse.Namespace) -> None:
    from raytrain_orch.core import constants

    variants, runs, started = sampling_variants(), [], time.time()
    with tempfile.TemporaryDirectory(prefix="rto-bench-sampling-") as scratch_dir:
        for r in range(args.rounds):
            names = list(variants)
            order = names[r % len(names) :] + names[: r % len(names)]
            print(f"round {r + 1}/{args.rounds}", flush=True)
            for name in order:
                run = run_sampled(Path(scratch_dir), args.epochs, variants[name])
                runs.append({"round": r + 1, "variant": name, **run})
                print(f"  {name:<30} epoch {1000 * run['epoch_wall_s']:6.1f} ms   samples {run['usage_samples']}")
    summary = summarise(runs)
    sample_s = one_sample_s()
    plain_epoch_s = summary["plain"]["epoch_wall_ms"]["median"] / 1000
    direct = {
        "one_sample_us": round(1e6 * sample_s, 1),
        # a worker samples once per interval: per epoch, epoch/interval samples of sample_s each
        "share_of_epoch_at_default": round(sample_s / constants.USAGE_SAMPLE_S, 7),
        "share_of_epoch_at_stressed": round(sample_s / STRESSED_S, 5),
    }
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": _versions(),
        "rounds": args.rounds,
        "workload": {"epochs": args.epochs, **DEMO, "workers": 2},
        "bench_wall_s": round(time.time() - started, 1),
        "plain_epoch_ms": round(1000 * plain_epoch_s, 2),
        "direct": direct,
        "summary": summary,
        "runs": runs,
    }
    out = Path(args.out if args.out != str(RESULTS / "tracking_overhead.json") else RESULTS / "usage_sampling.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    report_sampling(result)


def report_sampling(result: dict[str, Any]) -> None:
    print(f"\nPer epoch at the demo's size ({result['workload']}), median of {result['rounds']} round(s):\n")
    print("| variant | epoch wall (ms) | ratio to plain |")
    print("|---|---|---|")
    for name, s in result["summary"].items():
        print(f"| {name} | {ms(s['epoch_wall_ms'])} | {s.get('ratio_to_plain', 1.0):.3f} |")
    d = result["direct"]
    print(
        f"\nOne sample: {d['one_sample_us']} µs; a worker's time spent sampling: "
        f"{100 * d['share_of_epoch_at_default']:.4f} % at the default interval, "
        f"{100 * d['share_of_epoch_at_stressed']:.2f} % every {STRESSED_S:g} s."
    )


def ms(s: dict[str, Any] | None) -> str:
    if s is None:
        return "–"
    text = f"{s['median']:.1f}"
    if s["n"] > 1:
        text += f" ({s['min']:.1f}–{s['max']:.1f})"
    return text


def report(result: dict[str, Any]) -> None:
    """Print the result as markdown tables, as bench/report.py prints its own."""

    def row(*cells: object) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    summary = result["summary"]
    print(f"Per epoch, {result['epochs']} epochs (epoch 0 left out), hidden {LARGE['hidden']}, batch "
        f"{LARGE['batch_size']}; "
          f"median of {result['rounds']} round(s), spread min–max.\n")  # fmt: skip
    print("| variant | epoch wall (ms) | ratio to plain | logging on the training path (ms) | logging / plain epoch |")
    print("|---|---|---|---|---|")
    for name, s in summary.items():
        name = VARIANTS[name][0] if name in VARIANTS else name
        share = s.get("logging_share_of_plain_epoch")
        print(
            row(
                name,
                ms(s["epoch_wall_ms"]),
                f"{s['ratio_to_plain']:.2f}" if "ratio_to_plain" in s else "–",
                ms(s.get("logging_ms")),
                "–" if share is None else f"{100 * share:.1f} %",
            )
        )
    rto = {name: s for name, s in summary.items() if "epoch_ms" in s}
    if rto:
        print(
            "\n| rto variant | loop's own work, `epoch_s` (ms) | report + checkpoint, `report_s` (ms) | `log_s` (ms) "
            "| event to driver (ms) |"
        )
        print("|---|---|---|---|---|")
        for name, s in rto.items():
            name = VARIANTS[name][0] if name in VARIANTS else name
            print(row(name, ms(s["epoch_ms"]), ms(s["report_ms"]), ms(s["logging_ms"]), ms(s["event_delay_ms"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds; every variant runs once per round, alternating")
    parser.add_argument("--epochs", type=int, default=60, help="epochs per run (the first is left out of the medians)")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        metavar="ID",
        help=f"a subset of: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--out", default=str(RESULTS / "tracking_overhead.json"))
    parser.add_argument("--report", metavar="FILE", help="only print the tables of an earlier result")
    parser.add_argument(
        "--sampling", action="store_true", help="measure the run report's usage sampler instead (see the docstring)"
    )
    args = parser.parse_args()
    if args.report:
        result = json.loads(Path(args.report).read_text())
        (report_sampling if "direct" in result else report)(result)
        return
    if args.sampling:
        measure_sampling(args)
        return

    runs: list[dict[str, Any]] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="rto-bench-logging-") as scratch_dir:
        scratch = Path(scratch_dir)
        server = MlflowServer(scratch) if any(VARIANTS[v][2] == "http" for v in args.variants) else None
        try:
            if server is not None:
                server.start()
            uris = {"none": None, "http": server.uri if server else None}
            for r in range(args.rounds):
                shift = r % len(args.variants)  # each round starts one variant later
                order = args.variants[shift:] + args.variants[:shift]
                print(f"round {r + 1}/{args.rounds}", flush=True)
                for name in order:
                    label, side, store, extra = VARIANTS[name]
                    uri = uris[store] if store != "sqlite" else f"sqlite:///{scratch / (side + '-mlflow.db')}"
                    run = (
                        run_plain(scratch, args.epochs, uri)
                        if side == "plain"
                        else run_rto(scratch, args.epochs, uri, extra)
                    )
                    runs.append({"round": r + 1, "variant": name, **run})
                    logged = "" if run["logging_s"] is None else f"   logging {1000 * run['logging_s']:6.1f} ms"
                    print(
                        f"  {label:<33} epoch {1000 * run['epoch_wall_s']:7.1f} ms{logged}   wall "
                        f"{run['wall_s']:6.1f} s",
                        flush=True,
                    )
        finally:
            if server is not None:
                server.stop()

    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": _versions(),
        "rounds": args.rounds,
        "epochs": args.epochs,
        "workload": {"epochs": args.epochs, **LARGE},
        "variants": {v: VARIANTS[v][0] for v in args.variants},
        "bench_wall_s": round(time.time() - started, 1),
        "summary": summarise(runs),
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    report(result)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
