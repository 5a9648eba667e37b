"""The LiveKit tier's runner keeps pytest's verdict when livekit.rtc aborts the exit."""

from __future__ import annotations

import signal

from tests.livekit.run_tier import _verdict


def test_an_abort_after_pytest_finished_reports_pytests_status(tmp_path, capsys):
    status = tmp_path / "status"
    status.write_text("0\n")
    assert _verdict(-signal.SIGABRT, status) == 0
    assert "died of signal 6" in capsys.readouterr().out
    status.write_text("1\n")
    assert _verdict(-signal.SIGABRT, status) == 1


def test_a_signal_before_pytest_finished_stays_a_failure(tmp_path):
    assert _verdict(-signal.SIGKILL, tmp_path / "never-written") == -signal.SIGKILL


def test_an_ordinary_exit_status_is_kept(tmp_path):
    status = tmp_path / "status"
    status.write_text("0\n")
    assert _verdict(1, status) == 1  # pytest's own exit code wins over an old file
    assert _verdict(0, status) == 0
