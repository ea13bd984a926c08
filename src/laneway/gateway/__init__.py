"""The laneway gateway: the runtime behind an HTTP, SSE and WebSocket API.

``create_app(settings)`` builds the FastAPI app; ``laneway serve`` runs it.
"""

from .._extras import require

require("server", "laneway.gateway")

from ._app import create_app as create_app  # noqa: E402
from .settings import Settings as Settings  # noqa: E402
from .settings import SettingsError as SettingsError  # noqa: E402
from .settings import load_settings as load_settings  # noqa: E402

__all__ = ["Settings", "SettingsError", "create_app", "load_settings"]
