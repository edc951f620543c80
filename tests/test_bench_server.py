"""The benchmarks name the file system of the server's data: its type, and online discard."""

from __future__ import annotations

from pathlib import Path

from test_explain import bench_module


def mounts(tmp_path: Path, *lines: str) -> Path:
    table = tmp_path / "mounts"
    table.write_text("".join(f"{line}\n" for line in lines))
    return table


def test_the_innermost_mount_names_the_type_and_discard(tmp_path: Path) -> None:
    server = bench_module("_server")
    inner = tmp_path / "disk" / "data"
    inner.mkdir(parents=True)
    table = mounts(
        tmp_path,
        "/dev/vda / ext4 rw,relatime,discard 0 0",
        f"/dev/loop0 {tmp_path / 'disk'} xfs rw,relatime 0 0",
        "tmpfs /dev/shm tmpfs rw 0 0",
    )
    assert server.file_system(inner, table) == "xfs, mounted without discard"
    assert server.file_system(tmp_path, table) == "ext4, mounted with discard"


def test_a_later_mount_on_the_same_point_hides_the_earlier(tmp_path: Path) -> None:
    server = bench_module("_server")
    table = mounts(
        tmp_path,
        "/dev/vda / ext4 rw 0 0",
        f"/dev/vdb {tmp_path} ext4 rw,discard 0 0",
        f"/dev/vdc {tmp_path} btrfs rw,noatime 0 0",
    )
    assert server.file_system(tmp_path, table) == "btrfs, mounted without discard"


def test_an_escaped_space_in_a_mount_point(tmp_path: Path) -> None:
    server = bench_module("_server")
    spaced = tmp_path / "my disk"
    spaced.mkdir()
    escaped = str(spaced).replace(" ", "\\040")
    table = mounts(tmp_path, "/dev/vda / ext4 rw 0 0", f"/dev/vdb {escaped} xfs rw,discard 0 0")
    assert server.file_system(spaced, table) == "xfs, mounted with discard"


def test_not_known_for_a_path_or_a_table_that_is_not_there(tmp_path: Path) -> None:
    server = bench_module("_server")
    table = mounts(tmp_path, "/dev/vda / ext4 rw 0 0")
    assert server.file_system(tmp_path / "elsewhere", table) == "not known"
    assert server.file_system(tmp_path, tmp_path / "no-such-table") == "not known"
    assert server.file_system(tmp_path, mounts(tmp_path, "garbage")) == "not known"
