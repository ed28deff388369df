"""A LAN file server: resumable, md5-verified transfers over a small JSON protocol."""

__version__ = "0.1.0"
__all__ = ["__version__"]
