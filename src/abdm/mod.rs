//! The ABDM ABHA V3 client.
//!
//! - [`client`]: [`AbdmClient`], one method per operation, headers and retries of auth.
//! - [`session`]: the gateway token cache with single-flight refresh.
//! - [`crypto`]: RSA encryption of identifiers with ABDM's published key.
//! - [`error`]: every ABDM error shape parsed into [`AbdmError`], and [`Disposition`].
//! - [`messages`]: the fixed descriptions stored instead of ABDM's message text.
//! - [`benefit`], [`profile`], [`child`], [`enrol`]: typed requests and answers.

pub mod benefit;
pub mod child;
pub mod client;
pub mod crypto;
pub mod enrol;
pub mod error;
pub mod messages;
pub mod profile;
pub mod session;

pub use client::{AbdmClient, AttemptRecord, CallGate, CallTrace, Operation};
pub use error::{AbdmError, ClientError, Disposition};
