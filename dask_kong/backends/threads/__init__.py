"""Embedded backend: worker threads in the calling process."""

from .pool import ThreadBackend

__all__ = ["ThreadBackend"]
