//! Helpers the reliability runs share with other crates' tests: ports for processes, and a TCP
//! proxy that freezes.

pub mod ports;
pub mod proxy;
