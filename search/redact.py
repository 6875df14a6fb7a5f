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


def hide_password(text: str, url: str) -> str:
    """``text`` (say a database driver's message about ``url``) with the URL's password as ``***``.

    >>> hide_password('password "s3cret" rejected', "postgresql://u:s3cret@db/x")
    'password "***" rejected'
    """
    match = _USERINFO.match(url)
    return text.replace(match["password"], "***") if match and match["password"] else text
