"""kvcast.traces."""
