"""Builders: recurrent family."""
