//! Job kinds and payloads (being written).
