"""Placeholder: filled in by the ingest stage."""

COMMANDS = []
