"""Errors a user can cause. The CLI prints their message as one sentence, without a traceback."""


class UserError(Exception):
    """Bad input, config or environment that the user can fix; the message names the thing and the fix."""
