"""The version of hardreid: one source (``hardreid.__version__``, the wheel's metadata through pyproject.toml), in a
module of its own so that any layer may read it without importing the package's public API (``hardreid``)."""

__version__ = "0.1.0"
