"""The one error of the search service: a request that cannot be answered, and its HTTP status.

A leaf module: the JSON API (``musicsim.search.routes``), the service behind it
(``musicsim.search.service``) and the OpenSubsonic router (``musicsim.search.subsonic``) all raise or
catch it, and none of them imports another for it.
"""
from __future__ import annotations


class ServiceError(Exception):
    """A request that cannot be answered: ``status`` is its HTTP status, the message says why.

    Parameters
    ----------
    status : the HTTP status code of the answer (400, 404, 413, 415, 422, 500)
    message : what went wrong, in words a client may be shown (never a server-side path)
    headers : extra response headers (``Allow`` for a 405), or None
    """

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None):
        self.status = status
        self.message = message
        self.headers = headers
        super().__init__(message)
