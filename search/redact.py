"""Hide passwords in storage and tracking URLs before they are printed, logged or recorded."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@]*):(?P<password>[^@]*)@")


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``.

    >>> redact_url("postgresql://optuna:s3cret@db:5432/studies")
    'postgresql://optuna:***@db:5432/studies'
    """
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)
