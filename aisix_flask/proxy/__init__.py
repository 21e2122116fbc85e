"""The shared request path of every proxied route: the body, the adapters, the upstream call."""
