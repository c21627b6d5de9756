//! Job kinds, their payloads and validation ([`kind`]), and running one job ([`execute`]).

pub mod execute;
pub mod kind;
