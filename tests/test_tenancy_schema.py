"""The schema distributes by tenant unchanged (SPEC §7): checked on the database
the migrations actually built, on both backends.

Rules for Citus' ``create_distributed_table(table, 'organization_id')``: every
tenant table carries ``organization_id``, its primary key and every unique
constraint include it, every foreign key between tenant tables includes it on
both sides, and hot indexes lead with it. Only small tables without a tenant
(reference tables) are exempt.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import inspect

from canvass.db import create_engine
from canvass.settings import to_async_url

REFERENCE_TABLES = {"organizations", "login_directory", "alembic_version"}


def _inspect(database_url: str) -> dict[str, dict[str, Any]]:
    async def collect() -> dict[str, dict[str, Any]]:
        engine = create_engine(to_async_url(database_url), pool_size=1)

        def read(sync_conn: Any) -> dict[str, dict[str, Any]]:
            insp = inspect(sync_conn)
            return {
                table: {
                    "columns": [c["name"] for c in insp.get_columns(table)],
                    "pk": insp.get_pk_constraint(table)["constrained_columns"],
                    "unique": [u["column_names"] for u in insp.get_unique_constraints(table)],
                    "fks": [
                        (f["constrained_columns"], f["referred_table"], f["referred_columns"])
                        for f in insp.get_foreign_keys(table)
                    ],
                    "indexes": [(i["name"], i["column_names"]) for i in insp.get_indexes(table)],
                }
                for table in insp.get_table_names()
            }

        async with engine.connect() as conn:
            result = await conn.run_sync(read)
        await engine.dispose()
        return result

    return asyncio.run(collect())


@pytest.fixture(scope="module")
def schema(database_url: str) -> dict[str, dict[str, Any]]:
    return _inspect(database_url)


def _tenant_tables(schema: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: info for name, info in schema.items() if name not in REFERENCE_TABLES}


def test_the_migrations_built_the_tenant_tables(schema: dict[str, dict[str, Any]]) -> None:
    assert {"leads", "stage_changes", "accounts", "contacts", "users", "teams", "activities", "objections"} <= set(
        schema
    )


def test_every_tenant_table_is_keyed_by_organization_first(schema: dict[str, dict[str, Any]]) -> None:
    for table, info in _tenant_tables(schema).items():
        assert "organization_id" in info["columns"], table
        assert info["pk"] and info["pk"][0] == "organization_id", (table, info["pk"])


def test_every_unique_constraint_includes_the_tenant(schema: dict[str, dict[str, Any]]) -> None:
    for table, info in _tenant_tables(schema).items():
        for columns in info["unique"]:
            assert columns[0] == "organization_id", (table, columns)


def test_foreign_keys_stay_within_a_tenant(schema: dict[str, dict[str, Any]]) -> None:
    checked = 0
    for table, info in _tenant_tables(schema).items():
        for local, referred_table, referred in info["fks"]:
            assert referred_table not in REFERENCE_TABLES, (table, referred_table)
            assert local[0] == "organization_id" and referred[0] == "organization_id", (table, local, referred)
            checked += 1
    assert checked >= 10  # the composite keys really are there


def test_indexes_lead_with_the_tenant(schema: dict[str, dict[str, Any]]) -> None:
    for table, info in _tenant_tables(schema).items():
        for name, columns in info["indexes"]:
            assert columns and columns[0] == "organization_id", (table, name, columns)


def test_the_migrations_build_exactly_the_models(database_url: str) -> None:
    """Autogenerate finds nothing to do: models and migrations agree on both backends."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from canvass.db import Base

    async def diff() -> list[Any]:
        engine = create_engine(to_async_url(database_url), pool_size=1)
        async with engine.connect() as conn:
            found = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
        await engine.dispose()
        return found

    assert asyncio.run(diff()) == []
