"""A blob a record points to but storage does not hold is reported by name, not as an SDK stack trace."""

from __future__ import annotations

import uuid

import pytest

from edgeloop.core.blob import BlobNotFoundError
from edgeloop.core.errors import EdgeloopError


@pytest.mark.parametrize("container", ["payloads", "no-such-container"])
def test_reading_a_missing_blob_names_it(blob_store, container):
    uri = f"az://{container}/images/{uuid.uuid4().hex}.png"
    with pytest.raises(BlobNotFoundError) as info:
        blob_store.download(uri, referenced_by="payload record abc")
    message = str(info.value)
    assert uri in message and "payload record abc" in message
    assert ("container" if container == "no-such-container" else "blob") + " not found" in message
    assert isinstance(info.value, EdgeloopError)  # the CLI prints it as one line and exits 2
