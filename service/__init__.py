"""emoserve: real-time facial emotion recognition service."""

__version__ = "0.1.0"
