"""Controllers by name: `get_controller("cachegen")`, `get_controller("fixed:L3")`, ...

A name is `kind` or `kind:arg`; parameters come as keyword arguments (from a scenario's
`controller_params`). Unknown names and parameters fail with the list of what is known.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from kvcast.errors import InputError

from .base import Controller

_FACTORIES: dict[str, Callable[..., Controller]] = {}
_DOCS: dict[str, str] = {}


def register(
    kind: str, doc: str
) -> Callable[[Callable[..., Controller]], Callable[..., Controller]]:
    def deco(factory: Callable[..., Controller]) -> Callable[..., Controller]:
        _FACTORIES[kind] = factory
        _DOCS[kind] = doc
        return factory

    return deco


def _ensure_loaded() -> None:
    from . import bba, cachegen, mpc, oracle, simple, stochastic  # noqa: F401  (registration side effects)


def known_controllers() -> dict[str, str]:
    """kind -> one-line description."""
    _ensure_loaded()
    return dict(_DOCS)


def get_controller(name: str, **params: Any) -> Controller:
    _ensure_loaded()
    kind, _, arg = name.partition(":")
    factory = _FACTORIES.get(kind)
    if factory is None:
        raise InputError(
            f"unknown controller {name!r} (known: {', '.join(sorted(_FACTORIES))}, fixed:<level>)"
        )
    sig = inspect.signature(factory)
    takes_arg = "arg" in sig.parameters
    if arg and not takes_arg:
        raise InputError(f"controller {kind!r} takes no ':argument', got {name!r}")
    if takes_arg and not arg:
        raise InputError(f"controller {kind!r} needs an argument, as in '{kind}:<level>'")
    allowed = [p for p in sig.parameters if p not in ("arg", "name")]
    unknown = [k for k in params if k not in allowed]
    if unknown:
        raise InputError(
            f"controller {name!r}: unknown parameter(s) {', '.join(unknown)} (allowed: {', '.join(allowed) or 'none'})"
        )
    try:
        ctrl = factory(arg=arg, **params) if takes_arg else factory(**params)
    except (TypeError, ValueError) as exc:
        raise InputError(f"controller {name!r}: {exc}") from exc
    ctrl.name = name
    return ctrl
