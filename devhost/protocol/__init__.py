"""The Functions worker protocol's messages: the ``protos`` module the runtime is handed.

Azure's proxy worker passes its protobuf module to ``azure_functions_runtime`` in every request's
``properties["protos"]``; the runtime builds its responses (``WorkerInitResponse``,
``RpcFunctionMetadata``, ``InvocationResponse``, ``TypedData`` ...) from it. This package is that module
for the local host: the messages generated from the protocol's own .proto files (``proto/``, from
Azure/azure-functions-language-worker-protobuf, MIT licence in ``proto/LICENSE``) by
``scripts/gen_protocol.py``. No gRPC: the host and the runtime share one process, so the messages are
passed as objects.
"""

from devhost.protocol.FunctionRpc_pb2 import (
    BindingInfo,
    FunctionEnvironmentReloadRequest,
    FunctionEnvironmentReloadResponse,
    FunctionLoadRequest,
    FunctionLoadResponse,
    FunctionMetadataResponse,
    FunctionsMetadataRequest,
    InvocationRequest,
    InvocationResponse,
    ModelBindingData,
    ParameterBinding,
    RpcException,
    RpcFunctionMetadata,
    RpcHttp,
    RpcHttpCookie,
    RpcLog,
    RpcRetryOptions,
    RpcSharedMemory,
    RpcTraceContext,
    StatusResult,
    StreamingMessage,
    TypedData,
    WorkerInitRequest,
    WorkerInitResponse,
    WorkerMetadata,
)
from devhost.protocol.shared.NullableTypes_pb2 import (
    NullableBool,
    NullableDouble,
    NullableString,
    NullableTimestamp,
)

__all__ = [
    "BindingInfo", "FunctionEnvironmentReloadRequest", "FunctionEnvironmentReloadResponse", "FunctionLoadRequest",
    "FunctionLoadResponse", "FunctionMetadataResponse", "FunctionsMetadataRequest", "InvocationRequest",
    "InvocationResponse", "ModelBindingData", "NullableBool", "NullableDouble", "NullableString", "NullableTimestamp",
    "ParameterBinding", "RpcException", "RpcFunctionMetadata", "RpcHttp", "RpcHttpCookie", "RpcLog",
    "RpcRetryOptions", "RpcSharedMemory", "RpcTraceContext", "StatusResult", "StreamingMessage", "TypedData",
    "WorkerInitRequest", "WorkerInitResponse", "WorkerMetadata",
]
