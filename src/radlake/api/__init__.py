"""The REST API and web page (FastAPI)."""
