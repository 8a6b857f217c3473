"""kvcast.scenarios."""
