"""chatrelay: relays an AI model's streamed reply to browsers and other clients."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
