"""Adaptation controllers: one small interface (`base`), registered by name (`registry`).

    from kvcast.controllers import get_controller, Observation
    ctrl = get_controller("mpc", horizon=4)
    level = ctrl.choose(obs)          # a level name or "TEXT"

Names: cachegen, cachegen-artifact, bba, mpc, fixed:<level>, text, raw, int8, oracle
(`known_controllers()` lists them with one line each). docs/scenarios.md describes every rule.
"""

from .base import TEXT, Controller, Foresight, Observation
from .registry import get_controller, known_controllers

__all__ = ["TEXT", "Controller", "Foresight", "Observation", "get_controller", "known_controllers"]
