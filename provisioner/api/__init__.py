"""The HTTP API for backends: start provisioning, list and read projects, follow progress as Server-Sent Events.

See `create_app` (the FastAPI application) and `serve` (runs it under uvicorn). Authentication: bearer tokens from
PROVISIONER_API_TOKENS / PROVISIONER_API_TOKENS_FILE, or none with PROVISIONER_API_INSECURE=1 (`auth.py`).
"""

from provisioner.api.app import api_server, create_app, serve
from provisioner.api.auth import InsecureConfiguration

__all__ = ["InsecureConfiguration", "api_server", "create_app", "serve"]
