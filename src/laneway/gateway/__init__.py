"""The laneway gateway: the runtime behind an HTTP, SSE and WebSocket API.

``create_app(settings)`` builds the FastAPI app; ``laneway serve`` runs it.
"""

from ._app import create_app as create_app
from .settings import Settings as Settings
from .settings import SettingsError as SettingsError
from .settings import load_settings as load_settings

__all__ = ["Settings", "SettingsError", "create_app", "load_settings"]
