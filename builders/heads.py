"""Builders: heads family."""
