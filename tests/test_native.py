"""C parts built on first use (`ifc.native`): cached by source and arguments, rebuilt when either changes, and a
missing compiler or a compile error is one line saying what to install — never a traceback."""

from __future__ import annotations

import os
import shutil

import pytest

from ifc import native

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_build_is_reused_until_its_source_or_arguments_change(tmp_path):
    source = tmp_path / "x.c"
    source.write_text("int ifc_x(void) { return 1; }\n")
    first = native.built(source, ["-shared", "-fPIC"], "x")
    stamp = first.stat().st_mtime_ns
    assert native.built(source, ["-shared", "-fPIC"], "x") == first and first.stat().st_mtime_ns == stamp
    assert native.built(source, ["-shared", "-fPIC", "-O2"], "x") != first
    source.write_text("int ifc_x(void) { return 2; }\n")
    assert native.built(source, ["-shared", "-fPIC"], "x") != first
    assert not list(first.parent.glob(".*.tmp"))  # nothing half-written left behind


def test_a_compile_error_is_one_line_with_what_to_do(tmp_path):
    source = tmp_path / "bad.c"
    source.write_text("this is not C\n")
    with pytest.raises(native.BuildError) as raised:
        native.built(source, ["-shared", "-fPIC"], "the bad part")
    assert raised.value.message.startswith("cannot compile the bad part: ") and "\n" not in raised.value.message
    assert "gcc" in raised.value.help


def test_no_compiler_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    source = tmp_path / "x.c"
    source.write_text("int x;\n")
    with pytest.raises(native.BuildError, match="no C compiler to build x") as raised:
        native.built(source, ["-shared", "-fPIC"], "x")
    assert "gcc" in raised.value.help


def test_a_library_someone_else_could_have_written_is_not_loaded(tmp_path):
    """The mount daemon runs as root and loads the fast path from the cache: a cache another user can write (a
    HOME or XDG_CACHE_HOME kept across sudo) could hand it their code."""
    source = tmp_path / "x.c"
    source.write_text("int ifc_x(void) { return 7; }\n")
    built = native.built(source, ["-shared", "-fPIC"], "x")
    assert native.load_library(built).ifc_x() == 7
    for harm in (lambda: built.chmod(0o666), lambda: os.chown(built, 1000, 1000)):
        harm()
        with pytest.raises(native.BuildError, match="not this user's alone"):
            native.load_library(built)
        os.chown(built, os.geteuid(), os.getegid())
        built.chmod(0o755)
    link = tmp_path / "link.so"
    link.symlink_to(built)
    with pytest.raises(OSError):  # not through a symlink either
        native.load_library(link)


def test_two_libraries_loaded_one_after_the_other_are_each_themselves(tmp_path):
    """The loader knows a library by its name: were the descriptor a library was loaded through closed, the next
    library loaded through the same `/proc/self/fd/N` would be answered with the first (a fresh-clone run found
    `undefined symbol`)."""
    loaded = []
    for value in (1, 2, 3):
        source = tmp_path / f"lib{value}.c"
        source.write_text(f"int ifc_value{value}(void) {{ return {value}; }}\n")
        loaded.append(native.load_library(native.built(source, ["-shared", "-fPIC"], "a library")))
    assert [getattr(lib, f"ifc_value{v}")() for v, lib in zip((1, 2, 3), loaded, strict=True)] == [1, 2, 3]
