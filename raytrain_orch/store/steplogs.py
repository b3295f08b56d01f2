"""Each step attempt's own output, kept with its run: ``runs/RUN_ID/logs/STEP/attempt-N.log``
(written where the attempt runs, by ``logcapture.capture``), and, for an attempt that hung, its
processes' Python stacks at that moment (``attempt-N.stacks.log``, written by the driver).

``show`` and ``follow`` find and read the logs for ``rto logs``; they print nothing themselves.
"""

from __future__ import annotations

import difflib
import re
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Iterator

from raytrain_orch.core.errors import ConfigError
from raytrain_orch.store.state import RunState, RunStore, Status
from raytrain_orch.store.storage import Storage, safe_name

LOGS_DIR = "logs"
_LOG_FILE = re.compile(r"attempt-(\d+)(?:\.rank-(\d+))?(\.stacks)?\.log")
RECORD_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_parts(
    run_path: tuple[str, ...], step: str, attempt: int, rank: int | None = None, trial: str | None = None
) -> tuple[str, ...]:
    """Where one attempt's log lives below the storage root (each name checked by ``safe_name``)."""
    directory = (
        *run_path,
        LOGS_DIR,
        safe_name(step, "step name"),
        *((safe_name(trial, "trial name"),) if trial else ()),
    )
    return (*directory, f"attempt-{int(attempt)}" + ("" if rank is None else f".rank-{int(rank)}") + ".log")


def stacks_parts(run_path: tuple[str, ...], step: str, attempt: int) -> tuple[str, ...]:
    """Where the stacks of a hung attempt's processes are kept."""
    *directory, name = log_parts(run_path, step, attempt)
    return (*directory, name.removesuffix(".log") + ".stacks.log")


@dataclass(frozen=True)
class LogFile:
    """One kept log: a step attempt's, or one rank's of it."""

    step: str
    attempt: int
    rank: int | None
    trial: str | None
    parts: tuple[str, ...]  # below the storage root
    stacks: bool = False  # the stacks of its processes when the attempt hung

    @property
    def title(self) -> str:
        trial = f" trial {self.trial}" if self.trial else ""
        rank = "" if self.rank is None else f" rank {self.rank}"
        return f"{self.step} attempt {self.attempt}{trial}{rank}" + (" stacks when it hung" if self.stacks else "")

    @property
    def header(self) -> str:
        return f"==> {self.title} ({'/'.join(self.parts)}) <=="


@dataclass(frozen=True)
class StepLogs:
    """What ``rto logs`` shows of one step: its log files, or a note on why there are none."""

    step: str
    files: tuple[LogFile, ...]
    note: str | None = None


def step_logs(storage: Storage, run_path: tuple[str, ...], step: str) -> list[LogFile]:
    """Every kept log of ``step``, by attempt, trial and rank."""
    directory = (*run_path, LOGS_DIR, safe_name(step, "step name"))
    found: list[LogFile] = []
    for name in storage.listdir(*directory):
        match = _LOG_FILE.fullmatch(name)
        if match:
            found.append(_log_file(step, match, None, (*directory, name)))
            continue
        try:  # not a log file: a sweep trial's directory
            inner = storage.listdir(*directory, name)
        except (OSError, ValueError):
            continue
        for file in inner:
            match = _LOG_FILE.fullmatch(file)
            if match:
                found.append(_log_file(step, match, name, (*directory, name, file)))
    return sorted(found, key=lambda f: (f.attempt, f.trial or "", f.stacks, -1 if f.rank is None else f.rank))


def _log_file(step: str, match: re.Match, trial: str | None, parts: tuple[str, ...]) -> LogFile:
    return LogFile(step, int(match[1]), None if match[2] is None else int(match[2]), trial, parts, bool(match[3]))


def select(
    store: RunStore, state: RunState, step: str | None = None, attempt: int | None = None, rank: int | None = None
) -> list[StepLogs]:
    """The logs to show, in pipeline order: each step's latest attempt (or ``attempt``), every
    rank (or ``rank``); a step without one gets a note saying why."""
    names = list(state.steps)
    if step is not None and step not in state.steps:
        hint = difflib.get_close_matches(step, names, n=1)
        raise ConfigError(
            f"run {state.run_id} has no step {step!r} (its steps: {', '.join(names)})"
            + (f"; did you mean {hint[0]!r}?" if hint else "")
        )
    if attempt is not None and step is None:
        raise ConfigError("--attempt needs --step: attempts are numbered per step")
    chosen = []
    for name in [step] if step is not None else names:
        every = step_logs(store.storage, store.run_path(state.run_id), name)
        wanted = attempt if attempt is not None else max((f.attempt for f in every), default=None)
        files = tuple(f for f in every if f.attempt == wanted and (rank is None or f.rank == rank))
        chosen.append(StepLogs(name, files, None if files else _note(name, state, every, attempt, rank)))
    return chosen


_NO_LOG = MappingProxyType(
    {
        Status.CACHED: "cached, no log (the output was reused from an earlier run)",
        Status.PENDING: "pending, no log yet (the step has not started)",
        Status.WAITING: "waiting for its resources, no log yet",
        Status.RUNNING: "running, no log yet",
        Status.SKIPPED: "skipped, no log (an upstream step failed)",
    }
)


def _note(step: str, state: RunState, every: list[LogFile], attempt: int | None, rank: int | None) -> str:
    if not every:
        status = state.steps[step].status
        return f"{step}: " + _NO_LOG.get(
            status, f"{status.value.lower()}, no log kept (a run from before rto kept logs, or writing it failed)"
        )
    wanted = " ".join(
        ([f"attempt {attempt}"] if attempt is not None else []) + ([f"rank {rank}"] if rank is not None else [])
    )
    kept = ", ".join(f.title.removeprefix(f"{step} ") for f in every)
    return f"{step}: no log of {wanted} (kept: {kept})"


def read(storage: Storage, log: LogFile, offset: int = 0) -> bytes:
    """The log's bytes from ``offset`` on (empty if it is gone)."""
    try:
        local = storage.local_path(*log.parts)
        if local is not None:
            with open(local, "rb") as src:
                src.seek(offset)
                return src.read()
        return storage.read_bytes(*log.parts)[offset:]
    except FileNotFoundError:
        return b""


def show(
    store: RunStore, state: RunState, step: str | None = None, attempt: int | None = None, rank: int | None = None
) -> Iterator[str]:
    """The text of ``rto logs``: a header and the contents of each chosen log, or a note."""
    first = True
    for entry in select(store, state, step, attempt, rank):
        if entry.note is not None:
            yield entry.note + "\n"
            continue
        for log in entry.files:
            text = read(store.storage, log).decode("utf-8", errors="replace")
            yield ("" if first else "\n") + log.header + "\n" + text + ("" if not text or text.endswith("\n") else "\n")
            first = False


def follow(
    store: RunStore,
    state: RunState,
    step: str | None = None,
    attempt: int | None = None,
    rank: int | None = None,
    poll_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[str]:
    """The text of ``rto logs --follow``: what the chosen logs hold, then what they gain, until
    the run is no longer RUNNING (its driver ended it, or died); a header whenever the log that
    the text comes from changes."""
    offsets: dict[tuple[str, ...], int] = {}
    shown: LogFile | None = None
    at_line_start = True
    while True:
        final = state.shown_status != Status.RUNNING.value
        chosen = select(store, state, step, attempt, rank)
        for log in (log for entry in chosen for log in entry.files):
            data = read(store.storage, log, offsets.get(log.parts, 0))
            if not final:
                data = data[: data.rfind(b"\n") + 1]  # whole lines while the step may still write
            if not data:
                continue
            offsets[log.parts] = offsets.get(log.parts, 0) + len(data)
            text = data.decode("utf-8", errors="replace")
            if log != shown:
                text = ("" if shown is None else "\n" if at_line_start else "\n\n") + log.header + "\n" + text
            shown, at_line_start = log, text.endswith("\n")
            yield text
        if final:
            if not at_line_start:
                yield "\n"
            yield from (entry.note + "\n" for entry in chosen if entry.note is not None)
            return
        sleep(poll_s)
        state = store.load(state.run_id)
