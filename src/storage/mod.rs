//! Blob backends and the chunk cache (being written).
