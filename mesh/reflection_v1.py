"""gRPC server reflection v1 (`grpc.reflection.v1.ServerReflection`) beside v1alpha.

grpcio-reflection only ships v1alpha. The v1 protocol is the same messages under a new package
(field for field, number for number), so v1 calls are answered by grpcio-reflection's own servicer
with its v1alpha messages on the wire; the v1 descriptors are added to the pool so that reflection
can describe itself under both names (`grpcurl describe grpc.reflection.v1.ServerReflection`).
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
_V1ALPHA = f".{reflection_pb2.DESCRIPTOR.package}."


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """v1alpha's file descriptor, renamed to grpc/reflection/v1/reflection.proto and its package."""
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name = "grpc/reflection/v1/reflection.proto"
    file.package = V1_PACKAGE
    file.ClearField("options")

    def renamed(type_name: str) -> str:
        return f".{V1_PACKAGE}.{type_name.removeprefix(_V1ALPHA)}"

    # Only set names that are there: the descriptor protos are proto2, where "" counts as set.
    for message in file.message_type:
        for field in message.field:
            if field.type_name.startswith(_V1ALPHA):
                field.type_name = renamed(field.type_name)
    for service in file.service:
        for method in service.method:
            method.input_type = renamed(method.input_type)
            method.output_type = renamed(method.output_type)
    return file


def _register_v1_descriptors(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindServiceByName(V1_SERVICE_NAME)
    except KeyError:
        pool.Add(_v1_file())


def enable(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Serve reflection v1alpha and v1 on `server`, listing `service_names` and both reflections."""
    pool = descriptor_pool.Default()
    _register_v1_descriptors(pool)
    names = [*service_names, reflection.SERVICE_NAME, V1_SERVICE_NAME]
    servicer = reflection.aio.ReflectionServicer(names, pool=pool)
    reflection.enable_server_reflection(names, server, pool=pool)
    v1_handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": v1_handler}),)
    )
