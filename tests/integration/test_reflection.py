"""Server reflection answers under both names, grpc.reflection.v1 and v1alpha, on a real server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2

from auth_svc.server import SERVICE_NAME, AuthInstance
from mesh import reflection_v1
from tests.integration.auth_fixtures import fast_config

V1ALPHA_REQUEST = reflection_pb2.ServerReflectionRequest
V1ALPHA_RESPONSE = reflection_pb2.ServerReflectionResponse


def _v1_messages() -> tuple[type, type]:
    """v1 request and response classes built from a pool that knows only the v1 file."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(reflection_v1._v1_file())
    request = pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
    response = pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
    return message_factory.GetMessageClass(request), message_factory.GetMessageClass(response)


async def _ask(channel: grpc.aio.Channel, package: str, request: object, response: type) -> object:
    call = channel.stream_stream(
        f"/{package}.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response.FromString,  # type: ignore[attr-defined]
    )
    async for answer in call(iter([request]), timeout=10):
        return answer
    raise AssertionError("no answer")


async def test_reflection_v1_and_v1alpha_list_and_describe(tmp_path: Path) -> None:
    v1_request, v1_response = _v1_messages()
    config = fast_config(f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}")
    async with AuthInstance(config) as inst, grpc.aio.insecure_channel(inst.address) as channel:
        for package, request_type, response_type in (
            ("grpc.reflection.v1", v1_request, v1_response),
            (
                "grpc.reflection.v1alpha",
                reflection_pb2.ServerReflectionRequest,
                reflection_pb2.ServerReflectionResponse,
            ),
        ):
            listed: Any = await _ask(channel, package, request_type(list_services=""), response_type)
            names = {s.name for s in listed.list_services_response.service}
            assert {SERVICE_NAME, "grpc.health.v1.Health", reflection_v1.V1_SERVICE_NAME} <= names, package
            assert "grpc.reflection.v1alpha.ServerReflection" in names
            for symbol, file_name in (
                (SERVICE_NAME, "ocrmesh/auth/v1/auth.proto"),
                (reflection_v1.V1_SERVICE_NAME, "grpc/reflection/v1/reflection.proto"),
            ):
                found: Any = await _ask(
                    channel, package, request_type(file_containing_symbol=symbol), response_type
                )
                files = [
                    descriptor_pb2.FileDescriptorProto.FromString(raw)
                    for raw in found.file_descriptor_response.file_descriptor_proto
                ]
                assert file_name in [f.name for f in files], (package, symbol, found)
