"""Shared plumbing for every command: atomic files and OS errors (common.files), flag types and
the exit-code convention (common.cli)."""
