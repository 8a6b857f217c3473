"""kvcast.codec."""
