"""The locality package's one error: bad input to a measure or to the command."""

from ..errors import UserError


class LocalityError(UserError, ValueError):
    """Bad input to the locality measures or command (a query, a folder, a log, a model without attention)."""
