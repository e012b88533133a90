"""The FastAPI service: ``create_app(run)`` for tests and embedding, ``hybridcxr serve`` on the command line."""

from hybridcxr.serve.app import create_app, serve

__all__ = ["create_app", "serve"]
