//! The driver's errors: each says which step failed, so a red CI run points at the cause.

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A command ran but did not succeed.
    #[error("{what} failed: {detail}")]
    Command {
        /// The step.
        what: String,
        /// Exit status and the end of its output.
        detail: String,
    },
    /// Something did not become ready in time.
    #[error("{what} not ready within {secs} s")]
    Timeout {
        /// The step.
        what: String,
        /// The limit.
        secs: u64,
    },
    /// A call to the sandbox's admin endpoints failed.
    #[error("sandbox admin {what}: {source}")]
    Http {
        /// The endpoint.
        what: String,
        /// Cause.
        source: reqwest::Error,
    },
    /// A query on the run's database failed.
    #[error("Postgres {what}: {source}")]
    Sql {
        /// The query.
        what: String,
        /// Cause.
        source: sqlx::Error,
    },
    /// The run was interrupted (Ctrl-C / SIGTERM).
    #[error("interrupted")]
    Interrupted,
}

/// The driver's result.
pub type Result<T> = std::result::Result<T, ChaosError>;

/// `map_err` helper for I/O steps.
pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ChaosError {
    let what = what.into();
    move |source| ChaosError::Io { what, source }
}

/// `map_err` helper for sandbox admin calls.
pub fn http(what: impl Into<String>) -> impl FnOnce(reqwest::Error) -> ChaosError {
    let what = what.into();
    move |source| ChaosError::Http { what, source }
}

/// `map_err` helper for queries.
pub fn sql(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> ChaosError {
    let what = what.into();
    move |source| ChaosError::Sql { what, source }
}
