"""Placeholder: filled in by the score stage."""

COMMANDS = []
