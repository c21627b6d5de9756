//! The rules every migration from 0017 on follows, so that `abha-bulk migrate` is safe while
//! the previous release runs (docs/operations.md, "Upgrading"):
//!
//! - it bounds its lock waits: a transactional migration starts with `SET lock_timeout` (or
//!   `SET LOCAL lock_timeout`); a `-- no-transaction` one cannot (sqlx sends the file as one
//!   query string, which Postgres runs as one implicit transaction, where `CREATE INDEX
//!   CONCURRENTLY` is refused), so it holds exactly one statement and runs under the
//!   migrator session's `lock_timeout` ([`super::LOCK_TIMEOUT`]);
//! - an index on a table that already exists is built `CONCURRENTLY` (a plain `CREATE INDEX`
//!   blocks every write to the table for the whole build), in a `-- no-transaction` file;
//! - nothing rewrites a table under its ACCESS EXCLUSIVE lock: no `ALTER COLUMN ... TYPE`, no
//!   `ADD COLUMN` with a volatile default (or `serial`, or a stored generated column), no
//!   `VACUUM FULL`, no `CLUSTER`.
//!
//! 0001-0016 are grandfathered ([`GRANDFATHERED`]): they are applied on every deployed
//! database, and sqlx refuses a changed file by its checksum, so they cannot be fixed.

/// Migrations written before these rules, with why they stay as they are.
const GRANDFATHERED: &[(u32, &str)] = &[
    (
        1,
        "applied everywhere; creates the schema on an empty database",
    ),
    (2, "applied everywhere (checksummed by sqlx); new tables"),
    (3, "applied everywhere (checksummed by sqlx)"),
    (4, "applied everywhere (checksummed by sqlx)"),
    (5, "applied everywhere (checksummed by sqlx)"),
    (6, "applied everywhere (checksummed by sqlx)"),
    (7, "applied everywhere (checksummed by sqlx)"),
    (8, "applied everywhere (checksummed by sqlx)"),
    (9, "applied everywhere (checksummed by sqlx)"),
    (10, "applied everywhere (checksummed by sqlx)"),
    (
        11,
        "applied everywhere; plain indexes and an UPDATE of the small outbox, no timeout",
    ),
    (
        13,
        "applied everywhere; ALTER TABLE jobs without a lock_timeout",
    ),
    (
        14,
        "applied everywhere; brief ALTER of api_idempotency without a lock_timeout",
    ),
    (
        15,
        "applied everywhere; small reconcile tables, plain index",
    ),
    (16, "applied everywhere; already sets lock_timeout"),
];

/// The statements of `sql`, comments and dollar-quoted bodies blanked, upper-cased, with
/// runs of whitespace collapsed.
fn statements(sql: &str) -> Vec<String> {
    let b = sql.as_bytes();
    let find = |from: usize, pat: &[u8]| {
        b[from.min(b.len())..]
            .windows(pat.len())
            .position(|w| w == pat)
            .map_or(b.len(), |p| from + p + pat.len())
    };
    let mut out = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"--") {
            i = find(i, b"\n");
        } else if b[i..].starts_with(b"$$") {
            cur.extend_from_slice(b" $$ ");
            i = find(i + 2, b"$$");
        } else if b[i] == b'\'' {
            let end = find(i + 1, b"'");
            cur.extend_from_slice(&b[i..end]);
            i = end;
        } else {
            if b[i] == b';' {
                out.push(std::mem::take(&mut cur));
            } else {
                cur.push(b[i]);
            }
            i += 1;
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|s| {
            let s = String::from_utf8_lossy(&s).to_uppercase();
            s.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// The word after `prefix` in `s` (a table or index name).
fn word_after<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = &s[s.find(prefix)? + prefix.len()..];
    let rest = rest.strip_prefix("IF NOT EXISTS ").unwrap_or(rest);
    rest.split([' ', '(']).find(|w| !w.is_empty())
}

const VOLATILE: &[&str] = &[
    "RANDOM(",
    "GEN_RANDOM_UUID(",
    "UUID_GENERATE_",
    "CLOCK_TIMESTAMP(",
    "TIMEOFDAY(",
    "NEXTVAL(",
];

/// What is wrong with migration `sql` (empty: nothing).
fn lint(sql: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let no_tx = sql.lines().next().map(str::trim) == Some("-- no-transaction");
    let stmts = statements(sql);
    let created: Vec<&str> = stmts
        .iter()
        .filter_map(|s| word_after(s, "CREATE TABLE "))
        .collect();
    let sets_timeout =
        |s: &String| s.starts_with("SET LOCK_TIMEOUT") || s.starts_with("SET LOCAL LOCK_TIMEOUT");
    if no_tx {
        if stmts.len() != 1
            || !stmts[0].starts_with("CREATE")
            || !stmts[0].contains(" CONCURRENTLY ")
        {
            bad.push(
                "a `-- no-transaction` migration must be exactly one `CREATE [UNIQUE] INDEX CONCURRENTLY` statement (sqlx sends it as one query string, an implicit transaction; its lock_timeout is the migrator session's)".into(),
            );
        }
    } else if !stmts.first().is_some_and(sets_timeout) {
        bad.push("must start with `SET lock_timeout = '5s';` (or `SET LOCAL lock_timeout`)".into());
    }
    for s in &stmts {
        if s.starts_with("CREATE INDEX") || s.starts_with("CREATE UNIQUE INDEX") {
            let table = word_after(s, " ON ").unwrap_or("?");
            let table = table.strip_prefix("ONLY ").unwrap_or(table);
            if !s.contains(" CONCURRENTLY ") && !created.contains(&table) {
                bad.push(format!(
                    "index on the existing table {table} without CONCURRENTLY (in a `-- no-transaction` file)"
                ));
            }
            if s.contains(" CONCURRENTLY ") && !no_tx {
                bad.push(
                    "CREATE INDEX CONCURRENTLY needs `-- no-transaction` as the first line".into(),
                );
            }
        }
        let rewrites = [
            (
                s.contains("ALTER COLUMN") && s.contains(" TYPE "),
                "ALTER COLUMN ... TYPE",
            ),
            (
                s.contains(" SET DATA TYPE "),
                "ALTER COLUMN ... SET DATA TYPE",
            ),
            (s.contains("VACUUM FULL"), "VACUUM FULL"),
            (s.starts_with("CLUSTER"), "CLUSTER"),
            (
                s.starts_with("ALTER TABLE")
                    && s.contains("ADD COLUMN")
                    && (VOLATILE.iter().any(|v| s.contains(v))
                        || s.contains("SERIAL")
                        || (s.contains("GENERATED ALWAYS AS") && s.contains("STORED"))),
                "ADD COLUMN with a volatile default (serial, a stored generated column)",
            ),
        ];
        for (hit, what) in rewrites {
            if hit {
                bad.push(format!(
                    "{what} rewrites the table under an ACCESS EXCLUSIVE lock"
                ));
            }
        }
    }
    bad
}

#[test]
fn every_new_migration_is_safe_beside_the_previous_release() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut failures = Vec::new();
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("migrations/") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let Some(number) = name.get(..4).and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        seen += 1;
        if number <= 16 {
            assert!(
                GRANDFATHERED.iter().any(|(n, _)| *n == number),
                "{name}: numbered before 0017 but not grandfathered (a new file must take the next number)"
            );
            continue;
        }
        let sql = std::fs::read_to_string(&path).expect("readable");
        for why in lint(&sql) {
            failures.push(format!("{name}: {why}"));
        }
    }
    assert!(
        seen >= 15,
        "only {seen} migrations found in {}",
        dir.display()
    );
    assert!(
        failures.is_empty(),
        "unsafe migrations:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_lint_accepts_safe_migrations_and_catches_unsafe_ones() {
    let ok = [
        "-- recheck rows\nSET lock_timeout = '5s';\nALTER TABLE outbox ADD COLUMN recheck boolean NOT NULL DEFAULT false;\n",
        "SET LOCAL lock_timeout = '5s';\nALTER TABLE jobs ADD COLUMN seen_at timestamptz DEFAULT now();\n\
         CREATE TABLE key_sets (id bigserial PRIMARY KEY, fence bigint);\nCREATE INDEX key_sets_fence ON key_sets (fence);",
        "-- no-transaction\n-- why: the relay reads due rechecks\nCREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_recheck ON outbox (due_at) WHERE recheck;\n",
        "SET lock_timeout = '5s';\nCREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN CLUSTER; RETURN NEW; END $$;",
    ];
    for sql in ok {
        assert_eq!(lint(sql), Vec::<String>::new(), "{sql}");
    }
    let bad = [
        ("ALTER TABLE jobs ADD COLUMN x int;", "lock_timeout"),
        (
            "SET lock_timeout = '5s';\nCREATE INDEX jobs_x ON jobs (x);",
            "CONCURRENTLY",
        ),
        (
            "SET lock_timeout = '5s';\nCREATE INDEX CONCURRENTLY jobs_x ON jobs (x);",
            "no-transaction",
        ),
        (
            "-- no-transaction\nSET lock_timeout = '5s';\nCREATE INDEX CONCURRENTLY jobs_x ON jobs (x);",
            "exactly one",
        ),
        (
            "SET lock_timeout = '5s';\nALTER TABLE jobs ALTER COLUMN attempts TYPE bigint;",
            "TYPE",
        ),
        (
            "SET lock_timeout = '5s';\nALTER TABLE jobs ADD COLUMN t uuid DEFAULT gen_random_uuid();",
            "volatile",
        ),
        (
            "SET lock_timeout = '5s';\nALTER TABLE jobs ADD COLUMN n bigserial;",
            "volatile",
        ),
        ("SET lock_timeout = '5s';\nVACUUM FULL jobs;", "VACUUM FULL"),
        (
            "SET lock_timeout = '5s';\nCLUSTER jobs USING jobs_pkey;",
            "CLUSTER",
        ),
    ];
    for (sql, why) in bad {
        let found = lint(sql);
        assert!(found.iter().any(|f| f.contains(why)), "{sql}: {found:?}");
    }
}
