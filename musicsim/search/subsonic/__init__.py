"""The indexed library as a read-only OpenSubsonic server, for the players people already use.

``python -m musicsim.search.serve --index=DIR --subsonic`` serves ``/rest/`` beside the JSON API; users come
from ``musicsim.search.users`` (``--add_user=NAME``). The package's rooms:

* ``api``: ``make_router``, the endpoints and their parameters;
* ``catalog``: songs, albums, artists and genres from the index's tag columns;
* ``ids``: stable, opaque ids of songs, albums, artists and cover art;
* ``auth``: token, password and API-key authentication;
* ``responses``: the ``subsonic-response`` envelope in XML, JSON and JSONP, and ``SubsonicError``.
"""
from musicsim.search.subsonic.api import make_router
from musicsim.search.subsonic.responses import API_VERSION, SubsonicError

__all__ = ["API_VERSION", "SubsonicError", "make_router"]
