"""The search side: the index's client, queries from the command line, the HTTP service and what it offers.

* ``query``: ``search`` (the k most similar tracks to a track or an audio file) and
  ``python -m musicsim.search.query``; the index's model for file queries;
* ``serve``: ``python -m musicsim.search.serve``, the command line of the HTTP service;
* ``app``: ``create_app``, the FastAPI application (``routes``: the JSON API and the web page;
  ``plumbing``: HEAD, ranges, JSON errors, static files);
* ``service``: ``SearchService``, what a request is answered from (one index version: catalog, tracks,
  neighbours, playlists, map, audio, art, file queries); ``tracks``: a track's public description;
  ``uploads``: an uploaded file streamed to a private folder and checked;
* ``holder``: ``ServiceHolder``, the live reload that swaps in an index's new version;
* ``errors``: ``ServiceError``, the one error of the service (a leaf both the JSON API and
  ``subsonic`` use);
* ``playlist``: radio and morph playlists, M3U; ``catalog_map``: the 2-D map of the catalog;
* ``subsonic``: the read-only OpenSubsonic API under ``/rest/``; ``users``: its users file;
* ``static/``: the web page (no CDN).

Imports flow one way: ``serve`` → ``app`` → ``routes``/``holder``/``subsonic`` → ``service`` →
``query``/``playlist``/``catalog_map``/``tracks``/``uploads`` → ``errors`` and ``musicsim.index``.
This ``__init__`` imports nothing, so a command of the package loads only what it uses.
"""
