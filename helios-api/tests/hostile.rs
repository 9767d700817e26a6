//! Hostile gRPC input: whatever bytes arrive as a job, decoding and conversion give a valid job
//! or a clear error (a problem naming its field), never a panic. Mutating the encoding of real
//! jobs reaches what random bytes rarely do: strings with control characters, huge counts,
//! unknown enum values, missing drivers.

use helios_api::convert::job_from_pb;
use helios_api::pb;
use helios_core::{DockerConfig, Job, PortMapping, TaskDriver};
use proptest::prelude::*;
use prost::Message;

/// Valid jobs to start from: an exec batch job and a docker service with ports.
fn seeds() -> Vec<Vec<u8>> {
    let exec = Job::exec("report", "sh", vec!["-c".into(), "echo hi".into()]);
    let mut docker = Job::exec("web", "", Vec::new());
    docker.task_groups[0].count = 3;
    docker.task_groups[0].tasks[0].resources.memory_mb = 64;
    docker.task_groups[0].tasks[0].driver = TaskDriver::Docker(DockerConfig {
        ports: vec![PortMapping { name: "http".into(), container_port: 80, host_port: Some(8080) }],
        ..DockerConfig::for_image("helios-busybox")
    });
    [exec, docker].iter().map(|j| helios_api::convert::job_to_pb(j).encode_to_vec()).collect()
}

fn checked(bytes: &[u8]) -> Result<(), TestCaseError> {
    // As the server receives it: a message that does not decode is refused by tonic itself.
    let Ok(job) = pb::Job::decode(bytes) else { return Ok(()) };
    match job_from_pb(job) {
        Ok(job) => prop_assert!(job.validate().is_ok(), "an accepted job must be valid"),
        Err(problems) => {
            let text = problems.to_string();
            prop_assert!(!text.is_empty() && text.contains(": "), "a problem names its field: {text:?}");
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn any_bytes_are_a_valid_job_or_a_named_problem(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        checked(&bytes)?;
    }

    #[test]
    fn a_real_job_with_bytes_changed_is_a_valid_job_or_a_named_problem(
        seed in 0usize..2,
        changes in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = seeds()[seed].clone();
        for (at, value) in changes {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        checked(&bytes)?;
    }
}
