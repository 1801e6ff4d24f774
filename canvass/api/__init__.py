"""The HTTP face of Canvass: parses, authorizes, calls a service, shapes the reply."""
