"""kvcast.sim."""
