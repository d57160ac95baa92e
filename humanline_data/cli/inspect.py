"""Placeholder: filled in by the inspect stage."""

COMMANDS = []
