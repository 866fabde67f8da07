"""Errors raised by the dataset layer."""


class DatasetError(Exception):
    """A dataset cannot be built, found, verified or read; the message names the path."""


class ProbeError(DatasetError):
    """A probe cannot be made or loaded; the message names the file and what is wrong."""
