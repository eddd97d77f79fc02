"""No Docker engine runs here: the compose file is checked by reading it."""

from __future__ import annotations

from pathlib import Path

import yaml

from pepperpy_pg_memory import PostgresConfig

ROOT = Path(__file__).resolve().parent.parent


def test_compose_runs_pgvector_with_health_check_and_volume() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    postgres = compose["services"]["postgres"]
    assert postgres["image"].startswith("pgvector/pgvector:pg")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volume = postgres["volumes"][0].split(":")
    assert volume[0] in compose["volumes"] and volume[1] == "/var/lib/postgresql/data"
    assert (
        postgres["environment"]["POSTGRES_DB"] == compose["x-pepperpy-env"]["PEPPERPY_PG_DATABASE"]
    )


def test_compose_and_env_example_name_only_variables_the_config_reads() -> None:
    fields = {f"PEPPERPY_PG_{name.upper()}" for name in PostgresConfig.model_fields}
    fields.add("PEPPERPY_PG_SCHEMA")  # the alias of schema_name
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert set(compose["x-pepperpy-env"]) <= fields
    example = [
        line.lstrip("# ").split("=")[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and line.lstrip("# ").startswith("PEPPERPY_PG_")
    ]
    assert example and set(example) <= fields
    config = PostgresConfig(
        **{
            key.removeprefix("PEPPERPY_PG_").lower(): value
            for key, value in compose["x-pepperpy-env"].items()
        }
    )
    assert config.host == "postgres" and not config.is_embedded
