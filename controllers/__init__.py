"""kvcast.controllers."""
