//! The ABDM ABHA V3 client.
//!
//! - [`client`]: [`AbdmClient`], what it holds and how it is built.
//! - `transport`: one call sent: headers, gate, answer parsing, the retries of auth, clock
//!   and key.
//! - `certificate`: ABDM's public key, cached and fetched again when ABDM refuses it.
//! - [`trace`]: [`Operation`], [`CallTrace`] and [`AttemptRecord`], and the [`CallGate`]
//!   every request passes.
//! - [`session`]: the gateway token cache with single-flight refresh.
//! - [`crypto`]: RSA encryption of identifiers with ABDM's published key (the private side is
//!   the sandbox's, in `sandbox::key`).
//! - [`error`]: every ABDM error shape parsed into [`AbdmError`], and [`Disposition`].
//! - [`messages`]: the fixed descriptions stored instead of ABDM's message text.
//! - [`benefit`], [`profile`], [`child`], [`enrol`]: the operations of each API area, with
//!   their typed requests and answers.

pub mod benefit;
mod certificate;
pub mod child;
pub mod client;
pub mod crypto;
pub mod enrol;
pub mod error;
pub mod messages;
pub mod profile;
pub mod session;
pub mod trace;
mod transport;

pub use client::AbdmClient;
pub use error::{AbdmError, ClientError, Disposition};
pub use trace::{AttemptRecord, CallGate, CallTrace, Operation};
