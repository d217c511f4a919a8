"""Exceptions of the Hutch plugin helper.

Every refusal by Hutch arrives as a gRPC status; :func:`from_rpc_error` turns it
into one of the classes below with a message that names the call, the resource
and Hutch's reason, e.g.::

    put object ds1/raw/cells.blur.pgm: permission denied: scope data:write is not granted to this plugin
"""

from __future__ import annotations

from typing import Optional

import grpc

DOCS = "docs/plugin-authors.md"


class HutchError(Exception):
    """Base class: something Hutch refused or the protocol went wrong.

    Attributes:
        op: the call that failed, e.g. ``"get object ds1/raw/cells.pgm"``.
        reason: Hutch's reason (the gRPC status details), or a local reason.
        code: the gRPC status code, when the error came from Hutch.
    """

    def __init__(self, op: str, reason: str, code: Optional[grpc.StatusCode] = None) -> None:
        self.op = op
        self.reason = reason
        self.code = code
        super().__init__(f"{op}: {self._kind()}{reason}")

    def _kind(self) -> str:
        return ""


class PermissionDenied(HutchError):
    """PERMISSION_DENIED: a scope not granted, the acting user lacks the right,
    an admin policy blocks the call (the reason cites it), or the task id is not
    (or no longer) yours. Request the scope in ``scopes`` of the manifest and
    ask the admin to grant it."""

    def _kind(self) -> str:
        return "permission denied: "


class ResourceExhausted(HutchError):
    """RESOURCE_EXHAUSTED: the per-instance rate, concurrency or stream
    duration limit was hit. Back off and retry."""

    def _kind(self) -> str:
        return "rate limited: "


class NotFound(HutchError):
    """NOT_FOUND: no such dataset or object (or version)."""

    def _kind(self) -> str:
        return "not found: "


class FailedPrecondition(HutchError):
    """FAILED_PRECONDITION: a conditional write's expected version did not
    match, or (on hello) the protocol version is wrong."""

    def _kind(self) -> str:
        return "failed precondition: "


class ProtocolError(HutchError):
    """Hutch speaks another protocol version, or broke the protocol."""


class Cancelled(HutchError):
    """The task was cancelled. Raised by :meth:`hutch_plugin.Task.check_cancelled`
    and by Data calls of a cancelled task; the task loop reports it as
    ``failed("cancelled: <reason>")``."""

    def __init__(self, reason: str = "") -> None:
        super().__init__("task", reason or "cancelled")

    def _kind(self) -> str:
        return "cancelled: "


class TaskFailed(Exception):
    """Raise this from an action to fail the task with exactly ``message``
    (no traceback in the task's error)."""


_BY_CODE = {
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
}


def from_rpc_error(op: str, err: grpc.RpcError) -> HutchError:
    """Converts a gRPC error of call ``op`` into a :class:`HutchError` subclass."""
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    details = details or (code.name.lower() if code else "unknown error")
    cls = _BY_CODE.get(code, HutchError) if code is not None else HutchError
    if cls is HutchError and code is not None:
        return HutchError(op, f"{code.name}: {details}", code)
    return cls(op, details, code)
