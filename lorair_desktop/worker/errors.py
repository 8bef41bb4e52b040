"""The HTTP status that truthfully goes with each error code (bridge codes and the core's)."""

from __future__ import annotations

from ..bridge import protocol as p

STATUS: dict[str, int] = {
    p.E_BAD_REQUEST: 400,
    p.E_PROTOCOL: 400,
    p.E_UNAUTHORIZED: 401,
    p.E_FORBIDDEN: 403,
    p.E_NOT_FOUND: 404,
    p.E_JOB_NOT_FOUND: 404,
    "model_not_found": 404,
    p.E_METHOD: 405,
    p.E_REQUEST_TIMEOUT: 408,
    p.E_NOT_DONE: 409,
    p.E_CANCELLED: 409,
    p.E_RESULT_GONE: 410,
    p.E_LENGTH_REQUIRED: 411,
    p.E_BODY_TOO_LARGE: 413,
    p.E_IMAGE_TOO_LARGE: 413,
    p.E_BAD_PIXELS: 422,
    "bad_experts": 422,
    "bad_image": 422,
    p.E_QUEUE_FULL: 429,
    p.E_HEADERS_TOO_LARGE: 431,
    p.E_INTERNAL: 500,
    p.E_OUT_OF_MEMORY: 500,
    p.E_UNAVAILABLE: 503,
    "model_not_trained": 503,  # the server lacks something it needs, not the request's fault
    "bad_checkpoint": 503,
    "bad_config": 503,
    "bad_device": 503,
    p.E_TIMEOUT: 504,
}


def status_for(code: str) -> int:
    return STATUS.get(code, 500)
