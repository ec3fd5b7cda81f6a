"""Where a bucket inbox is, and which of its keys are inbox images."""

from __future__ import annotations

import pytest

from contract.bucket import BucketLocation
from contract.settings import Settings


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://photos", "photos", ""),
        ("s3://photos/", "photos", ""),
        ("s3://photos/drop", "photos", "drop/"),
        ("s3://my.bucket-1/a/b/", "my.bucket-1", "a/b/"),
    ],
)
def test_inbox_urls_name_a_bucket_and_a_prefix(url: str, bucket: str, prefix: str) -> None:
    location = BucketLocation.parse(url)
    assert (location.bucket, location.prefix) == (bucket, prefix)
    assert location.url_of(prefix + "x.jpg") == f"s3://{bucket}/{prefix}x.jpg"
    assert location.key_of(location.url_of("k/../y.jpg")) == "k/../y.jpg"
    assert location.key_of("s3://other-bucket/x.jpg") is None
    assert location.key_of("/srv/inbox/x.jpg") is None


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("s3://UPPER/x", "not a bucket name"),
        ("s3://a/x", "not a bucket name"),
        ("s3://ok-bucket/a/../b", "'..'"),
        ("s3://ok-bucket/a//b", "empty"),
        ("s3://ok-bucket/labeled", "labeled/"),
        ("s3://ok-bucket/labeled/cat", "labeled/"),
    ],
)
def test_bad_inbox_urls_say_what_is_wrong(url: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        BucketLocation.parse(url)
    with pytest.raises(ValueError, match=words):
        Settings(inbox=url)


def test_which_keys_are_inbox_images() -> None:
    location = BucketLocation.parse("s3://photos/drop")
    assert location.in_inbox("drop/a.jpg")
    assert location.in_inbox("drop/deep/../odd name ü.jpg")
    assert not location.in_inbox("drop/")  # a folder marker
    assert not location.in_inbox("drop/sub/")
    assert not location.in_inbox("drop/.sync/a.jpg")  # hidden: staged uploads
    assert not location.in_inbox("other/a.jpg")
    whole = BucketLocation.parse("s3://photos")
    assert whole.in_inbox("a.jpg")
    assert not whole.in_inbox("labeled/cat/a.jpg")  # corrections live there


def test_an_s3_inbox_setting_names_the_bucket_and_reaches_children() -> None:
    s = Settings(inbox="s3://photos/drop/", s3_endpoint_url="http://127.0.0.1:8333")
    assert s.bucket == BucketLocation("photos", "drop/")
    assert s.inbox_shown == "s3://photos/drop/"
    env = s.to_env()
    assert env["INBOX_CLASSIFIER_INBOX_BUCKET"] == "s3://photos/drop/"
    with pytest.raises(ValueError, match="http"):
        Settings(inbox="s3://photos", s3_endpoint_url="ftp://x")
    assert Settings(inbox="folder").bucket is None
