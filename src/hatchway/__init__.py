"""Hatchway: a self-hosted SSH access layer for remote development workspaces."""

__version__ = "0.1.0"
