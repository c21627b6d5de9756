//! Standard output of the commands, and what happens when its reader goes away.
//!
//! `abha-bulk status | head -1` closes the pipe after one line. Rust ignores SIGPIPE, so the
//! next write fails with `BrokenPipe`: the commands write through [`out!`], which turns that
//! error into [`StdoutClosed`], and `main` ends quietly with success when it sees it
//! ([`is_broken_pipe`]). Only a closed standard output counts: a broken connection to
//! Postgres or RabbitMQ is still an error. Any
//! other `println!`/`eprintln!` (a long-running command, a library) that meets a closed pipe
//! panics with "failed printing to stdout: Broken pipe"; the panic hook installed by
//! [`quiet_on_broken_pipe`] turns exactly that panic into a quiet exit 0.

/// `println!` that returns the write error (`?`) instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(crate::cli::output::stdout_error)?;
    }};
}

/// The reader of standard output went away.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub(crate) struct StdoutClosed;

/// A failed write to standard output: [`StdoutClosed`] for a closed pipe, else the error.
pub(crate) fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(e).context("cannot write to standard output")
    }
}

/// True when the error (or one of its causes) is a closed standard output.
pub(crate) fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<StdoutClosed>())
}

/// True for the message of the panic std raises when printing to a closed pipe.
fn is_broken_pipe_panic(message: &str) -> bool {
    (message.starts_with("failed printing to stdout")
        || message.starts_with("failed printing to stderr"))
        && message.contains("Broken pipe")
}

/// Installs a panic hook that exits quietly (status 0) when printing hit a closed pipe, and
/// reports every other panic as before.
pub(crate) fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if is_broken_pipe_panic(message) {
            std::process::exit(0);
        }
        default(info)
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_pipe_is_found_in_the_chain() {
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let e = stdout_error(io).context("writing the status");
        assert!(is_broken_pipe(&e));
        // A broken connection elsewhere is an error, not a quiet exit.
        let socket = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(!is_broken_pipe(&anyhow::Error::new(socket)));
        let other = anyhow::anyhow!("database down");
        assert!(!is_broken_pipe(&other));
        let full = stdout_error(std::io::Error::other("disk full"));
        assert!(!is_broken_pipe(&full));
        assert!(is_broken_pipe_panic(
            "failed printing to stdout: Broken pipe (os error 32)"
        ));
        assert!(!is_broken_pipe_panic("index out of bounds"));
    }
}
