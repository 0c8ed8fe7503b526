import pytest

from cluster.sizes import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512MiB", 512 * 2**20), ("2GiB", 2 * 2**30), ("2 GiB", 2 * 2**30), ("1.5GB", 1_500_000_000),
     ("64KiB", 65536), (1048576, 1048576), ("100", 100), ("3b", 3)],
)
def test_sizes_are_read_in_bytes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["12 parsecs", "MiB", "-5MiB", -1, True, None, "1.2.3GB"])
def test_unreadable_sizes_are_refused_with_the_value_named(bad):
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


def test_format_size_is_human_readable():
    assert format_size(269030016) == "256.6MiB"
    assert format_size(512) == "512B"
