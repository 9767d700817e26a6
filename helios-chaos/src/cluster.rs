//! A cluster of real `helios-server` processes (and optionally `helios-client` agents) in a work
//! directory, each server either in a network namespace of its own or on 127.0.0.1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use helios_api::pb;
use helios_chaos::ports::free_port;

use crate::api::Servers;
use crate::net::Mesh;
use crate::procs::{binary, wait_serving, Member};

pub struct Cluster {
    pub servers: BTreeMap<u64, Member>,
    pub agents: BTreeMap<String, Member>,
    pub urls: BTreeMap<u64, String>,
    pub api: Servers,
    /// Where agents keep their task directories (`<tasks_dir>/<node>/allocs/...`).
    pub tasks_dir: PathBuf,
    // Dropped after the processes (fields drop in order): namespaces are deleted last.
    pub mesh: Option<Mesh>,
}

pub struct Options<'a> {
    pub bin_dir: &'a Path,
    pub work_dir: &'a Path,
    pub servers: u64,
    /// Each server in a namespace of its own (`Mesh`), so partitions are possible.
    pub namespaces: bool,
    pub snapshot_every: u64,
    /// An agent silent this long is marked down (`--heartbeat-ttl`).
    pub heartbeat_ttl_secs: u32,
}

impl Cluster {
    /// Starts the servers and waits until they serve and agree on a leader.
    pub async fn start(opts: Options<'_>) -> Result<Cluster> {
        let server_bin = binary(opts.bin_dir, "helios-server")?;
        let ids: Vec<u64> = (1..=opts.servers).collect();
        let mesh = if opts.namespaces { Some(Mesh::create(&ids)?) } else { None };
        let addrs: BTreeMap<u64, String> = ids
            .iter()
            .map(|&i| {
                let addr = match &mesh {
                    Some(mesh) => format!("{}:7000", mesh.addr(i)),
                    None => format!("127.0.0.1:{}", free_port()),
                };
                (i, addr)
            })
            .collect();
        let peers: Vec<String> = addrs.iter().flat_map(|(i, a)| ["--peer".to_string(), format!("{i}={a}")]).collect();
        // The servers authenticate each other with a key, as a real deployment would.
        let key_file = opts.work_dir.join("cluster.key");
        write_cluster_key(&key_file)?;
        let mut servers = BTreeMap::new();
        for &i in &ids {
            let data = opts.work_dir.join(format!("server-{i}"));
            std::fs::create_dir_all(&data)?;
            let mut args = vec![
                "--node-id".to_string(),
                i.to_string(),
                "--rpc-addr".to_string(),
                addrs[&i].clone(),
                "--data-dir".to_string(),
                data.display().to_string(),
                "--heartbeat-ttl".to_string(),
                opts.heartbeat_ttl_secs.to_string(),
                "--snapshot-every".to_string(),
                opts.snapshot_every.to_string(),
            ];
            args.extend(peers.iter().cloned());
            args.extend(["--cluster-key-file".to_string(), key_file.display().to_string()]);
            if mesh.is_some() {
                // Namespace addresses are not loopback; the run's network is its own.
                args.push("--insecure".to_string());
            }
            if i == 1 {
                // Ignored once the cluster is initialized, so restarts may keep it.
                args.push("--bootstrap".to_string());
            }
            let log = opts.work_dir.join(format!("server-{i}.log"));
            let netns = mesh.as_ref().map(|m| m.netns(i));
            servers.insert(i, Member::new(&format!("server {i}"), server_bin.clone(), args, netns, log));
        }
        let urls: BTreeMap<u64, String> = addrs.iter().map(|(i, a)| (*i, format!("http://{a}"))).collect();
        let api = Servers::new(&urls)?;
        let tasks_dir = opts.work_dir.join("agents");
        let mut cluster = Cluster { servers, agents: BTreeMap::new(), urls, api, tasks_dir, mesh };
        for member in cluster.servers.values_mut() {
            member.start()?;
        }
        for url in cluster.urls.values() {
            wait_serving(url, Duration::from_secs(60)).await?;
        }
        cluster.wait_for_leader(&ids, Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    /// Starts `count` agents (`agent-1`, ...), each advertising `room` (MHz, MB), and waits
    /// until the servers see them ready.
    pub async fn start_agents(&mut self, bin_dir: &Path, count: usize, room: (u32, u32)) -> Result<()> {
        let client_bin = binary(bin_dir, "helios-client")?;
        let server_list = self.urls.values().cloned().collect::<Vec<_>>().join(",");
        for k in 1..=count {
            let node = format!("agent-{k}");
            let data = self.tasks_dir.join(&node);
            std::fs::create_dir_all(&data)?;
            let args = vec![
                "--node-id".to_string(),
                node.clone(),
                "--server-addr".to_string(),
                server_list.clone(),
                "--client-rpc-addr".to_string(),
                format!("127.0.0.1:{}", free_port()),
                "--data-dir".to_string(),
                data.display().to_string(),
                "--cpu-mhz".to_string(),
                room.0.to_string(),
                "--memory-mb".to_string(),
                room.1.to_string(),
            ];
            let log = self.tasks_dir.join(format!("{node}.log"));
            let mut member = Member::new(&node, client_bin.clone(), args, None, log);
            member.start()?;
            self.agents.insert(node, member);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ids = self.api.ids();
            if let Some(leader) = self.api.agreed_leader(&ids).await {
                if let Ok(nodes) = self.api.nodes_of(leader).await {
                    if nodes.iter().filter(|n| n.status() == pb::NodeStatus::Ready).count() == count {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("the agents did not all register as ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_for_leader(&self, among: &[u64], patience: Duration) -> Result<u64> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(leader) = self.api.agreed_leader(among).await {
                return Ok(leader);
            }
            if Instant::now() > deadline {
                bail!("servers {among:?} agreed on no leader within {patience:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Restarts every stopped server and agent, resumes paused ones and heals partitions.
    pub fn restore_all(&mut self) -> Result<()> {
        if let Some(mesh) = &mut self.mesh {
            mesh.heal()?;
        }
        for member in self.servers.values_mut().chain(self.agents.values_mut()) {
            if member.is_paused() {
                member.resume()?;
            }
            if !member.is_running() {
                member.start()?;
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in self.agents.values_mut().chain(self.servers.values_mut()) {
            member.kill();
        }
        crate::procs::kill_tasks_under(&self.tasks_dir);
    }
}

/// The work directory: the given one, or a fresh temporary one (kept when the run fails, for
/// its logs).
pub fn work_dir(given: Option<&Path>) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    match given {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            Ok((dir.to_path_buf(), None))
        }
        None => {
            let tmp = tempfile::Builder::new().prefix("helios-chaos-").tempdir()?;
            Ok((tmp.path().to_path_buf(), Some(tmp)))
        }
    }
}

/// 32 random bytes as 64 hex digits, readable by their owner only.
fn write_cluster_key(path: &Path) -> Result<()> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    std::io::Write::write_all(&mut file, hex.as_bytes())?;
    Ok(())
}
