"""Builders: routing family."""
