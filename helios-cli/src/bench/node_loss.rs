//! `helios-cli bench node-loss`: how long a killed node's service work takes to run elsewhere.
//!
//! Runs a two-allocation service job, SIGKILLs the agent of a node that runs one of them (its pid
//! read from `<agent-pid-dir>/client-<node id>.pid`, as `scripts/local-cluster.sh` writes them),
//! and times, from the kill: the node marked down, and a replacement reported running on another
//! node. The job is purged at the end; restart the agent afterwards
//! (`scripts/local-cluster.sh start`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::connect::Conn;
use anyhow::{bail, Context, Result};
use clap::Args;
use helios_api::convert::job_to_pb;
use helios_api::pb;
use helios_api::pb::job_service_client::JobServiceClient;
use helios_core::{Job, JobType};

use crate::connect::Servers;
use crate::job::client;

#[derive(Args, Debug)]
pub struct NodeLossArgs {
    /// Directory holding the agents' pid files, `client-<node id>.pid`.
    #[arg(long, default_value = ".helios-local")]
    agent_pid_dir: PathBuf,
}

const PATIENCE: Duration = Duration::from_secs(120);

pub async fn run(servers: &Servers, args: NodeLossArgs) -> Result<()> {
    let channel = servers.connect().await?;
    let mut jobs = client(channel.clone());
    let mut nodes = pb::node_service_client::NodeServiceClient::new(channel);
    let name = format!("node-loss-{}", std::process::id());
    let mut job = Job::exec(&name, "sleep", vec!["3600".to_string()]);
    job.set_type(JobType::Service);
    job.task_groups[0].count = 2;
    jobs.submit_job(pb::SubmitJobRequest { job: Some(job_to_pb(&job)), ..Default::default() })
        .await
        .context("submitting the job")?;

    let running = |allocs: &[pb::Allocation], not_on: Option<&str>| {
        allocs
            .iter()
            .filter(|a| a.client_status() == pb::AllocationClientStatus::Running && Some(a.node_id.as_str()) != not_on)
            .count()
    };
    let deadline = Instant::now() + PATIENCE;
    let victim = loop {
        let allocs = allocations(&mut jobs, &name).await?;
        if running(&allocs, None) == 2 {
            break allocs[0].node_id.clone();
        }
        if Instant::now() > deadline {
            bail!("the job's two allocations did not start; are agents running?");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let pid_file = args.agent_pid_dir.join(format!("client-{victim}.pid"));
    let pid = std::fs::read_to_string(&pid_file).with_context(|| format!("reading {}", pid_file.display()))?;
    let killed = std::process::Command::new("kill").args(["-KILL", pid.trim()]).status().context("running kill")?;
    if !killed.success() {
        bail!("could not kill the agent of node {victim} (pid {})", pid.trim());
    }
    let killed_at = Instant::now();

    let mut down_after = None;
    let replaced_after = loop {
        if down_after.is_none() {
            let node = nodes
                .get_node(pb::GetNodeRequest { id: victim.clone(), ..Default::default() })
                .await?
                .into_inner()
                .node;
            if node.is_some_and(|n| n.status() == pb::NodeStatus::Down) {
                down_after = Some(killed_at.elapsed());
            }
        }
        if running(&allocations(&mut jobs, &name).await?, Some(&victim)) == 2 {
            break killed_at.elapsed();
        }
        if Instant::now() > killed_at + PATIENCE {
            bail!("node {victim}'s allocation was not replaced within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let down_after = down_after.unwrap_or(replaced_after);
    println!(
        "killed the agent of node {victim}: marked down after {:.2}s, its allocation running elsewhere after {:.2}s",
        down_after.as_secs_f64(),
        replaced_after.as_secs_f64()
    );
    jobs.stop_job(pb::StopJobRequest { name, purge: true, ..Default::default() }).await.context("purging the job")?;
    Ok(())
}

async fn allocations(jobs: &mut JobServiceClient<Conn>, name: &str) -> Result<Vec<pb::Allocation>> {
    let reply = jobs.get_job_status(pb::GetJobStatusRequest { name: name.to_string(), ..Default::default() }).await?;
    Ok(reply.into_inner().allocations)
}
