"""Object listing of the OSS protocol EMULATOR (tests/emulators/oss_server.py, in this process on 127.0.0.1;
not Alibaba Cloud OSS), read through the real oss2 client: each listed object reports its own size and ETag."""

from __future__ import annotations

from typing import Any

import oss2

# A bucket the `oss` fixture (conftest.py) gives the emulator.
BUCKET = "mlpipe-models"


def test_listing_reports_each_objects_own_size_and_etag(oss: Any) -> None:
    bucket = oss2.Bucket(oss2.Auth(oss.access_key_id, oss.access_key_secret), oss.endpoint, BUCKET)
    bucket.put_object("listing/a.bin", b"a" * 3)
    bucket.put_object("listing/b.bin", b"b" * 1024)
    heads = {key: bucket.head_object(key) for key in ("listing/a.bin", "listing/b.bin")}

    listed = {obj.key: obj for obj in oss2.ObjectIterator(bucket, prefix="listing/")}

    assert {key: obj.size for key, obj in listed.items()} == {"listing/a.bin": 3, "listing/b.bin": 1024}
    assert {key: obj.etag for key, obj in listed.items()} == {key: head.etag for key, head in heads.items()}
    assert listed["listing/a.bin"].etag != listed["listing/b.bin"].etag
