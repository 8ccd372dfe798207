import pytest

from inferflux.config import Config, ConfigError
from inferflux.config_load import load_config
from tests.conftest import REPO


def test_shipped_config_file_documents_exactly_the_defaults() -> None:
    assert load_config(f"{REPO}/config/inferflux.toml", env={}) == Config()


def test_precedence_file_then_env_then_flags(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  port: 9001\nscheduler:\n  n_parallel: 4\n")
    config = load_config(
        str(path),
        env={"INFERFLUX_SERVER_PORT": "9002", "INFERFLUX_SCHEDULER_PREFIX_CACHE": "off"},
        overrides={"scheduler": {"n_parallel": 8}},
    )
    assert config.server.port == 9002
    assert config.scheduler.n_parallel == 8
    assert config.scheduler.prefix_cache is False


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[server]\nprot = 1\n", "unknown field `prot`"),
        ("[server]\nport = 'x'\n", "Expected `int`"),
        ("[server]\nport = 70000\n", "server.port"),
        ("[scheduler]\nn_parallel = 64\nstep_tokens = 8\n", "step_tokens"),
        ("[speculative]\nmax_draft_tokens = 64\n", "speculative.max_draft_tokens must be 1-62"),
        ("[speculative]\nngram_min = 5\nngram_max = 3\n", "ngram_min <= ngram_max"),
        ("[speculative]\nmethod = 'model'\n", "Invalid enum value 'model'"),
        ("[scheduler]\nmax_step_ms = -5.0\n", "max_step_ms must be >= 0 or -1"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, text: str, complaint: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=complaint):
        load_config(str(path), env={})


def test_speculative_decoding_is_turned_on_from_the_environment() -> None:
    config = load_config(env={"INFERFLUX_SPECULATIVE_ENABLED": "true"})
    assert config.speculative.enabled and config.speculative.adaptive


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="INFERFLUX_SERVER_PORT"):
        load_config(env={"INFERFLUX_SERVER_PORT": "eighty"})


def test_prompt_chunks_are_cut_to_a_step_time_on_decode_nodes_only_by_default() -> None:
    scheduler = Config().scheduler
    assert scheduler.step_ms_for("decode") == 500
    assert scheduler.step_ms_for("unified") == 0 and scheduler.step_ms_for("prefill") == 0
    chosen = load_config(env={"INFERFLUX_SCHEDULER_MAX_STEP_MS": "0"}).scheduler
    assert chosen.step_ms_for("decode") == 0  # a choice beats the role's default
    chosen = load_config(env={"INFERFLUX_SCHEDULER_MAX_STEP_MS": "300"}).scheduler
    assert chosen.step_ms_for("unified") == 300
