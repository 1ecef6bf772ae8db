//! Docker provider (in progress).
