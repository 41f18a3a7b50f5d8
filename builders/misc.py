"""Builders: misc family."""
