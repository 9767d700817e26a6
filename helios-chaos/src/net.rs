//! Network namespaces that give each server a host of its own, so partitions cut real traffic.
//!
//! Server `i` runs in namespace `helios-chaos-<pid>-s<i>` with address `10.213.T.(10+i)` on its
//! loopback. Every pair of servers shares a veth link, and every server has a veth link to the
//! root namespace (address `10.213.T.1`), where the agents and this tool's clients run. There is
//! no bridge and no forwarding: Docker's `FORWARD DROP` policy would otherwise drop bridged
//! traffic. Cutting servers `i` and `j` apart adds a rule to each one's firewall dropping every
//! packet that arrives from the other: packets vanish silently, as on a real partition, and
//! senders see neither an error nor a reset (a blackhole route or an outgoing drop would fail
//! their calls at once). Clients can still reach every server, so a minority server keeps
//! receiving writes.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context, Result};

const PREFIX: &str = "helios-chaos-";

pub struct Mesh {
    pid: u32,
    octet: u8,
    servers: Vec<u64>,
    cut: BTreeSet<(u64, u64)>,
}

impl Mesh {
    /// Creates the namespaces and links for `servers` (ids 1..=9).
    pub fn create(servers: &[u64]) -> Result<Mesh> {
        remove_stale();
        let pid = std::process::id();
        let mesh = Mesh { pid, octet: 20 + (pid % 200) as u8, servers: servers.to_vec(), cut: BTreeSet::new() };
        mesh.build().context(
            "creating network namespaces (needs root, iproute2's `ip netns` and iptables; the fault run cannot cut traffic without them)",
        )?;
        Ok(mesh)
    }

    fn build(&self) -> Result<()> {
        let host = self.host_addr().to_string();
        for &i in &self.servers {
            let ns = self.netns(i);
            let me = self.addr(i).to_string();
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{me}/32"), "dev", "lo"])?;
            let (root_end, ns_end) = (self.link(0, i), self.link(i, 0));
            ip(&["link", "add", &root_end, "type", "veth", "peer", "name", &ns_end, "netns", &ns])?;
            ip(&["addr", "add", &format!("{host}/32"), "dev", &root_end])?;
            ip(&["link", "set", &root_end, "up"])?;
            ip(&["route", "add", &format!("{me}/32"), "dev", &root_end, "src", &host])?;
            ip(&["-n", &ns, "link", "set", &ns_end, "up"])?;
            ip(&["-n", &ns, "route", "add", &format!("{host}/32"), "dev", &ns_end, "src", &me])?;
        }
        for (a, &i) in self.servers.iter().enumerate() {
            for &j in &self.servers[a + 1..] {
                let (ni, nj) = (self.netns(i), self.netns(j));
                let (end_i, end_j) = (self.link(i, j), self.link(j, i));
                ip(&["-n", &ni, "link", "add", &end_i, "type", "veth", "peer", "name", &end_j, "netns", &nj])?;
                ip(&["-n", &ni, "link", "set", &end_i, "up"])?;
                ip(&["-n", &nj, "link", "set", &end_j, "up"])?;
                self.route(i, j)?;
                self.route(j, i)?;
            }
        }
        Ok(())
    }

    /// The namespace server `i` runs in.
    pub fn netns(&self, i: u64) -> String {
        format!("{PREFIX}{}-s{i}", self.pid)
    }

    /// Server `i`'s address, reachable from the root namespace and (unless cut) from the others.
    pub fn addr(&self, i: u64) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.octet, 10 + i as u8)
    }

    fn host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.octet, 1)
    }

    /// Interface names are at most 15 bytes: `hc<pid mod 10^4><from><to>`, 0 being the root.
    fn link(&self, from: u64, to: u64) -> String {
        format!("hc{}x{from}{to}", self.pid % 10_000)
    }

    fn route(&self, from: u64, to: u64) -> Result<()> {
        let dest = format!("{}/32", self.addr(to));
        let src = self.addr(from).to_string();
        ip(&["-n", &self.netns(from), "route", "add", &dest, "dev", &self.link(from, to), "src", &src])
    }

    /// Adds (`-A`) or deletes (`-D`) the rule in `at`'s namespace dropping what `from` sends.
    fn drop_from(&self, at: u64, from: u64, action: &str) -> Result<()> {
        let source = format!("{}/32", self.addr(from));
        run("ip", &["netns", "exec", &self.netns(at), "iptables", action, "INPUT", "-s", &source, "-j", "DROP"])
    }

    /// Cuts every link between the two sides (both directions).
    pub fn partition(&mut self, side: &[u64]) -> Result<()> {
        let other: Vec<u64> = self.servers.iter().copied().filter(|s| !side.contains(s)).collect();
        for &i in side {
            for &j in &other {
                if self.cut.insert((i.min(j), i.max(j))) {
                    self.drop_from(i, j, "-A")?;
                    self.drop_from(j, i, "-A")?;
                }
            }
        }
        Ok(())
    }

    /// Restores every cut link.
    pub fn heal(&mut self) -> Result<()> {
        for (i, j) in std::mem::take(&mut self.cut) {
            self.drop_from(i, j, "-D")?;
            self.drop_from(j, i, "-D")?;
        }
        Ok(())
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth ends, and with them their peers.
        for &i in &self.servers {
            let _ = ip(&["netns", "del", &self.netns(i)]);
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running `{program}`"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Namespaces left by a run that died without cleaning up (its pid is gone): their processes
/// are killed and the namespaces deleted.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|rest| rest.split('-').next()) else { continue };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
            for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", p]).status();
            }
        }
        let _ = ip(&["netns", "del", name]);
    }
}
