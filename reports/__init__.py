"""kvcast.reports."""
