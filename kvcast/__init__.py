"""kvcast: fetch compressed KV caches over real networks, simulated and measured."""

__version__ = "0.1.0"
