"""Exceptions raised by mrprior. Every error a user can cause derives from :class:`MRPriorError`."""


class MRPriorError(Exception):
    """Base class of all mrprior errors."""


class DataError(MRPriorError, ValueError):
    """Input data is malformed: wrong shapes, NaNs, missing acquisitions, unsupported trajectory."""


class HeaderError(DataError):
    """The ISMRMRD header lacks a field the reconstruction needs, or is inconsistent."""


class ConfigError(MRPriorError, ValueError):
    """A configuration file or value is invalid (unknown key, out-of-range value, bad choice)."""


class CheckpointError(MRPriorError, ValueError):
    """A weight file or prior card is missing, corrupt, tampered with, or does not match its card."""


class ProtocolError(MRPriorError):
    """An ISMRMRD/MRD stream is malformed: truncated message, unknown id, bad length."""
