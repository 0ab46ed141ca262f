"""User-facing errors: a problem with a file, a value or a recipe that the user can fix.

``gdzoo`` commands print such an error as one line, ``gdzoo <command>: <message>``, and exit with status 2;
``gdzoo --debug`` or ``GDZOO_DEBUG=1`` also prints the traceback. The message names the file or value and
the fix. Raise it where the problem is detected; anything else stays a traceback (a bug to report).

This module imports nothing, so every layer of gdzoo may use it.
"""

from __future__ import annotations

__all__ = ["DerivationSourceUnavailable", "UserError"]


class UserError(ValueError):
    """A file, value or recipe the user can fix; the message is one line naming it and the fix."""


class DerivationSourceUnavailable(UserError):
    """Weights derived on first use (``gd_vgg16.tv_in1k``) whose source weights are neither cached nor downloadable.

    The message names the source, its size, and how to provide it offline; the Hub's error stays chained.
    """
