"""The ASGI application object for servers started by import string
(``uvicorn canvass.api.asgi:app``), e.g. with several worker processes."""

from canvass.api.app import create_app

app = create_app()
