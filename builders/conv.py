"""Builders: conv family."""
