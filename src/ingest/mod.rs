//! Turning uploads into validated jobs.

pub mod csv;
