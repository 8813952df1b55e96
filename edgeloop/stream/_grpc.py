"""OIP v2 gRPC stubs (the generated modules that ship with kserve; imported only for --server)."""

from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

__all__ = ["pb", "pb_grpc"]
