"""The serving runtime: uvicorn with the sidecar's server protocol, one
process or several workers under one supervisor (``sidecar serve``)."""
