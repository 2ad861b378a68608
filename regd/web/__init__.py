"""
The browsable web UI under /ui/: server-rendered pages over the repository
index (lists, search, activity) and the registry service (tag details).
"""
