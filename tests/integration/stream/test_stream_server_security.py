"""``edgeloop stream --server`` against a model server that requires a token: the stream processor
takes the server's options (--auth-token-file, --tls-*) and fails clearly without them."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from edgeloop.serving.launcher import running_server
from edgeloop.stream.cli import stream

TOKEN = "stream-test-token"


def test_stream_through_a_server_that_requires_a_token(tiny_model, videos, tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    summary = tmp_path / "summary.json"
    with running_server([tiny_model], auth_token=TOKEN) as srv:
        args = ["--server", srv.grpc_target, "--model-name", "stream-test", "--no-mqtt", str(videos["short"])]
        refused = CliRunner().invoke(stream, args)
        assert refused.exit_code == 2
        assert "--auth-token-file" in refused.output
        ok = CliRunner().invoke(
            stream,
            [*args[:-1], "--auth-token-file", str(token_file), "--summary-json", str(summary), args[-1]],
        )
    assert ok.exit_code == 0, ok.output
    (source,) = json.loads(summary.read_text())["sources"]
    assert source["frames_processed"] == 30
