//! Kiln's fuzz targets (cargo-fuzz): see [`targets`].

pub mod targets;
