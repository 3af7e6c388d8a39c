"""A no-op gRPC service for Ray Serve's gRPC proxy, to measure that proxy's ceiling beside the HTTP one
(`benchmarks/serve_grpc.py`).

The messages are the single-query shape a gRPC Search would have (a float vector and k in; ids, scores and
labels out), built from a descriptor at import so that no `protoc` / grpcio-tools step is needed. Ray Serve's
proxy imports `add_RetrievalServicer_to_server` by its import path (`SERVICER`) and routes each call to the
deployment method of the same name (`Search`) of the application named in the call's "application" metadata.
"""

from __future__ import annotations

import asyncio
import time

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE, METHOD = "mrl.Retrieval", "Search"
SERVICER = "mrlbench.grpc_noop:add_RetrievalServicer_to_server"
_FLOAT, _INT32, _INT64, _OPTIONAL, _REPEATED = 2, 5, 3, 1, 3  # FieldDescriptorProto type and label numbers


def _messages():
    proto = descriptor_pb2.FileDescriptorProto(name="mrl_grpc_noop.proto", package="mrl", syntax="proto3")
    request = proto.message_type.add(name="SearchRequest")
    request.field.add(name="vector", number=1, type=_FLOAT, label=_REPEATED)  # packed: proto3's default
    request.field.add(name="k", number=2, type=_INT32, label=_OPTIONAL)
    reply = proto.message_type.add(name="SearchReply")
    reply.field.add(name="ids", number=1, type=_INT64, label=_REPEATED)
    reply.field.add(name="scores", number=2, type=_FLOAT, label=_REPEATED)
    reply.field.add(name="labels", number=3, type=_INT64, label=_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(f"mrl.{name}"))
                 for name in ("SearchRequest", "SearchReply"))


SearchRequest, SearchReply = _messages()


def add_RetrievalServicer_to_server(servicer, server) -> None:  # noqa: N802 - the name grpc codegen would give
    """Register the service's one method (what a `*_pb2_grpc.py` generated from a .proto would do)."""
    handler = grpc.unary_unary_rpc_method_handler(servicer.Search, request_deserializer=SearchRequest.FromString,
                                                  response_serializer=SearchReply.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),))


def noop_deployment(max_ongoing_requests: int, max_queued_requests: int):
    """The gRPC twin of serve_load.py's no-op HTTP app: one replica of 1 CPU with the Retriever's queue settings,
    whose Search answers an empty reply."""
    from ray import serve

    @serve.deployment(name="GrpcNoOp")
    class GrpcNoOp:
        def Search(self, request):  # noqa: N802 - the gRPC method's name
            return SearchReply()

    return GrpcNoOp.options(num_replicas=1, ray_actor_options={"num_cpus": 1},
                            max_ongoing_requests=max_ongoing_requests,
                            max_queued_requests=max_queued_requests).bind()


def client_process(port: int, app: str, vectors: list[list[float]], clients: int, seconds: float) -> tuple:
    """`clients` closed-loop callers on one HTTP/2 channel (grpc.aio) for `seconds`: (latencies in s, errors)."""
    requests = [SearchRequest(vector=v, k=10) for v in vectors]

    async def run() -> tuple[list[float], int]:
        latencies, errors = [], 0
        stop = time.monotonic() + seconds
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(f"/{SERVICE}/{METHOD}", request_serializer=SearchRequest.SerializeToString,
                                       response_deserializer=SearchReply.FromString)

            async def caller(k: int) -> None:
                nonlocal errors
                i = k
                while time.monotonic() < stop:
                    t0 = time.monotonic()
                    try:
                        await call(requests[i % len(requests)], metadata=(("application", app),), timeout=30)
                        latencies.append(time.monotonic() - t0)
                    except grpc.RpcError:
                        errors += 1
                    i += clients

            await asyncio.gather(*(caller(k) for k in range(clients)))
        return latencies, errors

    return asyncio.run(run())
