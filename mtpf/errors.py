"""`MtpfError`: the base of every error mtpf raises about a user's input (a file, a field, a request, a folder).

`except mtpf.MtpfError` catches them all; each also keeps its standard base (`ValueError`, `RuntimeError`), so code
written against those still works. The command line prints such an error as one line and exits 2 (`--debug` shows the
traceback); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MtpfError(Exception):
    """An input mtpf cannot use; the message names the file, line, field or request."""
