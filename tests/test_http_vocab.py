"""The HTTP vocabulary (gateway/http_vocab.py): the canonical-path check's shortcut for plain
paths never lets through what the full segment-by-segment check refuses."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import RequestRejected
from gateway.http_vocab import check_canonical_path, check_path_segments


def _verdict(check: object, target: str) -> bool:
    try:
        check(target)  # type: ignore[operator]
    except RequestRejected:
        return False
    return True


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="/.;%#?\\ab0fF2e", max_size=24).map(lambda t: "/" + t))
def test_the_shortcut_agrees_with_the_full_check(target: str) -> None:
    assert _verdict(check_canonical_path, target) == _verdict(check_path_segments, target), target


def test_plain_paths_pass_and_tricks_do_not() -> None:
    for target in ("/", "/a/b/", "/hooks/pay?id=7&x=../..", "/a;v=1/b", "/a..b/c."):
        check_canonical_path(target)
    for target in ("/a/../b", "/a/..;/b", "/a//b", "/a/%2e/b", "/a%00", "/a#b", "/a\\b", "/./a"):
        assert not _verdict(check_canonical_path, target), target
