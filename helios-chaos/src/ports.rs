//! Ports for servers and agents started as processes, which must be told their address before
//! they bind it.
//!
//! Asking the kernel for port 0 and passing that number on races: until the process binds it,
//! the port is free, and the kernel hands out ports from the same ephemeral range to outgoing
//! connections (every CLI call and gRPC channel of a busy test run makes some). A server that
//! then fails to bind leaves a cluster that never comes up. So ports come from below the
//! ephemeral range, which outgoing connections never use, each handed out once per process,
//! starting at an offset of the process id so parallel test processes rarely meet.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The first port handed out; below it are well-known and registered service ports.
const LOWEST: u32 = 10_000;

/// Handed out so far by this process (ports are offsets from the process's own start).
static HANDED_OUT: AtomicU32 = AtomicU32::new(0);

/// A port on 127.0.0.1 that nothing listens on, outside the kernel's ephemeral range, never
/// returned twice by one process.
pub fn free_port() -> u16 {
    let (low, high) = ephemeral_range();
    // Between LOWEST and the ephemeral range, or above it when it starts too low for that (and
    // anywhere from LOWEST up when it leaves no room either side).
    let (first, last) = match (low, high) {
        (low, _) if low > LOWEST + 1_000 => (LOWEST, low - 1),
        (_, high) if high < 64_535 => (high + 1, 65_535),
        _ => (LOWEST, 65_535),
    };
    let span = last - first + 1;
    // Fibonacci hashing spreads nearby process ids far apart.
    let start = ((u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % u64::from(span)) as u32;
    for _ in 0..span {
        let n = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
        let port = (first + (start + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {first} and {last}");
}

/// The kernel's ephemeral port range (Linux's default when it cannot be read).
fn ephemeral_range() -> (u32, u32) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = text.split_whitespace().filter_map(|n| n.parse().ok());
    match (bounds.next(), bounds.next()) {
        (Some(low), Some(high)) if low <= high => (low, high),
        _ => (32_768, 60_999),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_outside_the_ephemeral_range_and_never_repeat() {
        let (low, high) = ephemeral_range();
        let ephemeral_is_everything = low <= LOWEST + 1_000 && high >= 64_535;
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        for port in &ports {
            let ephemeral = (low..=high).contains(&u32::from(*port));
            assert!(ephemeral_is_everything || !ephemeral, "{port} is in {low}-{high}");
            TcpListener::bind(("127.0.0.1", *port)).expect("free");
        }
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
    }
}
