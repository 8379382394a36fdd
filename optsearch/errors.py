"""Errors a user can cause. The CLI prints their one-line message and exits 2."""

from __future__ import annotations


class OptsearchError(Exception):
    """Base class: a problem with the user's input, not a bug in optsearch."""


class GenomeError(OptsearchError):
    """A genome file, parameter dict or name is malformed or out of range."""


class ConfigError(OptsearchError):
    """A study config (TOML or CLI overrides) is invalid."""


class DataError(OptsearchError):
    """A dataset is missing, truncated or unreadable."""


class StudyError(OptsearchError):
    """A study or storage cannot be found or opened."""
