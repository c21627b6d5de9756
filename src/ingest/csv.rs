//! Streaming CSV ingest (being written).
