"""What a fault on a peer looks like to the ranks that survive it: the worker (which must not
report it as the step's own bug) and the driver (which classifies the attempt) ask the same."""

from __future__ import annotations

#: What a collective says on the surviving ranks when a peer's process or node is gone.
_COLLATERAL_MARKS = ("gloo", "NCCL", "Connection closed by peer", "Connection reset")


def collateral(error: BaseException) -> bool:
    """Errors survivors raise when a peer worker or its node dies (a collective aborts, a
    connection resets): faults of the infrastructure, left to Ray Train's recovery. Checked by
    name, so the driver needs no torch."""
    dist_error = any(kind.__name__ == "DistError" for kind in type(error).__mro__)  # torch.distributed's
    return isinstance(error, RuntimeError) and (dist_error or any(mark in str(error) for mark in _COLLATERAL_MARKS))
