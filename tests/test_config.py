"""PostgresConfig: defaults, environment, validation that names the field."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pepperpy_pg_memory import MemoryConfigurationError, MemoryError, MemoryType, PostgresConfig


def test_defaults_run_embedded_with_the_seed_fields() -> None:
    config = PostgresConfig()
    assert config.is_embedded
    assert (config.port, config.database, config.user, config.min_size, config.max_size) == (
        5432,
        "pepperpy",
        "postgres",
        1,
        10,
    )
    assert config.schema_name == "public" and config.table == "memories"
    assert "pepperpy-pg-memory" in str(config.data_dir)


def test_seed_style_external_config() -> None:
    config = PostgresConfig(
        host="db.internal",
        port=6543,
        database="pepperpy",
        user="agent",
        password="s3cret/with:chars",
        min_size=1,
        max_size=10,
    )
    assert not config.is_embedded
    assert (
        config.connection_dsn()
        == "postgresql://agent:s3cret%2Fwith%3Achars@db.internal:6543/pepperpy"
    )
    assert "s3cret" not in repr(config) and "s3cret" not in str(config)
    assert "s3cret" not in config.describe_target()


def test_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PEPPERPY_PG_HOST", "pg.example")
    monkeypatch.setenv("PEPPERPY_PG_SCHEMA", "agent_memory")
    monkeypatch.setenv("PEPPERPY_PG_MAX_SIZE", "20")
    monkeypatch.setenv("PEPPERPY_PG_DATA_DIR", str(tmp_path))
    config = PostgresConfig()
    assert config.host == "pg.example" and not config.is_embedded
    assert config.schema_name == "agent_memory"
    assert config.max_size == 20
    assert config.data_dir == tmp_path


def test_only_prefixed_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # Unprefixed names (the field's own, or its constructor alias) are not the library's.
    for name in ("SCHEMA", "schema_name", "SCHEMA_NAME", "TABLE", "HOST", "DSN"):
        monkeypatch.setenv(name, "oops")
    config = PostgresConfig()
    assert (config.schema_name, config.table, config.host, config.dsn) == (
        "public",
        "memories",
        None,
        None,
    )
    monkeypatch.setenv("PEPPERPY_PG_SCHEMA_NAME", "by_field_name")
    assert PostgresConfig().schema_name == "by_field_name"
    assert PostgresConfig(schema="given").schema_name == "given"
    assert PostgresConfig(schema_name="given_too").schema_name == "given_too"


def test_the_cli_reads_dotenv_below_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pepperpy_pg_memory.cli import load_dotenv_file

    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "PEPPERPY_PG_TABLE=from_dotenv\nPEPPERPY_PG_SCHEMA=dotenv_schema\nSCHEMA=oops\n"
        "UNRELATED=1\n"
    )
    monkeypatch.setenv("PEPPERPY_PG_SCHEMA", "from_environment")
    for name in ("PEPPERPY_PG_TABLE", "UNRELATED"):
        monkeypatch.delenv(name, raising=False)
    assert load_dotenv_file(dotenv) == ["PEPPERPY_PG_TABLE"]
    config = PostgresConfig()
    assert (config.table, config.schema_name) == ("from_dotenv", "from_environment")
    assert "UNRELATED" not in __import__("os").environ
    monkeypatch.delenv("PEPPERPY_PG_TABLE")


def test_dsn_wins_and_stays_secret() -> None:
    config = PostgresConfig(dsn="postgresql://u:hunter2@h/db")
    assert not config.is_embedded
    assert config.connection_dsn() == "postgresql://u:hunter2@h/db"
    assert "hunter2" not in repr(config)


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"port": 0}, "port"),
        ({"port": 70_000}, "port"),
        ({"min_size": 5, "max_size": 2}, "max_size"),
        ({"retry_base_delay": 3, "retry_max_delay": 1}, "retry_max_delay"),
        ({"schema": "Bad-Name"}, "schema_name"),
        ({"schema": "a", "schema_name": "b"}, "schema_name"),
        ({"table": "drop table;"}, "table"),
        ({"table": "x" * 60}, "table"),
        ({"text_search_config": "english'; --"}, "text_search_config"),
        ({"hnsw_iterative_scan": "sometimes"}, "hnsw_iterative_scan"),
        ({"type_ttls": {"short_term": "-1 day"}}, "type_ttls"),
        ({"no_such_field": 1}, "no_such_field"),
    ],
)
def test_invalid_configuration_names_the_field(
    fields: dict[str, object], field: str | None
) -> None:
    with pytest.raises(MemoryConfigurationError) as caught:
        PostgresConfig(**fields)  # type: ignore[arg-type]
    error = caught.value
    assert isinstance(error, MemoryError) and isinstance(error, ValueError)
    assert error.store_type == "postgres"
    if field is not None:
        assert error.field is not None and error.field.startswith(field)
        assert field in str(error)
    else:
        assert "min_size (5) exceeds max_size (2)" in str(error)


def test_type_ttls_override_merges_with_defaults() -> None:
    config = PostgresConfig(type_ttls={MemoryType.SHORT_TERM: timedelta(minutes=5)})
    assert config.ttl_for(MemoryType.SHORT_TERM) == timedelta(minutes=5)
    assert config.ttl_for(MemoryType.WORKING) == timedelta(hours=1)
    assert config.ttl_for(MemoryType.LONG_TERM) is None


def test_config_is_frozen() -> None:
    config = PostgresConfig()
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        config.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"query": "x", "min_score": 2}, "min_score"),
        ({"query": "  "}, "query"),
        ({"query": "x", "scope_id": "ana"}, "scope_id"),
        ({"query": "x", "index_type": "contextual", "embedding": [1.0]}, "embedding"),
        ({"query": "x", "limit": 0}, "limit"),
    ],
)
def test_query_errors_name_the_field_to_fix(fields: dict[str, Any], field: str) -> None:
    from pepperpy_pg_memory import MemoryQuery, MemoryValidationError

    with pytest.raises(MemoryValidationError, match=rf"^invalid MemoryQuery\.{field}: "):
        MemoryQuery(**fields)
