"""The package version, in a module of its own so that every layer can read it without importing the package's
public API (``rtdet/__init__.py`` imports the top layer lazily)."""

__version__ = "0.1.0"
