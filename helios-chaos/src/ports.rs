//! Ports for servers and agents started as processes, which must be told their address before
//! they bind it.
//!
//! Asking the kernel for port 0 and passing that number on races: until the process binds it,
//! the port is free, and the kernel hands out ports from the same ephemeral range to outgoing
//! connections (every CLI call and gRPC channel of a busy test run makes some). A server that
//! then fails to bind leaves a cluster that never comes up. Helios's own scheduler hands out
//! dynamic host ports too (20000-32000 by default), which a concurrent test's task binds. So
//! ports come from outside both ranges, each handed out once per process, starting at an offset
//! of the process id so parallel test processes rarely meet.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

use helios_core::scheduler::select::DEFAULT_DYNAMIC_PORTS;

/// The first port handed out; below it are well-known and registered service ports.
const LOWEST: u32 = 10_000;

/// Handed out so far by this process (ports are offsets from the process's own start).
static HANDED_OUT: AtomicU32 = AtomicU32::new(0);

/// A port on 127.0.0.1 that nothing listens on, outside the kernel's ephemeral range and the
/// scheduler's default dynamic ports, never returned twice by one process.
pub fn free_port() -> u16 {
    let (low, high) = ephemeral_range();
    let dynamic = (u32::from(DEFAULT_DYNAMIC_PORTS.0), u32::from(DEFAULT_DYNAMIC_PORTS.1));
    let mut spans = without(&[(LOWEST, 65_535)], (low, high));
    spans = without(&spans, dynamic);
    // A kernel whose ephemeral range leaves (almost) nothing else: share it rather than fail.
    if spans.iter().map(|(a, b)| b - a + 1).sum::<u32>() < 1_000 {
        spans = without(&[(LOWEST, 65_535)], dynamic);
    }
    let total: u32 = spans.iter().map(|(a, b)| b - a + 1).sum();
    // Fibonacci hashing spreads nearby process ids far apart.
    let start = ((u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % u64::from(total)) as u32;
    for _ in 0..total {
        let n = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
        let port = nth_port(&spans, (start + n) % total);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {spans:?}");
}

/// `spans` (inclusive, ascending) with `cut` taken out.
fn without(spans: &[(u32, u32)], cut: (u32, u32)) -> Vec<(u32, u32)> {
    let mut kept = Vec::new();
    for &(a, b) in spans {
        if a < cut.0 {
            kept.push((a, b.min(cut.0 - 1)));
        }
        if b > cut.1 {
            kept.push((a.max(cut.1 + 1), b));
        }
    }
    kept
}

/// The `n`th port counting through `spans` in order.
fn nth_port(spans: &[(u32, u32)], mut n: u32) -> u16 {
    for &(a, b) in spans {
        let len = b - a + 1;
        if n < len {
            return (a + n) as u16;
        }
        n -= len;
    }
    unreachable!("n is below the spans' total")
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
    fn ports_are_outside_the_ephemeral_and_dynamic_ranges_and_never_repeat() {
        let (low, high) = ephemeral_range();
        let ephemeral_is_everything = low <= LOWEST + 1_000 && high >= 64_535;
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        for port in &ports {
            let ephemeral = (low..=high).contains(&u32::from(*port));
            assert!(ephemeral_is_everything || !ephemeral, "{port} is in {low}-{high}");
            let (first, last) = DEFAULT_DYNAMIC_PORTS;
            assert!(!(first..=last).contains(port), "{port} is in the dynamic ports {first}-{last}");
            TcpListener::bind(("127.0.0.1", *port)).expect("free");
        }
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
    }

    #[test]
    fn a_cut_splits_or_trims_the_spans_it_meets() {
        assert_eq!(without(&[(10, 100)], (20, 30)), vec![(10, 19), (31, 100)]);
        assert_eq!(without(&[(10, 100)], (5, 30)), vec![(31, 100)]);
        assert_eq!(without(&[(10, 100)], (50, 200)), vec![(10, 49)]);
        assert_eq!(without(&[(10, 19), (31, 100)], (0, 5)), vec![(10, 19), (31, 100)]);
        assert_eq!(nth_port(&[(10, 19), (31, 100)], 10), 31);
    }
}
