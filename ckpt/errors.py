"""Errors raised by kedge.ckpt.

    CkptError
    ├── FormatError        the bytes are not a (supported) kedge checkpoint: bad JSON, schema, version
    ├── IntegrityError     a chunk's CRC32C does not match: names the tensor, chunk and file
    ├── NotFoundError      no such checkpoint, step or entry
    ├── StorageError       the storage failed or refused (I/O error, no credentials, timeout)
    └── CheckpointFailed   a background level of an asynchronous checkpoint failed

InjectedFault (kedge.ckpt.faults) is not a CkptError on purpose: it stands for any crash.
"""

from __future__ import annotations


class CkptError(Exception):
    """Base of every error kedge.ckpt raises on purpose."""


class FormatError(CkptError):
    """The data is not a valid kedge checkpoint of a supported format version."""


class IntegrityError(CkptError):
    """A stored chunk does not match its CRC32C."""


class NotFoundError(CkptError):
    """A checkpoint, step or entry does not exist."""


class StorageError(CkptError):
    """The storage backend failed (I/O, credentials, timeouts)."""


class CheckpointFailed(CkptError):
    """An asynchronous checkpoint failed at some level; the previous committed one stays valid."""
