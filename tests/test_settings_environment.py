"""`Settings` is the only reader of the environment: the models file's key variables (from the
environment over `.env`), the HTTP proxy variables and the `OTEL_*` switches come through it,
and no other module of chatrelay reads the environment."""

from __future__ import annotations

import ast
from pathlib import Path

import httpx
import pytest

import chatrelay
from chatrelay import tracing
from chatrelay.models import models_config
from chatrelay.settings import Settings

from .conftest import USER_HI, make_settings, serve, stream_chat
from .fakes.anthropic_upstream import FakeAnthropic

MODELS = """\
default = "from_dotenv"

[models.from_dotenv]
provider = "anthropic"
model = "claude-sonnet-4-6"
base_url = "{url}"
api_key_env = "CHATRELAY_TEST_DOTENV_KEY"

[models.from_both]
provider = "anthropic"
model = "claude-sonnet-4-6"
base_url = "{url}"
api_key_env = "CHATRELAY_TEST_BOTH_KEY"

[models.from_environ]
provider = "openai"
model = "llama3.2"
base_url = "{url}"
api_key_env = "CHATRELAY_TEST_ENVIRON_KEY"

[models.unset]
provider = "openai"
model = "gpt-5.4-mini"
api_key_env = "CHATRELAY_TEST_UNSET_KEY"
"""


def write_models(url: str = "http://127.0.0.1:9") -> Path:
    path = Path("models.toml")  # the tests run in their own tmp_path
    path.write_text(MODELS.format(url=url))
    return path


def test_a_models_files_keys_come_from_the_environment_over_dotenv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Path(".env").write_text(
        "CHATRELAY_TEST_DOTENV_KEY=sk-from-dotenv\n"
        "CHATRELAY_TEST_BOTH_KEY=sk-dotenv-loses\n"
        "chatrelay_test_unset_key=sk-other-case\n"  # names are matched exactly
    )
    monkeypatch.setenv("CHATRELAY_TEST_BOTH_KEY", "sk-environ-wins")
    monkeypatch.setenv("CHATRELAY_TEST_ENVIRON_KEY", "  sk-from-environ \n")
    config = models_config(make_settings(models_file=write_models()))
    assert config.keys == {
        "from_dotenv": "sk-from-dotenv",
        "from_both": "sk-environ-wins",
        "from_environ": "sk-from-environ",
    }
    assert config.unavailable == {
        "unset": "its API key variable CHATRELAY_TEST_UNSET_KEY is not set"
    }


def test_settings_hand_out_only_the_named_variables_and_as_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Path(".env").write_text("CHATRELAY_TEST_DOTENV_KEY=sk-from-dotenv\nOTHER=x\n")
    monkeypatch.setenv("CHATRELAY_TEST_ENVIRON_KEY", "sk-from-environ")
    found = Settings().secrets(["CHATRELAY_TEST_DOTENV_KEY", "CHATRELAY_TEST_ENVIRON_KEY", "NO"])
    assert set(found) == {"CHATRELAY_TEST_DOTENV_KEY", "CHATRELAY_TEST_ENVIRON_KEY"}
    assert found["CHATRELAY_TEST_DOTENV_KEY"].get_secret_value() == "sk-from-dotenv"
    assert "sk-from" not in repr(found) and "sk-from" not in str(found)
    assert Settings().secrets([]) == {}


@pytest.fixture
def dotenv_key() -> None:
    Path(".env").write_text("CHATRELAY_TEST_DOTENV_KEY=sk-ant-from-dotenv\n")


@pytest.mark.usefixtures("dotenv_key")
async def test_a_key_named_in_dotenv_reaches_the_upstream(client: httpx.AsyncClient) -> None:
    async with (
        FakeAnthropic() as fake,
        serve(make_settings(models_file=write_models(fake.base_url))) as url,
    ):
        result = await stream_chat(client, url, {"messages": USER_HI})
    assert result.named("end")["reason"] == "completed"
    assert fake.requests[0].api_key == "sk-ant-from-dotenv"


PROXIES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "http_proxy", "ALL_PROXY"])
def test_a_proxy_counts_only_from_the_process_environment(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    for each in PROXIES:
        monkeypatch.delenv(each, raising=False)
    Path(".env").write_text(f"{name}=http://127.0.0.1:3128\n")  # httpx reads no .env: ignored
    assert not make_settings().proxy_configured()
    monkeypatch.setenv(name, "http://127.0.0.1:3128")
    assert make_settings().proxy_configured()


def test_the_otel_switches_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert not tracing.wanted(make_settings().otel_variables())
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("CHATRELAY_TEST_NOT_OTEL", "x")
    variables = make_settings().otel_variables()
    assert variables["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
    assert all(name.startswith("OTEL_") for name in variables)
    assert tracing.wanted(variables)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing.wanted(make_settings().otel_variables())


def test_no_module_but_settings_reads_the_environment() -> None:
    """`os.environ`, `os.getenv` and `dotenv` appear in settings.py alone; db.py may hand the
    environment on, whole (`{**os.environ, ...}`), to its migration child process."""
    root = Path(chatrelay.__file__).parent
    readers: list[str] = []
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root).as_posix()
        if name == "settings.py":
            continue
        tree = ast.parse(path.read_text(), filename=name)
        passed_on = {
            id(value)
            for node in ast.walk(tree)
            if name == "db.py" and isinstance(node, ast.Dict)
            for key, value in zip(node.keys, node.values, strict=True)
            if key is None  # a `**mapping` entry
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "environb", "getenv"):
                if id(node) not in passed_on:
                    readers.append(f"{name}:{node.lineno} {node.attr}")
            elif isinstance(node, ast.Import | ast.ImportFrom):
                modules = [alias.name for alias in node.names]
                if isinstance(node, ast.ImportFrom) and node.module:
                    modules.append(node.module)
                if any(module.split(".")[0] == "dotenv" for module in modules):
                    readers.append(f"{name}:{node.lineno} dotenv")
    assert readers == []
