from __future__ import annotations

import os

import pytest

from prompt_processing.settings import InstrumentSettings, RedisSettings, Settings, WorkerSettings, to_env


def test_to_env_rebuilds_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        redis=RedisSettings(port=1234, password="s3cret"),
        worker=WorkerSettings(claim_idle_s=2.5),
        instruments={"LATISS": InstrumentSettings(only_detectors=[0])},
        log_level="DEBUG",
    )
    env = to_env(settings)
    assert env["PP_REDIS__PASSWORD"] == "s3cret"
    for name in [n for n in os.environ if n.startswith("PP_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == settings


def test_bad_values_fail_with_the_setting_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PP_FANOUT__DEDUP_TTL_S", "10")
    with pytest.raises(ValueError, match=r"dedup_ttl_s .* must be >= message_expiration_s"):
        Settings()
