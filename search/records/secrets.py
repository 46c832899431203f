"""Keep passwords in storage and tracking URLs out of logs, params and files."""
from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^:/@\s]+):(?P<password>[^@/\s]+)@")


def redact(text: str) -> str:
    """``postgresql://u:secret@h/db`` → ``postgresql://u:***@h/db``; other text is unchanged."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
