"""The SeaweedFS fixture serves real S3 and survives a stop/start."""

from __future__ import annotations

import pytest
import s3fs
from kedge_fixtures.seaweedfs import SeaweedFS

pytestmark = [pytest.mark.s3, pytest.mark.timeout(120)]


def test_put_get_and_restart_keeps_objects(seaweedfs: SeaweedFS, s3_bucket: str) -> None:
    fs = s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True, **seaweedfs.storage_options)
    fs.pipe(f"{s3_bucket}/a/b.bin", b"hello")
    assert fs.cat(f"{s3_bucket}/a/b.bin") == b"hello"
    seaweedfs.stop()
    assert not seaweedfs.http_ok()
    seaweedfs.start()
    fs2 = s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True, **seaweedfs.storage_options)
    assert fs2.cat(f"{s3_bucket}/a/b.bin") == b"hello"
