#![forbid(unsafe_code)]
pub mod image;
pub mod ops;
