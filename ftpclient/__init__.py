"""Client for ftpserver: a library (:class:`Client`), a command line and a shell."""

from ftpserver import __version__

from .client import Client, TransferResult

__all__ = ["Client", "TransferResult", "__version__"]
