//! The `cargoship` library: the archive format and its operations (ship, restore,
//! verify, survey, list), used by the `cargoship` binary and by its tests.

pub mod archive;
