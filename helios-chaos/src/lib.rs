//! What the reliability runs and the process tests of other crates share: picking ports for
//! the processes they start.

pub mod ports;
