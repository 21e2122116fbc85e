"""What a log line or an error message may say about a URL: never its user name or password."""

from __future__ import annotations

import re

# A user name (no "/"), then perhaps ":" and a password (which may hold "/"), then "@".
_USERINFO = re.compile(r"//[^/@\s]*(?::[^@\s]*)?@")


def without_credentials(text: str) -> str:
    """``text`` with the ``user:password@`` of every URL in it removed."""
    return _USERINFO.sub("//", text)
