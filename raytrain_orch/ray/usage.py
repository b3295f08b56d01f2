"""What a gang's processes use, measured where they run: every task step's process and every train
worker (not only rank 0) sends ``usage`` events with its CPU seconds — of the process and its
children, such as DataLoader workers — and, through NVML where there are NVIDIA GPUs, how busy its
GPUs were and their peak memory. The run report (``core/report.py``) sets them against what the
gang reserved.

Cheap by design: a sample is two ``/proc`` reads and, with GPUs, one NVML call per device; a
``usage`` event goes out every ``RTO_USAGE_SAMPLE_S`` (so a killed worker's use is known up to
then) and once at the end. A process without NVML says why instead of sending zeros.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Callable

import psutil

from raytrain_orch.core import constants
from raytrain_orch.core.events import Event


class Gpus:
    """This process's GPUs through NVML: the devices ``CUDA_VISIBLE_DEVICES`` names (all without it)."""

    def __init__(self) -> None:
        import pynvml  # nvidia-ml-py: fails here without it, or (below) without a driver

        pynvml.nvmlInit()
        self._nvml = pynvml
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        count = pynvml.nvmlDeviceGetCount()
        indices = (
            [int(i) for i in visible.split(",") if i.strip().isdigit()] if visible is not None else list(range(count))
        )
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices if i < count]
        if not self.handles:
            raise RuntimeError("no NVIDIA GPU is visible to this process")

    def sample(self) -> tuple[float, float]:
        """(the devices' utilisation summed, in units of one device: 0 … len(handles); memory used in MiB)."""
        busy = memory = 0.0
        for handle in self.handles:
            busy += self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
            memory += self._nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
        return busy, memory


def open_gpus() -> tuple[Gpus | None, str]:
    """This process's GPUs, or None with the reason they are not measured."""
    try:
        return Gpus(), ""
    except ImportError:
        return None, "nvidia-ml-py is not installed"
    except Exception as error:  # noqa: BLE001 — NVMLError_LibraryNotFound, DriverNotLoaded, no device
        return None, f"no GPU measured: {type(error).__name__}: {error}"[:200]


class UsageSampler:
    """Measures this process (and its children) from ``start`` and sends ``usage`` events through
    ``emit`` (a step context's): every ``interval_s`` from a background thread, and at ``stop``."""

    def __init__(self, emit: Callable[..., None], rank: int | None, interval_s: float = constants.USAGE_SAMPLE_S):
        self._emit, self.rank, self.interval_s = emit, rank, interval_s
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.since = time.time()
        self._cpu0 = self._cpu()
        self._gpus: Gpus | None = None
        self._gpu_note = ""
        self._gpu_busy_s = self._gpu_memory = 0.0
        self._gpu_at = time.monotonic()
        self._gpu_opened = False

    def start(self) -> UsageSampler:
        self._thread = threading.Thread(target=self._run, name="rto-usage", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Send the final record (once)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._send(final=True)

    def _cpu(self) -> float:
        """CPU seconds of this process and its live children (and the children it waited for)."""
        try:
            times = self._process.cpu_times()
            total = times.user + times.system + times.children_user + times.children_system
            for child in self._process.children(recursive=True):
                try:
                    child_times = child.cpu_times()
                    total += child_times.user + child_times.system
                except psutil.Error:  # gone meanwhile
                    continue
            return total
        except psutil.Error:
            return 0.0

    def _sample_gpus(self) -> None:
        if not self._gpu_opened:
            self._gpus, self._gpu_note = open_gpus()
            self._gpu_opened = True
            self._gpu_at = time.monotonic()
            return
        if self._gpus is None:
            return
        now = time.monotonic()
        try:
            busy, memory = self._gpus.sample()
        except Exception as error:  # noqa: BLE001 — a device gone: stop measuring, say why
            self._gpus, self._gpu_note = None, f"NVML stopped answering: {error}"[:200]
            return
        with self._lock:
            self._gpu_busy_s += busy * (now - self._gpu_at)
            self._gpu_memory = max(self._gpu_memory, memory)
            self._gpu_at = now

    def _run(self) -> None:
        try:  # Linux: this thread yields the CPUs to the step's own work
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        gpu_every = min(1.0, self.interval_s)
        next_send = time.monotonic() + self.interval_s
        while not self._stop.wait(gpu_every):
            self._sample_gpus()
            if time.monotonic() >= next_send:
                self._send(final=False)
                next_send += self.interval_s

    def _send(self, final: bool) -> None:
        with self._lock:
            gpus = self._gpus
            gpu = (
                {
                    "devices": float(len(gpus.handles)),
                    "busy_s": round(self._gpu_busy_s, 3),
                    "memory_mb": round(self._gpu_memory, 1),
                }
                if gpus is not None
                else None
            )
        note: dict[str, Any] = {} if gpu is not None else {"gpu_note": self._gpu_note or "not measured yet"}
        self._emit(
            Event.USAGE,
            rank=self.rank,
            host=socket.gethostname(),
            pid=os.getpid(),
            since=round(self.since, 4),
            cpu_s=round(max(0.0, self._cpu() - self._cpu0), 3),
            gpu=gpu,
            final=final,
            **note,
        )
