"""hutch_plugin: a small helper for Hutch plugins written in Python.

A plugin talks to Hutch only through the gRPC socket ``$HUTCH_SOCKET``. This
package wraps the stubs generated from ``hutch/plugin/v1/plugin.proto`` (by
``plugin-protocol/python/vendor.sh``) with a task loop::

    import hutch_plugin

    plugin = hutch_plugin.Plugin()

    @plugin.action("copy")
    def copy(task: hutch_plugin.Task) -> dict:
        src = task.inputs[0]
        reader = task.read_object(src)                        # chunked
        info = task.write_object(src.dataset_id, src.key + ".copy", reader)
        task.output("copy", object=info)
        return {"bytes": info.size}

    plugin.run()

See docs/plugin-authors.md for the model, the manifest and a walkthrough.
"""

from .core import (
    HEARTBEAT_INTERVAL,
    MAX_CHUNK_SIZE,
    PROTOCOL_VERSION,
    SOCKET_ENV,
    TASK_ID_METADATA,
    ObjectReader,
    Plugin,
    Session,
    Task,
    __version__,
    connect,
    data_stub,
    read_object,
    write_object,
)
from .errors import (
    Cancelled,
    FailedPrecondition,
    HutchError,
    NotFound,
    PermissionDenied,
    ProtocolError,
    ResourceExhausted,
    TaskFailed,
)
from .imports import explain_imports
from hutch.plugin.v1 import plugin_pb2 as pb

__all__ = [
    "HEARTBEAT_INTERVAL",
    "MAX_CHUNK_SIZE",
    "PROTOCOL_VERSION",
    "SOCKET_ENV",
    "TASK_ID_METADATA",
    "Cancelled",
    "FailedPrecondition",
    "HutchError",
    "NotFound",
    "ObjectReader",
    "PermissionDenied",
    "Plugin",
    "ProtocolError",
    "ResourceExhausted",
    "Session",
    "Task",
    "TaskFailed",
    "__version__",
    "connect",
    "data_stub",
    "explain_imports",
    "pb",
    "read_object",
    "write_object",
]
