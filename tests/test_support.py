"""`require`: a missing real part skips a test with its install hint, and fails it under CI."""

import pytest

from tests.utils.helpers import binary, require


@pytest.mark.parametrize("value", ["true", "TRUE", "1"])
def test_a_missing_part_fails_under_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception) as failure:
        require(False, "Redis on 127.0.0.1:6379", "`make system-deps` starts it")
    assert "Redis on 127.0.0.1:6379 is missing: `make system-deps` starts it" in str(failure.value)
    assert "CI=true" in str(failure.value)


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_a_missing_part_skips_outside_ci(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception) as skipped:
        require(False, "Chromium", "apt-get install -y chromium")
    assert str(skipped.value) == "Chromium is missing: apt-get install -y chromium"


def test_a_present_part_lets_the_test_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    require(True, "Redis", "unused")
    require("/usr/bin/chromium", "Chromium", "unused")


def test_a_missing_binary_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-such-temporal binary is missing"):
        binary("no-such-temporal")
