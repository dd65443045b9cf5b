"""Shared plumbing every package may import: atomic files and OS errors (common.files), flag types
and the exit-code convention (common.cli), Loihi's number formats (common.loihi)."""
