"""ASGI entrypoint: HTTP through Django's WSGI handler on a thread pool, websockets through Channels.

Every HTTP view of the platform is synchronous. Served by Django's ASGI handler, each
request hops between the event loop and threads once per middleware and again for the
view; under load those hops (and the GIL handoffs they cause) cost more than the
requests' own work (bench/token_api.py: 44 vs 116 session creations a second on 2
workers). voiceplatform.wsgibridge runs the whole synchronous request, middleware
included, on one worker thread and hands the finished response back once. Websockets
stay on Channels' async consumers.
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceplatform.settings")
django_wsgi_app = get_wsgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from sessions_app.routing import websocket_urlpatterns  # noqa: E402
from voiceplatform.wsgibridge import WSGIBridge  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": WSGIBridge(django_wsgi_app, workers=settings.WEB_THREADS),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
