//! Both storage backends end in the same schema. Each service's migrations are written twice, once
//! for SQLite and once for PostgreSQL (identity columns, BYTEA and an in-place CHECK change differ),
//! so this test runs both sets and compares what they built: the same tables, each with the same
//! columns (name, kind of value, NOT NULL), the same unique keys and the same named indexes. A
//! column or index added to one backend's migrations and forgotten in the other fails here.
//!
//! PostgreSQL is a real server started by the test (skipped where it is not installed and CI is
//! not set).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use ordermesh_platform::{db::Migrations, db::Pool};
use ordermesh_testkit::Postgres;
use sqlx::Row;

/// What the comparison looks at, per table.
#[derive(Debug, Default, PartialEq, Eq)]
struct Table {
    /// Column name -> (kind of value, NOT NULL).
    columns: BTreeMap<String, (&'static str, bool)>,
    /// Column lists that are unique (primary key included).
    unique: BTreeSet<Vec<String>>,
    /// Indexes created by name in the migrations (not the ones backing constraints).
    indexes: BTreeSet<String>,
}

type Schema = BTreeMap<String, Table>;

/// The kind of value a declared type holds, in terms both backends share.
fn kind(declared: &str) -> &'static str {
    match declared.to_ascii_lowercase().as_str() {
        "integer" | "bigint" | "smallint" => "integer",
        "text" => "text",
        "blob" | "bytea" => "bytes",
        _ => "other",
    }
}

async fn sqlite_schema(pool: &Pool) -> Result<Schema> {
    let mut schema = Schema::new();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table'
           AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx_%'",
    )
    .fetch_all(pool)
    .await?;
    for name in tables {
        let mut table = Table::default();
        let mut key = Vec::new();
        for row in
            sqlx::query("SELECT name, type, \"notnull\", pk FROM pragma_table_info($1) ORDER BY pk")
                .bind(&name)
                .fetch_all(pool)
                .await?
        {
            let (column, declared): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            let (not_null, pk): (i64, i64) = (row.try_get(2)?, row.try_get(3)?);
            // A primary key column is never NULL, whatever it declares.
            table
                .columns
                .insert(column.clone(), (kind(&declared), not_null == 1 || pk > 0));
            if pk > 0 {
                key.push(column);
            }
        }
        if !key.is_empty() {
            table.unique.insert(key);
        }
        for row in sqlx::query("SELECT name, \"unique\", origin FROM pragma_index_list($1)")
            .bind(&name)
            .fetch_all(pool)
            .await?
        {
            let (index, unique, origin): (String, i64, String) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            if origin == "c" {
                table.indexes.insert(index.clone());
            }
            if unique == 1 && origin != "pk" {
                let columns: Vec<String> =
                    sqlx::query_scalar("SELECT name FROM pragma_index_info($1) ORDER BY seqno")
                        .bind(&index)
                        .fetch_all(pool)
                        .await?;
                table.unique.insert(columns);
            }
        }
        schema.insert(name, table);
    }
    Ok(schema)
}

async fn postgres_schema(pool: &Pool) -> Result<Schema> {
    let mut schema = Schema::new();
    for row in sqlx::query(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text
         FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name NOT LIKE '\\_sqlx\\_%'",
    )
    .fetch_all(pool)
    .await?
    {
        let (table, column, declared, nullable): (String, String, String, String) = (
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
        );
        schema
            .entry(table)
            .or_default()
            .columns
            .insert(column, (kind(&declared), nullable == "NO"));
    }
    // Every index: its table, name, uniqueness, whether a constraint owns it, and its columns.
    for row in sqlx::query(
        "SELECT t.relname::text, i.relname::text,
                CASE WHEN x.indisunique THEN 1 ELSE 0 END::bigint,
                CASE WHEN EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.oid)
                     THEN 1 ELSE 0 END::bigint,
                (SELECT string_agg(a.attname::text, ',' ORDER BY k.n)
                   FROM unnest(x.indkey) WITH ORDINALITY AS k(attnum, n)
                   JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum)
         FROM pg_index x
         JOIN pg_class i ON i.oid = x.indexrelid
         JOIN pg_class t ON t.oid = x.indrelid
         JOIN pg_namespace s ON s.oid = t.relnamespace
         WHERE s.nspname = 'public' AND t.relname NOT LIKE '\\_sqlx\\_%'",
    )
    .fetch_all(pool)
    .await?
    {
        let (table, index, unique, constraint, columns): (String, String, i64, i64, String) = (
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
            row.try_get(4)?,
        );
        let table = schema.entry(table).or_default();
        if constraint == 0 {
            table.indexes.insert(index);
        }
        if unique == 1 {
            table
                .unique
                .insert(columns.split(',').map(str::to_owned).collect());
        }
    }
    Ok(schema)
}

#[tokio::test]
async fn every_service_has_the_same_schema_on_sqlite_and_postgresql() -> Result<()> {
    let Some(server) = Postgres::start().await? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let services: [(&str, Migrations); 3] = [
        ("order", ordermesh_order::migrations()),
        ("payment", ordermesh_payment::migrations()),
        ("notifier", ordermesh_notifier::migrations()),
    ];
    for (service, migrations) in services {
        let sqlite = ordermesh_platform::db::open(
            &format!("sqlite://{}/{service}.db", dir.path().display()),
            &migrations,
        )
        .await?;
        let postgres =
            ordermesh_platform::db::open(&server.create_database(service).await?, &migrations)
                .await?;
        let (on_sqlite, on_postgres) = (
            sqlite_schema(&sqlite).await?,
            postgres_schema(&postgres).await?,
        );
        assert!(!on_sqlite.is_empty(), "{service}: no tables found");
        assert_eq!(
            on_sqlite, on_postgres,
            "{service}: the SQLite migrations (left) and the PostgreSQL ones (right) disagree"
        );
        // The same steps, by version and description, on both.
        let steps = |m: &sqlx::migrate::Migrator| -> Vec<(i64, String)> {
            m.iter()
                .map(|step| (step.version, step.description.to_string()))
                .collect()
        };
        assert_eq!(
            steps(&migrations.sqlite),
            steps(&migrations.postgres),
            "{service}: the two backends' migrations must be the same numbered steps"
        );
    }
    Ok(())
}
