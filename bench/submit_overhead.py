"""A pipeline as a Ray job: what ``rto submit`` costs against the plain way, and how fast a
killed job's run is back on its feet — on one local head (``ray start --head`` on 127.0.0.1,
Ray's default token auth), in one run.

Three ways of the same work (the digits pipeline's, 20 epochs), alternating within each round,
each as a user runs it from the project directory:

- ``plain PyTorch job``: ``ray job submit --working-dir . -- python bench/plain_digits.py``, the
  plain script (``torch.multiprocessing`` + gloo DDP, a checkpoint per epoch) as a Ray job;
- ``rto run as a job``: ``ray job submit --working-dir . -- python -m raytrain_orch run
  configs/digits.yaml`` (Ray's CLI, rto inside the job);
- ``rto submit --wait``: the same run through ``rto submit``.

Per run: the client's wall time (command start to exit) and the job's own time on the cluster
(Ray's start and end times of the job). Across rounds: the median, with its spread; ratios are
to the plain job.

Recovery (``--recovery``, once): ``rto submit --retries 1`` of ``tests/pipelines/whole.yaml``
(a DDP train step of 8 one-second epochs), whose driver process is SIGKILLed after epoch 2:
the seconds from the kill to the resubmitted job's start, to the resumed training's first
epoch, and to the run's end.

    .venv/bin/python bench/submit_overhead.py                    # → bench/results/submit_overhead.json
    .venv/bin/python bench/submit_overhead.py --rounds 1 --out /tmp/submit_overhead.json
    .venv/bin/python bench/submit_overhead.py --report bench/results/submit_overhead.json   # the table again
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # `python` in a job is this venv's
    env["RAY_AUTH_MODE"] = "token"  # for Ray's own CLI; rto sends the token itself
    env.pop("RAY_ADDRESS", None)
    return env


@contextlib.contextmanager
def head(directory: Path):
    """``ray start --head`` on 127.0.0.1 in its own process group; yields the dashboard URL."""
    dashboard = f"http://127.0.0.1:{free_port()}"
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=2",
        f"--port={free_port()}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard.rsplit(':', 1)[1]}",
        f"--temp-dir={directory / 'ray'}",
        "--disable-usage-stats",
    ]
    log = open(directory / "head.log", "w")
    process = subprocess.Popen(
        command, env=environment(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO
    )
    try:
        deadline = time.time() + 120
        while subprocess.run(
            [str(BIN / "ray"), "job", "list", "--address", dashboard], env=environment(), capture_output=True
        ).returncode:
            if time.time() > deadline or process.poll() is not None:
                raise RuntimeError(f"the head did not start; see {directory / 'head.log'}")
            time.sleep(1)
        yield dashboard
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def job_seconds(dashboard: str, submission_id: str) -> float:
    """The job's own time on the cluster, from Ray's record (ms timestamps)."""
    from ray.job_submission import JobSubmissionClient

    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    info = JobSubmissionClient(dashboard, headers={"Authorization": f"Bearer {token}"}).get_job_info(submission_id)
    assert info.status == "SUCCEEDED", (submission_id, info.status, info.message)
    return (info.end_time - info.start_time) / 1000


def timed(command: list[str]) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} … exited {done.returncode}: {(done.stdout + done.stderr)[-3000:]}")
    return wall, done.stdout + done.stderr


def isolated(directory: Path) -> list[str]:
    return [
        "--set",
        f"storage={directory / 'rto-runs'}",
        "--set",
        f"mlflow.tracking_uri=sqlite:///{directory / 'mlflow.db'}",
    ]


def one_round(dashboard: str, scratch: Path, epochs: int) -> dict[str, dict[str, float]]:
    results = {}
    directory = Path(tempfile.mkdtemp(dir=scratch))
    sid = f"bench-plain-{directory.name}"
    wall, _ = timed(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            dashboard,
            "--submission-id",
            sid,
            "--working-dir",
            ".",
            "--",
            "python",
            "bench/plain_digits.py",
            "--epochs",
            str(epochs),
            "--json",
            "--checkpoints",
            str(directory / "ckpt"),
        ]
    )
    results["plain PyTorch job"] = {"wall_s": wall, "job_s": job_seconds(dashboard, sid)}

    directory = Path(tempfile.mkdtemp(dir=scratch))
    sid = f"bench-rto-run-{directory.name}"
    wall, _ = timed(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            dashboard,
            "--submission-id",
            sid,
            "--working-dir",
            ".",
            "--",
            "python",
            "-m",
            "raytrain_orch",
            "run",
            "configs/digits.yaml",
            "--set",
            f"train.params.epochs={epochs}",
            *isolated(directory),
        ]
    )
    results["rto run as a job"] = {"wall_s": wall, "job_s": job_seconds(dashboard, sid)}

    directory = Path(tempfile.mkdtemp(dir=scratch))
    wall, output = timed(
        [
            str(BIN / "rto"),
            "submit",
            "configs/digits.yaml",
            "--address",
            dashboard,
            "--wait",
            "--set",
            f"train.params.epochs={epochs}",
            *isolated(directory),
        ]
    )
    sid = next(line.split(" as Ray job ")[1].split()[0] for line in output.splitlines() if " as Ray job " in line)
    results["rto submit --wait"] = {"wall_s": wall, "job_s": job_seconds(dashboard, sid)}
    return results


def recovery(dashboard: str, scratch: Path) -> dict[str, float]:
    directory = Path(tempfile.mkdtemp(dir=scratch))
    storage = directory / "rto-runs"
    submitter = subprocess.Popen(
        [
            str(BIN / "rto"),
            "submit",
            "tests/pipelines/whole.yaml",
            "--address",
            dashboard,
            "--retries",
            "1",
            *isolated(directory),
        ],
        cwd=REPO,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    events_file = None
    deadline = time.time() + 300
    while time.time() < deadline:
        events_file = next(storage.glob("runs/*/events.jsonl"), None)
        if events_file and any(
            json.loads(line).get("epoch", -1) >= 2 for line in events_file.read_text().splitlines() if '"epoch"' in line
        ):
            break
        time.sleep(0.2)
    state = json.loads((events_file.parent / "state.json").read_text())
    killed = time.time()
    os.kill(state["driver"]["pid"], signal.SIGKILL)
    out, err = submitter.communicate(timeout=600)
    if submitter.returncode != 0:
        raise RuntimeError(f"the retried submission failed: {(out + err)[-3000:]}")
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    resumed = next(e for e in events if e["event"] == "run_resumed")
    restored = next(e for e in events if e["event"] == "restored")
    first_epoch = next(e for e in events if e["event"] == "epoch" and e["ts"] > restored["ts"])
    finished = next(e for e in events if e["event"] == "run_finished")
    return {
        "kill_to_resumed_run_s": resumed["ts"] - killed,
        "kill_to_first_epoch_after_restore_s": first_epoch["ts"] - killed,
        "kill_to_run_end_s": finished["ts"] - killed,
        "restored_after_epoch": restored["epoch"],
    }


def summarise(rounds: list[dict]) -> dict[str, dict[str, float]]:
    table = {}
    for way in rounds[0]:
        walls = [r[way]["wall_s"] for r in rounds]
        jobs = [r[way]["job_s"] for r in rounds]
        table[way] = {
            "wall_s": statistics.median(walls),
            "wall_min_s": min(walls),
            "wall_max_s": max(walls),
            "job_s": statistics.median(jobs),
            "client_s": statistics.median(w - j for w, j in zip(walls, jobs, strict=True)),
        }
    plain = table["plain PyTorch job"]["wall_s"]
    for row in table.values():
        row["ratio_to_plain"] = row["wall_s"] / plain
    return table


def report(result: dict) -> str:
    lines = [f"{'way':<22} {'wall':>8} {'(min–max)':>14} {'job on cluster':>15} {'client':>8} {'ratio':>6}"]
    for way, row in result["table"].items():
        spread = f"{row['wall_min_s']:.1f}–{row['wall_max_s']:.1f} s"
        lines.append(
            f"{way:<22} {row['wall_s']:7.1f}s {spread:>14} {row['job_s']:14.1f}s {row['client_s']:7.1f}s "
            f"{row['ratio_to_plain']:6.2f}"
        )
    if result.get("recovery"):
        r = result["recovery"]
        lines.append(
            f"recovery after SIGKILL at epoch {r['restored_after_epoch'] + 1}: resumed run "
            f"{r['kill_to_resumed_run_s']:.1f} s, "
            f"first epoch after restore {r['kill_to_first_epoch_after_restore_s']:.1f} s, run end "
            f"{r['kill_to_run_end_s']:.1f} s"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--no-recovery", action="store_true", help="skip the killed-driver recovery measurement")
    parser.add_argument("--out", default=str(REPO / "bench/results/submit_overhead.json"))
    parser.add_argument("--report", metavar="JSON", help="print the table of an earlier result and run nothing")
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return
    scratch = Path(tempfile.mkdtemp(prefix="rto-bench-submit-"))
    try:
        with head(scratch) as dashboard:
            rounds = []
            for index in range(args.rounds):
                rounds.append(one_round(dashboard, scratch, args.epochs))
                print(
                    f"round {index + 1}: " + ", ".join(f"{k} {v['wall_s']:.1f}s" for k, v in rounds[-1].items()),
                    flush=True,
                )
            result = {"epochs": args.epochs, "rounds": rounds, "table": summarise(rounds)}
            if not args.no_recovery:
                result["recovery"] = recovery(dashboard, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))


if __name__ == "__main__":
    main()
