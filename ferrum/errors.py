"""Typed errors shared by compile, runtime and server.

Every error carries the HTTP status and OpenAI error ``type``/``code`` it maps to, so the
server can turn any of them into an OpenAI-shaped error body without a lookup table of its own.
"""

from __future__ import annotations


class FerrumError(Exception):
    """Base class: a failure with a message meant for the user."""

    status: int = 500
    error_type: str = "internal_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequestError(FerrumError):
    """The request is malformed or a parameter is out of range (HTTP 400)."""

    status = 400
    error_type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    """Prompt plus requested output does not fit the model's context (HTTP 400)."""

    code = "context_length_exceeded"


class ModelNotFoundError(FerrumError):
    """The named model is not served (HTTP 404)."""

    status = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class UnsupportedFeatureError(FerrumError):
    """The feature exists in the API but this model or engine cannot do it (HTTP 501 by default).

    Raised instead of pretending: the server maps it to a 4xx/501 with this message.
    """

    status = 501
    error_type = "not_implemented_error"
    code = "unsupported"

    def __init__(self, message: str, *, param: str | None = None, status: int = 501):
        super().__init__(message, param=param)
        self.status = status


class OverloadedError(FerrumError):
    """The engine's queue is full (HTTP 429); retry later."""

    status = 429
    error_type = "rate_limit_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineShutdownError(FerrumError):
    """The engine is shutting down or already stopped (HTTP 503)."""

    status = 503
    error_type = "service_unavailable"
    code = "engine_shutdown"


class ArtifactError(FerrumError):
    """An artifact is missing, corrupt, or built for another target/device."""

    error_type = "artifact_error"


class ModelSourceError(FerrumError):
    """A model source (GGUF file, Hugging Face folder) cannot be used."""

    error_type = "model_source_error"
