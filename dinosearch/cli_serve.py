"""`dinosearch serve`: the search page and the JSON API (registered on cli.app). The web app itself is
started by uvicorn from an import string, never imported here."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import settings
from .cli import Backend, BackendOpt, Device, IndexOpt, Precision, PrecisionOpt, _index_dir, _open, _run, app


@app.command()
def serve(
    index: Optional[Path] = IndexOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; anything but loopback needs --api-key"),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on"),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="DINOSEARCH_API_KEY", help="Require `Authorization: Bearer KEY` on every /api/ route"
    ),
    insecure_no_api_key: bool = typer.Option(
        False, "--insecure-no-api-key",
        help="Allow a non-loopback --host without --api-key (anyone who reaches it can see your images)",
    ),
    allowed_host: Optional[list[str]] = typer.Option(
        None, "--allowed-host", help="Another name clients reach the server by, accepted in the Host header (repeatable)"
    ),
    model: Optional[str] = typer.Option(
        None, "--model", help="Model for uploaded images (default: the one the index was made with)"
    ),
    device: Device = typer.Option(Device.auto, "--device", help="Where the model runs"),
    backend: Backend = BackendOpt,
    precision: Precision = PrecisionOpt,
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.01, help="Largest request body, in MB"),
    max_megapixels: float = typer.Option(50.0, "--max-megapixels", min=0.01, help="Largest uploaded image, in megapixels"),
    queue_size: int = typer.Option(32, "--queue-size", min=1, help="Uploads in flight before the server answers 503"),
    server_workers: int = typer.Option(
        1, "--workers", min=1, help="Server processes; they map one copy of an IVF vector index (each loads the model)"
    ),
) -> None:
    """Serve the search page and the JSON API (FastAPI on uvicorn)."""

    def go() -> None:
        import os

        # Settings only: the app itself is imported by uvicorn from the string below.
        from .accel import backend_device, check_backend
        from .settings import ENV_VAR, WebSettings, check_bind

        check_bind(host, api_key, insecure_no_api_key)
        # The model's OpenMP threads should sleep, not spin, between operations, as in `index`:
        # spinning threads take cores the decode process and the event loop need. Set before torch
        # is imported (check_backend may import it); a user's setting wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        # The model loads once the server is up: refuse an impossible backend now, in one line.
        check_backend(backend.value, backend_device(backend.value, device.value), precision.value)
        directory = _index_dir(index)
        _open(directory, create=False).close()  # a missing index fails here, in one line
        web = WebSettings(
            index_dir=str(directory), model=model or settings.model_from_env(), device=device.value,
            backend=backend.value, precision=precision.value, host=host,
            port=port, api_key=api_key or None, allowed_hosts=tuple(allowed_host or ()),
            insecure_no_api_key=insecure_no_api_key, max_body_bytes=int(max_upload_mb * 1024 * 1024),
            max_pixels=int(max_megapixels * 1_000_000), queue_size=queue_size,
        )
        os.environ[ENV_VAR] = web.to_json()
        import uvicorn

        uvicorn.run(
            "dinosearch.web.app:app_from_env", factory=True, host=host, port=port,
            proxy_headers=False, server_header=False, log_level="info", timeout_graceful_shutdown=5,
            **({"workers": server_workers} if server_workers > 1 else {}),
        )

    _run(go)
