import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

# Channels' validator refuses handshakes without Origin (every CLI client); ours lets them reach token auth
from apps.core.ws_auth import AllowedHostsOriginValidator, SessionOrTokenAuthMiddleware  # noqa: E402
from portal.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(SessionOrTokenAuthMiddleware(URLRouter(websocket_urlpatterns))),
    }
)

if settings.SKYPORT_INPROCESS_SCHEDULER:
    from apps.core import scheduler

    scheduler.start()
