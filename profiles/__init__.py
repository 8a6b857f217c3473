"""Codec profiles shipped with kvcast (JSON files, found by name; see docs/profile-format.md)."""
