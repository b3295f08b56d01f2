"""Ray's token authentication, for every command that talks to a cluster.

A head started with token authentication refuses a client without the token, and Ray reads
whether to send one (``RAY_AUTH_MODE``) when it is imported: a driver that joins such a head
without it gets a dozen ``InvalidAuthToken`` warnings and then "failed to connect", which reads
like a head that is down. So before ``ray.init`` joins a cluster, ``authenticate`` asks the
head's GCS one cheap question (its cluster id) without a token and, where it is refused, again
with the token found where Ray looks for it; it then turns token mode on for this process, or
says in one line what is wrong.

Imports no Ray (the probe speaks plain gRPC), so it can run before Ray is imported.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Literal, Mapping, MutableMapping

from raytrain_orch.core.errors import ClusterAccessError

TOKEN_FILE = Path("~/.ray/auth_token")
#: The GCS's cheapest call; its request message is empty, so an empty body is a valid one.
_PROBE_METHOD = "/ray.rpc.NodeInfoGcsService/GetClusterId"
_PROBE_TIMEOUT_S = 5.0

Answer = Literal["ok", "refused", "unreachable"]
TOKEN_FIX = "copy the head's token (run `ray get-auth-token` on the head) into RAY_AUTH_TOKEN or ~/.ray/auth_token"


def auth_token(environ: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """Ray's token for this cluster and where it came from, in Ray's order: ``RAY_AUTH_TOKEN``,
    the file at ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``. (None, where it was looked for)
    without one."""
    environ = os.environ if environ is None else environ
    if environ.get("RAY_AUTH_TOKEN", "").strip():
        return environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    path = Path(environ.get("RAY_AUTH_TOKEN_PATH") or TOKEN_FILE).expanduser()
    try:
        token = path.read_text().strip()
    except OSError:
        token = ""
    return (token, str(path)) if token else (None, f"RAY_AUTH_TOKEN, {path}")


def probe(address: str, token: str | None, timeout_s: float = _PROBE_TIMEOUT_S) -> Answer:
    """Ask the GCS at ``host:port`` for its cluster id, sending ``token`` if given."""
    import grpc  # Ray's own dependency

    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(_PROBE_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        try:
            call(b"", metadata=metadata, timeout=timeout_s)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                return "refused"
            return "unreachable"
    return "ok"


def gcs_address(address: str) -> str | None:
    """The ``host:port`` of a cluster address this module can probe; None for what Ray resolves
    by itself (``auto``, ``ray://`` clients, anything else)."""
    if "://" in address or ":" not in address:
        return None
    host, _, port = address.rpartition(":")
    return address if host and port.isdigit() else None


def authenticate(
    address: str, *, ask: Callable[[str, str | None], Answer] = probe, environ: MutableMapping[str, str] | None = None
) -> bool:
    """Make this process able to join the cluster at ``address``; return True when it turned
    token mode on. Raises ``ClusterAccessError`` (one line) when the head wants a token that is
    missing or refuses the one found. An unreachable head is left to ``ray.init`` to report."""
    target = gcs_address(address)
    if target is None:
        return False
    environ = os.environ if environ is None else environ
    if environ.get("RAY_AUTH_MODE", "").lower() != "token" and ask(target, None) != "refused":
        return False  # no token needed (or not reachable: ray.init says so)
    token, source = auth_token(environ)
    if token is None:
        raise ClusterAccessError(
            f"the Ray cluster at {address} requires a token and none was found (looked in {source}); {TOKEN_FIX}"
        )
    if ask(target, token) == "refused":
        raise ClusterAccessError(f"the Ray cluster at {address} refused the token from {source}; {TOKEN_FIX}")
    if environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return False
    environ["RAY_AUTH_MODE"] = "token"
    if environ is os.environ and "ray" in sys.modules:
        reload_auth_mode()
    return True


def reload_auth_mode() -> None:
    """Ray read ``RAY_AUTH_MODE`` when it was imported; make it read it again."""
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]  # compiled, unstubbed

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
