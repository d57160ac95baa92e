"""Placeholder: filled in by the generate stage."""

COMMANDS = []
