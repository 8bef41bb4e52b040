"""The bridge between hosts and the worker: the wire protocol and a client. Standard library ONLY.

This package is copied into the Krita and GIMP plugins, which run in their host's own Python; it
must never import numpy, torch, Qt or anything outside the standard library. `hostkit` (not imported
here) is the logic the two plugins share.
"""

from .client import JobRequest, JobResult, WorkerClient, default_start_command
from .protocol import (
    ENSEMBLES,
    ORDERS,
    PROTOCOL_VERSION,
    SAMPLES,
    AnalyzeResult,
    BridgeError,
    ErrorInfo,
    ExpertSpec,
    JobHeader,
    JobStatus,
    ModelInfo,
    ResultHeader,
    SubmitReply,
    WorkerInfo,
)
from .runtime import RuntimeInfo, read_runtime, runtime_dir, runtime_file

__all__ = [
    "ENSEMBLES",
    "ORDERS",
    "PROTOCOL_VERSION",
    "SAMPLES",
    "AnalyzeResult",
    "BridgeError",
    "ErrorInfo",
    "ExpertSpec",
    "JobHeader",
    "JobRequest",
    "JobResult",
    "JobStatus",
    "ModelInfo",
    "ResultHeader",
    "RuntimeInfo",
    "SubmitReply",
    "WorkerClient",
    "WorkerInfo",
    "default_start_command",
    "read_runtime",
    "runtime_dir",
    "runtime_file",
]
