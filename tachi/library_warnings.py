"""Keep the libraries' warnings off users' terminals and out of JSON output.

A dependency's ``DeprecationWarning`` (``spiffe`` under ``cryptography`` 51 printed
two lines on every ``tachi --host`` command, every shell-completion Tab and in
``daemon.log``) is a message for tachi's developers, not its users: the CLI and
the daemon hide every warning unless the user asked for them with
``PYTHONWARNINGS`` or ``-W``. The library API (``tachi.Client``) leaves the
host program's warning filters alone.
"""

from __future__ import annotations

import os
import sys
import warnings


def hide_unless_asked() -> None:
    """Ignore every warning in this process, unless ``-W`` or ``PYTHONWARNINGS`` asks
    for them. (The warm CLI runs commands in an interpreter started without the
    user's environment, so ``PYTHONWARNINGS`` is looked up in ``os.environ`` too; Python's
    default filters then apply.)"""
    if sys.warnoptions:
        return
    asked = os.environ.get("PYTHONWARNINGS")
    if not asked:
        warnings.simplefilter("ignore")
        return
    # A warm CLI's child: its server hid warnings when the user did not ask.
    warnings.filters[:] = _STARTUP_FILTERS
    try:
        warnings._processoptions(asked.split(","))  # type: ignore[attr-defined]
    except Exception:  # a future Python without it: show what the defaults show
        warnings.simplefilter("default")


#: The interpreter's own filters, before this module changed them.
_STARTUP_FILTERS = list(warnings.filters)
