//! What the agent reports about its machine (its drivers fingerprint themselves: `crate::drivers`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use helios_api::pb;

use crate::ClientConfig;

/// Nomad's name for the node's address: where its tasks' ports are reached (`NOMAD_IP_<label>`).
pub const IP_ATTRIBUTE: &str = "unique.network.ip-address";

pub fn node(config: &ClientConfig, advertised: SocketAddr) -> pb::Node {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = kernel_release();
    let attributes = BTreeMap::from([
        ("os".to_string(), std::env::consts::OS.to_string()),
        ("arch".to_string(), std::env::consts::ARCH.to_string()),
        ("cpu.cores".to_string(), cpus.to_string()),
        ("kernel".to_string(), kernel.clone()),
        // Nomad's names for the same facts, so a Nomad job's `${attr.kernel.name}` constraints
        // mean what they meant there.
        ("kernel.name".to_string(), std::env::consts::OS.to_string()),
        ("kernel.version".to_string(), kernel),
        ("os.name".to_string(), os_name()),
        ("cpu.arch".to_string(), go_arch().to_string()),
        ("cpu.numcores".to_string(), cpus.to_string()),
        ("unique.hostname".to_string(), hostname.clone()),
        (IP_ATTRIBUTE.to_string(), node_ip(advertised.ip()).to_string()),
        // This agent gives exec tasks their group's ports (older ones would drop them).
        (helios_core::job::GROUP_PORTS_ATTRIBUTE.to_string(), "1".to_string()),
        (helios_core::service::SERVICES_ATTRIBUTE.to_string(), "1".to_string()),
    ]);
    pb::Node {
        id: config.node_id.clone(),
        hostname,
        rpc_addr: advertised.to_string(),
        attributes,
        meta: config.meta.clone(),
        drivers: Vec::new(),
        resources: Some(pb::Resources {
            cpu_mhz: config.cpu_mhz.unwrap_or_else(|| cpu_mhz(cpus)),
            memory_mb: config.memory_mb.unwrap_or_else(memory_mb),
        }),
        ..Default::default()
    }
}

/// Where this node's tasks are reached: the address the agent advertises (`--client-rpc-addr`)
/// when that is a routable one, else, as Nomad's network fingerprint, the source address of the
/// default route; loopback on a machine with no route at all.
fn node_ip(advertised: IpAddr) -> IpAddr {
    if !advertised.is_loopback() && !advertised.is_unspecified() {
        return advertised;
    }
    // Connecting a UDP socket sends nothing: it only asks the kernel for a route (TEST-NET-1).
    let routed = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|socket| socket.connect("192.0.2.1:9").and_then(|()| socket.local_addr()))
        .map(|addr| addr.ip());
    routed.ok().filter(|ip| !ip.is_unspecified()).unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// The distribution's id (`debian`, `ubuntu`, ...), as Nomad's `os.name`; the OS otherwise.
fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|release| {
            release.lines().find_map(|l| l.strip_prefix("ID=")).map(|id| id.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| std::env::consts::OS.to_string())
}

/// The architecture as Nomad (Go) names it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Cores x clock speed, as Nomad counts CPU; 1 GHz per core when the clock cannot be read.
fn cpu_mhz(cpus: usize) -> u32 {
    let per_core = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(1000.0);
    u32::try_from(cpus).unwrap_or(u32::MAX).saturating_mul(per_core as u32).max(1)
}

/// Total memory in MB; 1 GB when /proc/meminfo cannot be read.
fn memory_mb() -> u32 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            u32::try_from(kb / 1024).ok()
        })
        .unwrap_or(1024)
        .max(1)
}

/// The part of the dynamic port range `(low, high)` that the kernel also gives outgoing
/// connections as their local ports (`ip_local_port_range`): a task given one of those ports
/// cannot listen on it while a connection holds it. Nomad's default range stays below Linux's.
pub fn ephemeral_overlap((low, high): (u16, u16)) -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut bounds = text.split_whitespace().map(|p| p.parse::<u16>());
    let (Some(Ok(first)), Some(Ok(last))) = (bounds.next(), bounds.next()) else { return None };
    overlap((low, high), (first, last))
}

fn overlap(a: (u16, u16), b: (u16, u16)) -> Option<(u16, u16)> {
    let (low, high) = (a.0.max(b.0), a.1.min(b.1));
    (low <= high).then_some((low, high))
}

#[cfg(test)]
mod tests {
    use super::overlap;

    #[test]
    fn a_range_overlaps_the_ephemeral_ports_only_where_they_meet() {
        assert_eq!(overlap((20_000, 32_000), (32_768, 60_999)), None);
        assert_eq!(overlap((30_000, 40_000), (32_768, 60_999)), Some((32_768, 40_000)));
        assert_eq!(overlap((40_000, 40_999), (32_768, 60_999)), Some((40_000, 40_999)));
        assert_eq!(overlap((32_768, 32_768), (32_768, 60_999)), Some((32_768, 32_768)));
    }
}
