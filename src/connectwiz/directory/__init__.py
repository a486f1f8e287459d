"""Directories that address groups and address attributes are read from."""
