"""What a step's code version hashes: the source of its function (or its condition) and,
transitively, of the functions and classes of the same module that it names, so editing a helper
such as the model class changes the version of every step that uses it."""

from __future__ import annotations

import inspect
import textwrap
from typing import Any, Callable


def sources(fn: Callable[..., Any]) -> list[str]:
    """The source of ``fn`` and, transitively, of the same-module functions and classes it names."""
    module = inspect.getmodule(fn)
    seen: set[int] = set()
    sources: list[str] = []

    def visit(obj: Any) -> None:
        if id(obj) in seen or inspect.getmodule(obj) is not module:
            return
        seen.add(id(obj))
        try:
            sources.append(textwrap.dedent(inspect.getsource(obj)))
        except (OSError, TypeError):
            sources.append(f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', obj)}")
        for name in sorted(_names_used(obj)):
            target = getattr(module, name, None)
            if inspect.isfunction(target) or inspect.isclass(target):
                visit(target)

    visit(fn)
    return sources


def _names_used(obj: Any) -> set[str]:
    """Global names a function's code (nested code included) or a class's methods refer to."""
    codes = (
        [obj.__code__] if inspect.isfunction(obj) else [m.__code__ for m in vars(obj).values() if inspect.isfunction(m)]
    )
    names: set[str] = set()
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(c for c in code.co_consts if inspect.iscode(c))
    return names
