"""The project's exception type.

Every error `probe` raises on purpose is a :class:`ProbeError` whose message says what was
expected, what was found and what to do about it.

One job: these types. Imports nothing, so every module may import it.
"""


class ProbeError(Exception):
    """Base class of every error raised on purpose by `probe`."""


class UnsupportedModelError(ProbeError):
    """The model's architecture is not one `probe` can capture exactly."""


class InputError(ProbeError):
    """A text, file or argument given by the user cannot be used as it is."""


class MissingKeyError(ProbeError, KeyError):
    """A key an example does not hold; a KeyError too, so ``in`` and ``.get`` work as usual."""

    def __str__(self) -> str:  # KeyError's own str() quotes the whole message
        return str(self.args[0]) if self.args else ""


class OutOfRangeError(ProbeError, IndexError):
    """An example number past the end of a capture or run; an IndexError too, so loops end."""


class ProbeWarning(UserWarning):
    """Something worth knowing that does not stop the work (the CLI prints ``probe: warning:``)."""
