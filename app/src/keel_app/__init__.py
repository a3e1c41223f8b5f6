"""keel's reference application: one package, two services (``api`` and ``backend``)."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("keel-app")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "1.0.0"

__all__ = ["__version__"]
