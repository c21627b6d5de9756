//! Printed error chains (`error: {:#}`) never say the same thing twice: an error either
//! formats its cause or exposes it as `source`, not both.

use std::path::PathBuf;

use abha_bulk::abdm::ClientError;
use abha_bulk::abdm::crypto::CryptoError;
use abha_bulk::ingest::csv::IngestError;
use abha_bulk::queue::QueueError;
use abha_bulk::sandbox::SandboxError;
use abha_bulk::store::StoreError;
use abha_bulk::submit::SubmitError;

fn io(text: &str) -> std::io::Error {
    std::io::Error::other(text.to_string())
}

/// Every level's text, outermost first.
fn chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut next = e.source();
    while let Some(inner) = next {
        out.push(inner.to_string());
        next = inner.source();
    }
    out
}

#[test]
fn no_error_repeats_its_cause() {
    let errors: Vec<Box<dyn std::error::Error + Send + Sync>> = vec![
        Box::new(SubmitError::Ingest {
            path: PathBuf::from("links.csv"),
            source: IngestError::Empty,
        }),
        Box::new(SubmitError::Io {
            path: PathBuf::from("links.csv"),
            source: io("permission denied"),
        }),
        Box::new(IngestError::Io(io("disk on fire"))),
        Box::new(StoreError::Query {
            what: "reading the outbox",
            cause: sqlx::Error::PoolTimedOut,
        }),
        Box::new(StoreError::Connect {
            what: "creating the database",
            cause: sqlx::Error::PoolTimedOut,
        }),
        Box::new(StoreError::Migrate(
            sqlx::migrate::MigrateError::VersionMissing(3),
        )),
        Box::new(QueueError::Amqp {
            what: "connecting",
            cause: lapin::Error::from(io("connection refused")),
        }),
        Box::new(ClientError::Crypto(CryptoError::Decrypt)),
        Box::new(ClientError::Session(Box::new(ClientError::Timeout))),
        Box::new(SandboxError::Bind {
            addr: "127.0.0.1:8089".parse().unwrap(),
            source: io("address in use"),
        }),
        Box::new(SandboxError::Key(CryptoError::Decrypt)),
    ];
    for e in errors {
        let levels = chain(e.as_ref());
        for pair in levels.windows(2) {
            assert!(
                !pair[0].contains(&pair[1]),
                "{:?} repeats its cause {:?}",
                pair[0],
                pair[1]
            );
        }
        let printed = format!("{:#}", anyhow::Error::from_boxed(e));
        for level in &levels {
            assert_eq!(
                printed.matches(level.as_str()).count(),
                1,
                "{printed:?} says {level:?} more than once"
            );
        }
    }
    let empty = anyhow::Error::from(SubmitError::Ingest {
        path: PathBuf::from("links.csv"),
        source: IngestError::Empty,
    });
    assert_eq!(format!("{empty:#}"), "links.csv: the file is empty");
}
