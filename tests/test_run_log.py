"""convit.run_log: reading a run's log.jsonl."""

import pytest

from convit.run_log import RunLogError, read_log


def test_truncated_last_log_line_is_dropped_with_a_note(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"epoch": 0, "a": 1}\n{"epoch": 1, "a": 2}\n{"epoch": 2, "a"')
    rows, note = read_log(path, before_epoch=5)
    assert [r["epoch"] for r in rows] == [0, 1] and "truncated last line" in note
    assert read_log(path, before_epoch=1)[0] == [{"epoch": 0, "a": 1}]
    path.write_text('{"epoch": 0\n{"epoch": 1}\n')
    with pytest.raises(RunLogError, match="log.jsonl:1 is not a JSON line"):
        read_log(path, before_epoch=5)


def test_log_with_bytes_that_are_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"epoch": 0}\n{"epoch": 1, "x": "\xff\xfe"}\n')
    with pytest.raises(RunLogError, match=r"log.jsonl:2 holds bytes that are not UTF-8"):
        read_log(path, before_epoch=5)
