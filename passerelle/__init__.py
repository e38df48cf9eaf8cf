"""Passerelle: edge agent for connected street equipment."""

__version__ = "0.1.0"
