"""Typed errors raised by the modeling package at its boundaries."""

from __future__ import annotations


class ModelingError(Exception):
    """Base class of every error raised by ``common.models.modeling``."""


class UnsupportedModelError(ModelingError, ValueError):
    """The model folder describes an architecture or feature we do not implement."""


class CheckpointError(ModelingError, ValueError):
    """The checkpoint is missing, incomplete, or does not match the requested slice."""


class TokenizerMismatchError(ModelingError, ValueError):
    """Base and draft tokenizers do not map text to the same token ids."""
