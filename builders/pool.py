"""Builders: pool family."""
