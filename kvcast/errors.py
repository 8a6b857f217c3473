"""Errors a user can act on. The CLI prints their message (no traceback) and exits with 2."""


class KvcastError(Exception):
    """Base class for errors caused by user input: files, fields, options."""


class InputError(KvcastError, ValueError):
    """A file, field or option is invalid; the message names it and says what was expected."""
