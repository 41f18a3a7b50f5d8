"""Builders: dense family."""
