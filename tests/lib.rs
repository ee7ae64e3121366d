//! see pipeline.rs
