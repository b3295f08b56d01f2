"""A train step's system metrics: this node's CPU, memory, disk, network and GPU use, sampled by
MLflow's own monitors on rank 0 and logged per epoch through the driver."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

log = logging.getLogger(__name__)


class SystemSampler:
    """This node's CPU, memory, disk, network (and GPU, with NVIDIA's or AMD's tools installed)
    use, sampled by MLflow's system-metrics monitors on a background thread and handed over as
    ``system/*`` metrics (means since the last ``take``), so they are logged per epoch with the
    rest, through the driver."""

    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self._monitors: list[Any] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def start(self) -> "SystemSampler":
        threading.Thread(target=self._run, name="rto-system-metrics", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def take(self) -> dict[str, float]:
        """The means of the samples since the last call, or of one taken now when there were
        none (an epoch shorter than the interval); empty until the monitors are loaded."""
        with self._lock:
            metrics: dict[str, float] = {}
            for monitor in self._monitors:
                if not monitor.metrics:  # no sample in this epoch yet
                    monitor.collect_metrics()
                metrics.update({f"system/{k}": float(v) for k, v in monitor.aggregate_metrics().items()})
                monitor.clear_metrics()
            return metrics

    def _run(self) -> None:
        try:  # Linux: a thread is its own task; this one yields the CPUs to training (MLflow's import is ~2 s of CPU)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        try:  # importing MLflow here keeps it off the training loop's path
            import psutil
            from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
            from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
            from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
            from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor
            from mlflow.system_metrics.metrics.rocm_monitor import ROCMMonitor

            psutil.cpu_percent()  # its first reading is 0.0: start the interval the first sample reports
            monitors: list[Any] = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
            for gpu in (GPUMonitor, ROCMMonitor):
                try:
                    monitors.append(gpu())
                    break
                except Exception:  # noqa: BLE001 — no such GPU, or its library is not installed
                    continue
            with self._lock:
                self._monitors = monitors
            while not self._stop.wait(self.interval_s):
                with self._lock:
                    for monitor in self._monitors:
                        monitor.collect_metrics()
        except Exception as error:  # noqa: BLE001 — measuring must never fail the training it measures
            log.warning("system metrics are not collected: %s: %s", type(error).__name__, error)
