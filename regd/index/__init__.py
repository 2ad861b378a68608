"""
The repository index behind docker search and the web pages: names, tags,
descriptions and activity in SQLite, kept current by registry events and
rebuildable from storage. Public API: L{regd.index.service.RepositoryIndex}
and the values in L{regd.index.model}.
"""
