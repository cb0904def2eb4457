"""The errors the data layer raises for problems a user can fix; each message names the file and the fix.

`lc` prints these without a traceback. None of them carries text from a parser or a server that
could hold a secret (see `lc.data.credentials`).
"""

from __future__ import annotations

import errno


class DataError(Exception):
    """A data problem the user can fix; the message names the file and what to do."""


class NoSpaceError(DataError, OSError):
    """The file system ran full while writing a file (nothing half-written is left to be trusted)."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.errno = errno.ENOSPC
        self.filename = path

    def __str__(self) -> str:
        return str(self.args[0])


class CorruptFileError(DataError, ValueError):
    """A file (archive, image, label) cannot be decoded: it is truncated or damaged."""


class DownloadError(DataError, RuntimeError):
    """An archive could not be fetched or verified; the message says why and what to do."""


class ChecksumError(DownloadError):
    """The bytes do not have the expected MD5 (the bad file has been deleted)."""


class CredentialsError(DownloadError):
    """Cityscapes credentials are missing, unreadable or rejected (the message never holds the password)."""


class UnsafeArchiveError(DataError, ValueError):
    """An archive member would land outside the extraction folder (or is a device file)."""
