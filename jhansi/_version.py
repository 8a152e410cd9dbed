"""The version of jhansi, kept in one place (read by the build backend too)."""

__version__ = "0.1.0"
