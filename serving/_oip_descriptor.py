"""The OIP v2 gRPC schema (``inference`` package) as a serialized FileDescriptorProto.

Generated from ``grpc_predict_v2.proto`` (the Open Inference Protocol, as shipped in
edgeloop/schemas/kserve/grpc_predict_v2.proto) with ``grpc_tools.protoc --descriptor_set_out``; regenerate with
``python -m edgeloop.serving._oip_descriptor PROTO_FILE``. :mod:`edgeloop.serving.client` loads it into a
private descriptor pool, so the client can share a process with kserve or tritonclient
(both register the same message names in the default pool).
"""

from __future__ import annotations

import base64
import sys

DESCRIPTOR_B64 = (
    "ChVncnBjX3ByZWRpY3RfdjIucHJvdG8SCWluZmVyZW5jZSITChFTZXJ2ZXJMaXZlUmVxdWVzdCIoChJTZXJ2ZXJMaXZlUmVzcG9u"
    "c2USEgoEbGl2ZRgBIAEoCFIEbGl2ZSIUChJTZXJ2ZXJSZWFkeVJlcXVlc3QiKwoTU2VydmVyUmVhZHlSZXNwb25zZRIUCgVyZWFk"
    "eRgBIAEoCFIFcmVhZHkiQQoRTW9kZWxSZWFkeVJlcXVlc3QSEgoEbmFtZRgBIAEoCVIEbmFtZRIYCgd2ZXJzaW9uGAIgASgJUgd2"
    "ZXJzaW9uIioKEk1vZGVsUmVhZHlSZXNwb25zZRIUCgVyZWFkeRgBIAEoCFIFcmVhZHkiFwoVU2VydmVyTWV0YWRhdGFSZXF1ZXN0"
    "ImYKFlNlcnZlck1ldGFkYXRhUmVzcG9uc2USEgoEbmFtZRgBIAEoCVIEbmFtZRIYCgd2ZXJzaW9uGAIgASgJUgd2ZXJzaW9uEh4K"
    "CmV4dGVuc2lvbnMYAyADKAlSCmV4dGVuc2lvbnMiRAoUTW9kZWxNZXRhZGF0YVJlcXVlc3QSEgoEbmFtZRgBIAEoCVIEbmFtZRIY"
    "Cgd2ZXJzaW9uGAIgASgJUgd2ZXJzaW9uIs8CChVNb2RlbE1ldGFkYXRhUmVzcG9uc2USEgoEbmFtZRgBIAEoCVIEbmFtZRIaCgh2"
    "ZXJzaW9ucxgCIAMoCVIIdmVyc2lvbnMSGgoIcGxhdGZvcm0YAyABKAlSCHBsYXRmb3JtEkcKBmlucHV0cxgEIAMoCzIvLmluZmVy"
    "ZW5jZS5Nb2RlbE1ldGFkYXRhUmVzcG9uc2UuVGVuc29yTWV0YWRhdGFSBmlucHV0cxJJCgdvdXRwdXRzGAUgAygLMi8uaW5mZXJl"
    "bmNlLk1vZGVsTWV0YWRhdGFSZXNwb25zZS5UZW5zb3JNZXRhZGF0YVIHb3V0cHV0cxpWCg5UZW5zb3JNZXRhZGF0YRISCgRuYW1l"
    "GAEgASgJUgRuYW1lEhoKCGRhdGF0eXBlGAIgASgJUghkYXRhdHlwZRIUCgVzaGFwZRgDIAMoA1IFc2hhcGUinQgKEU1vZGVsSW5m"
    "ZXJSZXF1ZXN0Eh0KCm1vZGVsX25hbWUYASABKAlSCW1vZGVsTmFtZRIjCg1tb2RlbF92ZXJzaW9uGAIgASgJUgxtb2RlbFZlcnNp"
    "b24SDgoCaWQYAyABKAlSAmlkEkwKCnBhcmFtZXRlcnMYBCADKAsyLC5pbmZlcmVuY2UuTW9kZWxJbmZlclJlcXVlc3QuUGFyYW1l"
    "dGVyc0VudHJ5UgpwYXJhbWV0ZXJzEkUKBmlucHV0cxgFIAMoCzItLmluZmVyZW5jZS5Nb2RlbEluZmVyUmVxdWVzdC5JbmZlcklu"
    "cHV0VGVuc29yUgZpbnB1dHMSUQoHb3V0cHV0cxgGIAMoCzI3LmluZmVyZW5jZS5Nb2RlbEluZmVyUmVxdWVzdC5JbmZlclJlcXVl"
    "c3RlZE91dHB1dFRlbnNvclIHb3V0cHV0cxIsChJyYXdfaW5wdXRfY29udGVudHMYByADKAxSEHJhd0lucHV0Q29udGVudHMazQIK"
    "EEluZmVySW5wdXRUZW5zb3ISEgoEbmFtZRgBIAEoCVIEbmFtZRIaCghkYXRhdHlwZRgCIAEoCVIIZGF0YXR5cGUSFAoFc2hhcGUY"
    "AyADKANSBXNoYXBlEl0KCnBhcmFtZXRlcnMYBCADKAsyPS5pbmZlcmVuY2UuTW9kZWxJbmZlclJlcXVlc3QuSW5mZXJJbnB1dFRl"
    "bnNvci5QYXJhbWV0ZXJzRW50cnlSCnBhcmFtZXRlcnMSOgoIY29udGVudHMYBSABKAsyHi5pbmZlcmVuY2UuSW5mZXJUZW5zb3JD"
    "b250ZW50c1IIY29udGVudHMaWAoPUGFyYW1ldGVyc0VudHJ5EhAKA2tleRgBIAEoCVIDa2V5Ei8KBXZhbHVlGAIgASgLMhkuaW5m"
    "ZXJlbmNlLkluZmVyUGFyYW1ldGVyUgV2YWx1ZToCOAEa8wEKGkluZmVyUmVxdWVzdGVkT3V0cHV0VGVuc29yEhIKBG5hbWUYASAB"
    "KAlSBG5hbWUSZwoKcGFyYW1ldGVycxgCIAMoCzJHLmluZmVyZW5jZS5Nb2RlbEluZmVyUmVxdWVzdC5JbmZlclJlcXVlc3RlZE91"
    "dHB1dFRlbnNvci5QYXJhbWV0ZXJzRW50cnlSCnBhcmFtZXRlcnMaWAoPUGFyYW1ldGVyc0VudHJ5EhAKA2tleRgBIAEoCVIDa2V5"
    "Ei8KBXZhbHVlGAIgASgLMhkuaW5mZXJlbmNlLkluZmVyUGFyYW1ldGVyUgV2YWx1ZToCOAEaWAoPUGFyYW1ldGVyc0VudHJ5EhAK"
    "A2tleRgBIAEoCVIDa2V5Ei8KBXZhbHVlGAIgASgLMhkuaW5mZXJlbmNlLkluZmVyUGFyYW1ldGVyUgV2YWx1ZToCOAEi3wUKEk1v"
    "ZGVsSW5mZXJSZXNwb25zZRIdCgptb2RlbF9uYW1lGAEgASgJUgltb2RlbE5hbWUSIwoNbW9kZWxfdmVyc2lvbhgCIAEoCVIMbW9k"
    "ZWxWZXJzaW9uEg4KAmlkGAMgASgJUgJpZBJNCgpwYXJhbWV0ZXJzGAQgAygLMi0uaW5mZXJlbmNlLk1vZGVsSW5mZXJSZXNwb25z"
    "ZS5QYXJhbWV0ZXJzRW50cnlSCnBhcmFtZXRlcnMSSQoHb3V0cHV0cxgFIAMoCzIvLmluZmVyZW5jZS5Nb2RlbEluZmVyUmVzcG9u"
    "c2UuSW5mZXJPdXRwdXRUZW5zb3JSB291dHB1dHMSLgoTcmF3X291dHB1dF9jb250ZW50cxgGIAMoDFIRcmF3T3V0cHV0Q29udGVu"
    "dHMa0AIKEUluZmVyT3V0cHV0VGVuc29yEhIKBG5hbWUYASABKAlSBG5hbWUSGgoIZGF0YXR5cGUYAiABKAlSCGRhdGF0eXBlEhQK"
    "BXNoYXBlGAMgAygDUgVzaGFwZRJfCgpwYXJhbWV0ZXJzGAQgAygLMj8uaW5mZXJlbmNlLk1vZGVsSW5mZXJSZXNwb25zZS5JbmZl"
    "ck91dHB1dFRlbnNvci5QYXJhbWV0ZXJzRW50cnlSCnBhcmFtZXRlcnMSOgoIY29udGVudHMYBSABKAsyHi5pbmZlcmVuY2UuSW5m"
    "ZXJUZW5zb3JDb250ZW50c1IIY29udGVudHMaWAoPUGFyYW1ldGVyc0VudHJ5EhAKA2tleRgBIAEoCVIDa2V5Ei8KBXZhbHVlGAIg"
    "ASgLMhkuaW5mZXJlbmNlLkluZmVyUGFyYW1ldGVyUgV2YWx1ZToCOAEaWAoPUGFyYW1ldGVyc0VudHJ5EhAKA2tleRgBIAEoCVID"
    "a2V5Ei8KBXZhbHVlGAIgASgLMhkuaW5mZXJlbmNlLkluZmVyUGFyYW1ldGVyUgV2YWx1ZToCOAEijQEKDkluZmVyUGFyYW1ldGVy"
    "Eh8KCmJvb2xfcGFyYW0YASABKAhIAFIJYm9vbFBhcmFtEiEKC2ludDY0X3BhcmFtGAIgASgDSABSCmludDY0UGFyYW0SIwoMc3Ry"
    "aW5nX3BhcmFtGAMgASgJSABSC3N0cmluZ1BhcmFtQhIKEHBhcmFtZXRlcl9jaG9pY2UiwwIKE0luZmVyVGVuc29yQ29udGVudHMS"
    "IwoNYm9vbF9jb250ZW50cxgBIAMoCFIMYm9vbENvbnRlbnRzEiEKDGludF9jb250ZW50cxgCIAMoBVILaW50Q29udGVudHMSJQoO"
    "aW50NjRfY29udGVudHMYAyADKANSDWludDY0Q29udGVudHMSIwoNdWludF9jb250ZW50cxgEIAMoDVIMdWludENvbnRlbnRzEicK"
    "D3VpbnQ2NF9jb250ZW50cxgFIAMoBFIOdWludDY0Q29udGVudHMSIwoNZnAzMl9jb250ZW50cxgGIAMoAlIMZnAzMkNvbnRlbnRz"
    "EiMKDWZwNjRfY29udGVudHMYByADKAFSDGZwNjRDb250ZW50cxIlCg5ieXRlc19jb250ZW50cxgIIAMoDFINYnl0ZXNDb250ZW50"
    "czL8AwoUR1JQQ0luZmVyZW5jZVNlcnZpY2USSwoKU2VydmVyTGl2ZRIcLmluZmVyZW5jZS5TZXJ2ZXJMaXZlUmVxdWVzdBodLmlu"
    "ZmVyZW5jZS5TZXJ2ZXJMaXZlUmVzcG9uc2UiABJOCgtTZXJ2ZXJSZWFkeRIdLmluZmVyZW5jZS5TZXJ2ZXJSZWFkeVJlcXVlc3Qa"
    "Hi5pbmZlcmVuY2UuU2VydmVyUmVhZHlSZXNwb25zZSIAEksKCk1vZGVsUmVhZHkSHC5pbmZlcmVuY2UuTW9kZWxSZWFkeVJlcXVl"
    "c3QaHS5pbmZlcmVuY2UuTW9kZWxSZWFkeVJlc3BvbnNlIgASVwoOU2VydmVyTWV0YWRhdGESIC5pbmZlcmVuY2UuU2VydmVyTWV0"
    "YWRhdGFSZXF1ZXN0GiEuaW5mZXJlbmNlLlNlcnZlck1ldGFkYXRhUmVzcG9uc2UiABJUCg1Nb2RlbE1ldGFkYXRhEh8uaW5mZXJl"
    "bmNlLk1vZGVsTWV0YWRhdGFSZXF1ZXN0GiAuaW5mZXJlbmNlLk1vZGVsTWV0YWRhdGFSZXNwb25zZSIAEksKCk1vZGVsSW5mZXIS"
    "HC5pbmZlcmVuY2UuTW9kZWxJbmZlclJlcXVlc3QaHS5pbmZlcmVuY2UuTW9kZWxJbmZlclJlc3BvbnNlIgBiBnByb3RvMw=="
)


def serialized() -> bytes:
    return base64.b64decode(DESCRIPTOR_B64)


def _generate(proto: str) -> str:  # pragma: no cover - developer tool
    import os
    import tempfile

    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "set.pb")
        rc = protoc.main(
            [
                "protoc",
                f"-I{os.path.dirname(os.path.abspath(proto))}",
                f"--descriptor_set_out={out}",
                os.path.basename(proto),
            ]
        )
        if rc != 0:
            raise SystemExit(f"protoc failed on {proto}")
        with open(out, "rb") as fh:
            fds = descriptor_pb2.FileDescriptorSet.FromString(fh.read())
    return base64.b64encode(fds.file[0].SerializeToString()).decode()


if __name__ == "__main__":  # pragma: no cover
    print(_generate(sys.argv[1]))
