"""Placeholder: filled in by the pair stage."""

COMMANDS = []
