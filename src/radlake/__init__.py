"""radlake: a medical imaging data lake (see ../shared/DESIGN.md for the map)."""

__version__ = "0.1.0"
