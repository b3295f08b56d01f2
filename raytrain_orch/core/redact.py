"""Secrets never leave the run for MLflow or the logs: the value of every key that looks like a
secret (a token, password, secret, credential or key) is replaced before it is logged.

The run's own record (``runs/RUN_ID/config.yaml``) keeps the real values, because ``rto
resume`` runs from it; it stays in the user's storage.
"""

from __future__ import annotations

import os
import re
from types import MappingProxyType
from typing import Any, Mapping

REDACTED = "***"

#: A key is a secret's when one of its words is one of these (``api_token``, ``db_password``,
#: ``aws_secret_access_key``, ``credentials``), or its last word is ``key`` (``api_key``,
#: ``private-key``, ``key``). Words split at ``_ - .`` and camelCase, so ``max_tokens``,
#: ``tokenizer``, ``key_frames`` and ``monkey`` are not.
_SECRET_WORDS = frozenset(
    {
        "token",
        "password",
        "passwd",
        "pwd",
        "secret",
        "secrets",
        "credential",
        "credentials",
        "auth",
        "apikey",
        "passphrase",
    }
)
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
#: Names with a secret-looking word that name no secret: the shell's working directories.
_NOT_SECRETS = frozenset({"pwd", "oldpwd"})


def is_secret(key: str) -> bool:
    """Whether ``key`` names a secret (the last part of a dotted name decides)."""
    name = key.rsplit(".", 1)[-1]
    if name.lower() in _NOT_SECRETS:
        return False
    words = [w.lower() for w in _WORD.findall(name)]
    return bool(words) and (words[-1] == "key" or any(w in _SECRET_WORDS for w in words))


#: Where a config holds secrets under a plain name: a webhook's URL carries its token (``notify[].url``).
_SECRET_UNDER = MappingProxyType({"notify": "url"})


def redact_url(url: str) -> str:
    """A URL as it may be shown: its scheme and host, the rest (where a webhook's token is) hidden."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]  # user:password@ never shown
    return f"{scheme}://{host}/{REDACTED}" if rest else REDACTED


def redact(value: Any, key: str = "") -> Any:
    """``value`` with every secret-looking key's value replaced by ``***``, at any depth (a
    webhook's URL by ``redact_url``)."""
    if key and is_secret(key) and value not in (None, "", {}, []):
        return REDACTED
    if key in _SECRET_UNDER and isinstance(value, (list, tuple)):
        hidden = _SECRET_UNDER[key]
        return [
            {k: redact_url(str(v)) if k == hidden and v else redact(v, str(k)) for k, v in item.items()}
            if isinstance(item, Mapping)
            else redact(item)
            for item in value
        ]
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def secret_values(*sources: Mapping[str, Any], min_length: int = 6) -> tuple[str, ...]:
    """The values under secret-looking keys in ``sources`` (params, ``os.environ``), at any depth,
    longest first. Shorter values than ``min_length`` are left out: masking a ``1`` or ``true``
    everywhere would hide more than it protects."""
    found: set[str] = set()

    def visit(value: Any, key: str) -> None:
        if key in _SECRET_UNDER and isinstance(value, (list, tuple)):
            found.update(
                str(item[_SECRET_UNDER[key]])
                for item in value
                if isinstance(item, Mapping) and item.get(_SECRET_UNDER[key])
            )
        if isinstance(value, Mapping):
            for k, v in value.items():
                visit(v, str(k))
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v, key)
        elif key and is_secret(key) and isinstance(value, (str, int)) and len(str(value)) >= min_length:
            if not _a_path(str(value)):
                found.add(str(value))

    for source in sources:
        visit(source, "")
    return tuple(sorted(found, key=len, reverse=True))


def _a_path(value: str) -> bool:
    """A value that names a file or directory: never a secret's, and masking it would hide where
    things are (every traceback's file names)."""
    return os.sep in value and os.path.exists(value)


def masked(text: str, values: tuple[str, ...]) -> str:
    """``text`` with every one of ``values`` replaced by ``***``."""
    for value in values:
        if value in text:
            text = text.replace(value, REDACTED)
    return text
