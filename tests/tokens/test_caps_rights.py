from __future__ import annotations

import pytest

from caps import Right, RightError
from caps.rights import glob_problem, path_problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("read src/**", Right("read", "src/**")),
        ("  write   docs/a b.md ", Right("write", "docs/a b.md")),
        ("connect https://*.github.com:443", Right("connect", "https://*.github.com:443")),
        (
            "declassify push-reviewed to https://github.com",
            Right("declassify", "https://github.com", "push-reviewed"),
        ),
    ],
)
def test_parse(text, expected):
    right = Right.parse(text)
    assert right == expected
    assert Right.parse(str(right)) == right


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("read", "is not a right"),
        ("fly src/**", "unknown operation `fly`"),
        ("read src/[", "bad glob"),
        ("connect https://a b", "bad endpoint pattern"),
        ("connect ftp://x:21", "bad endpoint pattern"),
        ("declassify secret https://x", "is not a right"),
        ("declassify 9bad to https://x", "not a valid tag"),
        ("read **/**/x", "more than 1 `**`"),
        ("read *a*b*c", "more than 2 `*`"),
        ("read ~/x", "`~` is not allowed"),
        ("read *a*/*a*/**/x", "more than 3 wildcards"),
        ("read *a*/*b/**", "more than 3 wildcards"),
        ("read a\x1bb", "control character"),
    ],
)
def test_parse_errors(text, fragment):
    with pytest.raises(RightError) as info:
        Right.parse(text)
    assert fragment in str(info.value)
    assert str(info.value) == str(info.value).strip() and "\n" not in str(info.value)


def test_escaped_stars_do_not_count_but_escaped_backslashes_do():
    assert glob_problem(r"a\*b\*c\*d*") is None
    assert glob_problem(r"a\\*b\\*c\\*") is not None


@pytest.mark.parametrize("path", ["", "/etc/passwd", "src/../etc", "./src/a", "src//a", "src/.", "a\x00b", "x" * 256])
def test_unnormalised_paths_are_refused(path):
    assert path_problem(path) is not None


@pytest.mark.parametrize("path", ["src/a.py", "README.md", ".env", "a/b/c/d", "..foo/x"])
def test_normal_paths_pass(path):
    assert path_problem(path) is None
