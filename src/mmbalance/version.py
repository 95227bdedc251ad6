"""The package version (the same as ``pyproject.toml``'s; a test checks that they agree)."""

__version__ = "0.1.0"
