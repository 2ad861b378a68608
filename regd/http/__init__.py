"""HTTP: thin Klein routes that parse, call the registry service, and render."""
