use std::path::Path;

use helios_core::{JobType, PortMapping, RestartMode, TaskDriver};

use super::spec::parse_duration_secs;
use super::*;

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples")
}

#[test]
fn every_example_parses_and_validates() {
    let mut seen = 0;
    for entry in std::fs::read_dir(examples()).expect("docs/examples") {
        let path = entry.expect("entry").path();
        if Format::of(&path).is_ok() {
            load(&path).unwrap_or_else(|e| panic!("{e:#}"));
            seen += 1;
        }
    }
    assert!(seen >= 2, "examples found: {seen}");
}

#[test]
fn the_toml_example_declares_a_docker_service() {
    let file = load(&examples().join("web.toml")).expect("web.toml");
    let job = file.job;
    assert_eq!((job.name.as_str(), job.job_type), ("web", JobType::Service));
    let group = &job.task_groups[0];
    assert_eq!(group.count, 2);
    assert_eq!((group.restart.attempts, group.restart.interval_secs, group.restart.delay_secs), (2, 1800, 5));
    assert_eq!(group.restart.mode, RestartMode::Fail);
    let task = &group.tasks[0];
    assert_eq!(task.kill_timeout_secs, 2);
    assert_eq!((task.resources.cpu_mhz, task.resources.memory_mb), (200, 64));
    let TaskDriver::Docker(docker) = &task.driver else { panic!("docker expected") };
    assert_eq!(docker.image, "helios-busybox");
    assert_eq!(docker.ports, vec![PortMapping { name: "http".into(), container_port: 8080, host_port: None }]);
    assert!(file.notes.is_empty());
}

#[test]
fn the_json_example_declares_an_exec_batch_job() {
    let job = load(&examples().join("report.json")).expect("report.json").job;
    assert_eq!((job.job_type, job.priority, job.task_groups[0].count), (JobType::Batch, 60, 3));
    assert_eq!(job.constraints[0].attribute, "attr.os", "Nomad's ${{...}} is unwrapped");
    let TaskDriver::Exec(exec) = &job.task_groups[0].tasks[0].driver else { panic!("exec expected") };
    assert_eq!(exec.command, "sh");
}

#[test]
fn syntax_errors_and_unknown_fields_name_their_line() {
    let bad = "name = \"x\"\n\n[[group]]\nname = \"g\"\ncuont = 2\n";
    let err = parse(bad, Format::Toml).err().expect("unknown field").to_string();
    assert!(err.starts_with("line 5: unknown field `cuont`"), "{err}");
    let err = parse("name = \"x\"\ngroup = [\n", Format::Toml).err().expect("syntax").to_string();
    assert!(err.starts_with("line 2: ") || err.starts_with("line 3: "), "{err}");
    let err = parse("{\n  \"name\": \"x\",\n  \"vault\": {}\n}", Format::Json).err().expect("unknown").to_string();
    assert!(err.starts_with("line 3, column 9: unknown field `vault`"), "{err}");
}

#[test]
fn nomad_network_ports_map_to_container_and_host_ports() {
    let text = r#"
name = "api"
[[group]]
name = "api"
[group.network]
mode = "bridge"
[group.network.port.http]
static = 8080
to = 80
[group.network.port.admin]
to = 9000
[[group.task]]
name = "api"
driver = "docker"
config = { image = "helios-busybox", ports = ["http", "admin"] }
"#;
    let file = parse(text, Format::Toml).expect("parses");
    let TaskDriver::Docker(docker) = &file.job.task_groups[0].tasks[0].driver else { panic!("docker") };
    assert_eq!(
        docker.ports,
        vec![
            PortMapping { name: "http".into(), container_port: 80, host_port: Some(8080) },
            PortMapping { name: "admin".into(), container_port: 9000, host_port: None },
        ]
    );
    assert_eq!(file.notes, ["group[0].network.mode is ignored: set the task's config.network_mode"]);
    let missing = text.replace("\"http\", \"admin\"", "\"https\"");
    let err = parse(&missing, Format::Toml).err().expect("missing port").to_string();
    assert!(err.contains("group[0].task[0].config.ports[0]: no network port \"https\""), "{err}");
}

#[test]
fn problems_are_all_reported_with_the_files_paths() {
    let text = r#"
name = "bad name"
type = "cron"
[[group]]
name = "g"
[[group.task]]
name = "t"
driver = "exec"
kill_timeout = "soon"
config = { args = ["x"] }
resources = { memory = 0 }
"#;
    let err = parse(text, Format::Toml).err().expect("invalid").to_string();
    assert!(err.contains("type: must be service, batch or system, got \"cron\""), "{err}");
    assert!(err.contains("group[0].task[0].kill_timeout: expected a duration"), "{err}");
    assert!(err.contains("group[0].task[0].config.command: an exec task needs a command"), "{err}");
    let text =
        text.replace("type = \"cron\"\n", "").replace("\"soon\"", "\"5s\"").replace("args", "command = \"x\", args");
    let err = parse(&text, Format::Toml).err().expect("invalid").to_string();
    assert!(err.contains("name: may contain only"), "{err}");
    assert!(err.contains("group[0].task[0].resources.memory_mb: must be > 0"), "{err}");
}

#[test]
fn durations_read_like_nomads() {
    assert_eq!(parse_duration_secs("30s"), Some(30));
    assert_eq!(parse_duration_secs("5m"), Some(300));
    assert_eq!(parse_duration_secs("1h30m"), Some(5400));
    assert_eq!(parse_duration_secs("250ms"), Some(1));
    assert_eq!(parse_duration_secs("12"), Some(12));
    for bad in ["", "m", "5x", "-1s", "1.5s"] {
        assert_eq!(parse_duration_secs(bad), None, "{bad:?}");
    }
}
