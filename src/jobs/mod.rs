//! Job kinds, their payloads and validation ([`kind`]), benefit names ([`benefit`]), and running
//! one job ([`execute`]).

pub mod benefit;
pub mod execute;
pub mod kind;
