"""reidbook: the package behind the person re-identification notebook book."""

from . import data, evaluation  # noqa: F401

__version__ = "0.1.0"
