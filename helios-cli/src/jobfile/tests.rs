use std::path::Path;

use helios_core::{DelayFunction, JobType, PortMapping, RestartMode, TaskDriver};

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
    assert!(seen >= 4, "examples found: {seen}");
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
    // A port no docker task maps would never reach a task: refused, not dropped.
    let unmapped = text.replace("\"http\", \"admin\"", "\"http\"");
    let err = parse(&unmapped, Format::Toml).err().expect("unmapped port").to_string();
    assert!(
        err.contains("group[0].network.port[admin]: no docker task maps it in config.ports, and the group has no exec"),
        "{err}"
    );
    // Mapped inline instead, the group's block would be unused: said so.
    let inline = text.replace("\"http\", \"admin\"", "\"http\", \"admin=9000\"");
    let err = parse(&inline, Format::Toml).err().expect("inline port").to_string();
    assert!(err.contains("group[0].network.port[admin]: config.ports maps it inline (\"admin=9000\")"), "{err}");
}

#[test]
fn an_exec_group_gets_its_network_ports_as_nomad_gives_them() {
    let text = r#"
job "api" {
  group "api" {
    network {
      port "http" {}
      port "admin" { static = 9100 }
    }
    task "server" {
      driver = "exec"
      config {
        command = "/usr/bin/api"
        args    = ["--listen", "${NOMAD_ADDR_http}", "--admin", "${NOMAD_PORT_admin}"]
      }
    }
  }
}
"#;
    let job = parse(text, Format::Hcl).expect("parses").job;
    let group = &job.task_groups[0];
    let label = |l: &str, s: Option<u16>| helios_core::GroupPort { label: l.into(), static_port: s };
    assert_eq!(group.ports, [label("admin", Some(9100)), label("http", None)]);
    let written = serde_json::to_string_pretty(&export::to_file_json(&job)).expect("json");
    assert!(job.same_spec(&parse(&written, Format::Json).expect("exported").job), "{written}");
    // `to` is a container's port: an exec task has none.
    let mapped = text.replace("port \"http\" {}", "port \"http\" { to = 8080 }");
    let err = parse(&mapped, Format::Hcl).err().expect("to on an exec port").to_string();
    assert!(err.contains("group[0].network.port[http].to: is a container's port"), "{err}");
}

#[test]
fn a_port_variable_for_a_port_the_task_is_not_given_is_refused() {
    let text = r#"
name = "api"
[[group]]
name = "api"
[group.network.port.http]
to = 80
[[group.task]]
name = "web"
driver = "docker"
config = { image = "helios-busybox", ports = ["http"], args = ["--listen=${NOMAD_PORT_http}"] }
env = { ADDR = "${NOMAD_ADDR_http}" }
[[group.task]]
name = "sidecar"
driver = "exec"
config = { command = "/bin/probe", args = ["${NOMAD_ADDR_http}"] }
env = { TARGET = "${NOMAD_HOST_PORT_http}", LABEL = "${NOMAD_ALLOC_ID}", SPACED = "${ NOMAD_PORT_http }" }
"#;
    let err = parse(text, Format::Toml).err().expect("the exec task gets no port").to_string();
    assert!(
        // http is the docker task's (mapped in its config.ports), not the group's own.
        err.contains("group[0].task[1].config.args[0]: ${NOMAD_ADDR_http} names port \"http\", which is not one of the group's own"),
        "{err}"
    );
    assert!(err.contains("group[0].task[1].env.TARGET: ${NOMAD_HOST_PORT_http}"), "{err}");
    assert!(err.contains("group[0].task[1].env.SPACED: ${NOMAD_PORT_http}"), "spaced as the agent reads it: {err}");
    assert!(!err.contains("task[0]") && !err.contains("LABEL"), "{err}");
    // The docker task alone is fine; naming a port it does not map is not.
    let docker_only = text.split("[[group.task]]\nname = \"sidecar\"").next().unwrap().to_string();
    parse(&docker_only, Format::Toml).expect("the docker task is given http");
    let other = docker_only.replace("${NOMAD_ADDR_http}", "${NOMAD_ADDR_admin}");
    let err = parse(&other, Format::Toml).err().expect("admin is not mapped").to_string();
    assert!(err.contains("group[0].task[0].env.ADDR: ${NOMAD_ADDR_admin} names port \"admin\", which this task's config.ports does not map"), "{err}");
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
fn a_nomad_jobspec_in_hcl_runs_unchanged() {
    let file = load(&examples().join("web.nomad.hcl")).expect("web.nomad.hcl");
    assert_eq!(file.notes, ["datacenters is ignored: a Helios cluster is one datacenter"]);
    let job = file.job;
    assert_eq!((job.name.as_str(), job.job_type, job.priority), ("web-nomad", JobType::Service, 60));
    assert_eq!(job.meta["team"], "frontend");
    assert_eq!(job.constraints[0].attribute, "attr.kernel.name");
    assert_eq!(job.constraints[0].value, "linux");
    let group = &job.task_groups[0];
    assert_eq!((group.name.as_str(), group.count, group.restart.delay_secs), ("web", 2, 10));
    let task = &group.tasks[0];
    assert_eq!((task.name.as_str(), task.kill_timeout_secs), ("httpd", 5));
    assert_eq!(task.env["GREETING"], "hello");
    assert_eq!((task.resources.cpu_mhz, task.resources.memory_mb), (200, 64));
    let TaskDriver::Docker(docker) = &task.driver else { panic!("docker expected") };
    assert_eq!(docker.ports, vec![PortMapping { name: "http".into(), container_port: 8080, host_port: None }]);
    assert_eq!(docker.args, ["-f", "-p", "8080", "-h", "/"]);
}

#[test]
fn hcl_problems_are_all_reported_by_line_and_name() {
    let text = r#"job "x" {
  region = "eu"
  group "g" {
    count = "two"
    task "t" {
      driver = "docker"
      vault { policies = ["a"] }
      config {
        image = var.image
      }
      env = { PORT = "${NOMAD_PORT_http}" }
      resources = 3
    }
  }
}
"#;
    let err = parse(text, Format::Hcl).err().expect("refused").to_string();
    let problems: Vec<&str> = err.split("; ").collect();
    assert_eq!(
        problems,
        [
            r#"line 2: attribute `region` in job "x" is not supported by Helios"#,
            "line 4: `count` must be a number",
            r#"line 7: block `vault` in task "t" is not supported by Helios"#,
            "line 9: `image` must be a literal value (variables and functions are not supported)",
            "line 12: `resources` is a block without labels: resources { ... }",
        ]
    );
    let dup = "job \"x\" {\n  group \"g\" {\n    network {\n      port \"http\" { static = 70000 }\n      port \"http\" { to = 80 }\n    }\n    task \"t\" {\n      driver = \"exec\"\n      env { A = \"1\" }\n      env = { B = \"2\" }\n    }\n  }\n}\n";
    let problems: Vec<String> =
        parse(dup, Format::Hcl).err().expect("refused").to_string().split("; ").map(str::to_string).collect();
    assert_eq!(
        problems,
        [
            "line 4: `static` must be a port, 1 to 65535",
            "line 5: port \"http\" is given twice in `network`",
            "line 10: `env` is given twice in task \"t\"",
        ]
    );
    let err = parse("job \"x\" {\n  type = = 1\n}\n", Format::Hcl).err().expect("syntax").to_string();
    assert!(err.starts_with("line 2: invalid expression"), "{err}");
    let err = parse("group \"g\" {}\n", Format::Hcl).err().expect("no job").to_string();
    assert!(err.contains("line 1: block `group` in the file is not supported by Helios"), "{err}");
    let err = parse("job \"a\" {}\njob \"b\" {}\n", Format::Hcl).err().expect("two jobs").to_string();
    assert_eq!(err, "line 2: a job file declares one job");
}

#[test]
fn hcl_templates_are_kept_for_the_agent_to_interpolate_and_maps_may_be_blocks_or_attributes() {
    let text = r#"job "t" {
  type = "batch"
  meta = { owner = "ops", tier = 2, where = "${node.unique.name}" }
  group "g" {
    task "t" {
      driver = "exec"
      config {
        command = "echo"
        args = ["${NOMAD_ALLOC_ID}", "${env["HOME"]}"]
      }
      env = { URL = "http://${attr.unique.network.ip-address}:8080/" }
    }
  }
}
"#;
    let file = parse(text, Format::Hcl).expect("parses");
    // The agent interpolates runtime values in env and args; not in meta, nor other expressions.
    assert_eq!(file.notes.len(), 2, "{:?}", file.notes);
    assert!(
        file.notes[0].starts_with("line 3: `meta.where` keeps \"${node.unique.name}\" as written"),
        "{:?}",
        file.notes
    );
    assert!(file.notes[1].starts_with("line 9: `args` keeps \"${env[\\\"HOME\\\"]}\" as written"), "{:?}", file.notes);
    let job = file.job;
    let TaskDriver::Exec(exec) = &job.task_groups[0].tasks[0].driver else { panic!("exec expected") };
    assert_eq!(exec.args[0], "${NOMAD_ALLOC_ID}");
    assert_eq!(job.meta["tier"], "2");
    assert_eq!(job.task_groups[0].tasks[0].env["URL"], "http://${attr.unique.network.ip-address}:8080/");
}

#[test]
fn docker_privileges_capabilities_and_devices_read_as_nomad_writes_them_and_export_back() {
    let text = r#"
job "net" {
  group "g" {
    task "vpn" {
      driver = "docker"
      config {
        image      = "helios-busybox"
        privileged = true
        cap_add    = ["NET_ADMIN", "sys_time"]
        cap_drop   = ["ALL"]
        devices = [
          { host_path = "/dev/net/tun" },
          {
            host_path          = "/dev/sda1"
            container_path     = "/dev/xvdc"
            cgroup_permissions = "r"
          }
        ]
      }
    }
  }
}
"#;
    let job = parse(text, Format::Hcl).expect("parses").job;
    let TaskDriver::Docker(docker) = &job.task_groups[0].tasks[0].driver else { panic!("docker") };
    assert!(docker.privileged);
    assert_eq!(
        (docker.cap_add.as_slice(), docker.cap_drop.as_slice()),
        (&["NET_ADMIN".to_string(), "sys_time".into()][..], &["ALL".to_string()][..])
    );
    assert_eq!(docker.devices[0], helios_core::DockerDevice::new("/dev/net/tun"));
    assert_eq!(docker.devices[1].container_path.as_deref(), Some("/dev/xvdc"));
    assert_eq!(docker.devices[1].cgroup_permissions.as_deref(), Some("r"));
    let written = serde_json::to_string_pretty(&export::to_file_json(&job)).expect("json");
    assert!(job.same_spec(&parse(&written, Format::Json).expect("exported").job), "{written}");

    // A key Nomad's devices do not have is refused by line; so are these on an exec task.
    let typo = text.replace("cgroup_permissions = \"r\"", "permissions = \"r\"");
    let err = parse(&typo, Format::Hcl).err().expect("unknown key").to_string();
    assert!(err.contains("line 13: `devices[1]` has no \"permissions\""), "{err}");
    let exec = text
        .replace("driver = \"docker\"", "driver = \"exec\"")
        .replace("image      = \"helios-busybox\"", "command = \"/bin/true\"");
    let err = parse(&exec, Format::Hcl).err().expect("exec").to_string();
    for field in ["privileged", "cap_add", "cap_drop", "devices"] {
        assert!(err.contains(&format!("config.{field}: is for the docker driver")), "{field}: {err}");
    }
}

#[test]
fn reschedule_blocks_merge_group_over_job_over_the_types_defaults_and_export_back() {
    let text = r#"
job "api" {
  reschedule {
    delay          = "10s"
    delay_function = "fibonacci"
    max_delay      = "2m"
  }
  group "web" {
    reschedule {
      attempts = 3
      interval = "15m"
    }
    task "t" {
      driver = "exec"
      config { command = "/bin/true" }
    }
  }
  group "worker" {
    task "t" {
      driver = "exec"
      config { command = "/bin/true" }
    }
  }
}
"#;
    let job = parse(text, Format::Hcl).expect("parses").job;
    let web = &job.task_groups[0].reschedule;
    assert_eq!((web.attempts, web.interval_secs, web.unlimited), (3, 900, false), "attempts given: limited");
    assert_eq!((web.delay_secs, web.delay_function, web.max_delay_secs), (10, DelayFunction::Fibonacci, 120));
    let worker = &job.task_groups[1].reschedule;
    assert!(worker.unlimited, "a service's default, with the job's delays");
    assert_eq!((worker.delay_secs, worker.delay_function), (10, DelayFunction::Fibonacci));
    let written = serde_json::to_string_pretty(&export::to_file_json(&job)).expect("json");
    assert!(job.same_spec(&parse(&written, Format::Json).expect("exported").job), "{written}");

    // Nomad's rules, by field; and none at all for a system job.
    let bad = text.replace(r#""10s""#, r#""1s""#).replace(r#""fibonacci""#, r#""linear""#);
    let err = parse(&bad, Format::Hcl).err().expect("refused").to_string();
    assert!(err.contains("reschedule.delay_function: must be constant, exponential or fibonacci"), "{err}");
    let bad = text.replace(r#""10s""#, r#""1s""#);
    let err = parse(&bad, Format::Hcl).err().expect("refused").to_string();
    assert!(err.contains("group[0].reschedule.delay: must be at least 5s, got 1s"), "{err}");
    let system = text.replace("job \"api\" {", "job \"api\" {\n  type = \"system\"");
    let err = parse(&system, Format::Hcl).err().expect("refused").to_string();
    assert!(err.contains("a system job is not rescheduled"), "{err}");
    let typo = text.replace("attempts = 3", "attempt = 3");
    let err = parse(&typo, Format::Hcl).err().expect("refused").to_string();
    assert!(err.contains("line 10: attribute `attempt` in `reschedule` is not supported"), "{err}");
}

#[test]
fn affinities_spreads_and_distinct_property_read_as_nomad_writes_them_and_export_back() {
    let text = r#"
job "api" {
  affinity {
    attribute = "${meta.rack}"
    value     = "r1"
    weight    = -30
  }
  spread {
    attribute = "${meta.zone}"
  }
  group "web" {
    count = 4
    constraint {
      operator  = "distinct_property"
      attribute = "${meta.rack}"
      value     = "2"
    }
    affinity {
      attribute = "${attr.kernel.version}"
      operator  = "version"
      value     = ">= 5.0"
    }
    spread {
      attribute = "${meta.rack}"
      weight    = 80
      target "r1" {
        percent = 60
      }
      target "r2" {
        percent = 40
      }
    }
    task "t" {
      driver = "exec"
      config { command = "/bin/true" }
    }
  }
}
"#;
    let job = parse(text, Format::Hcl).expect("parses").job;
    assert_eq!((job.affinities[0].attribute.as_str(), job.affinities[0].weight), ("meta.rack", -30));
    assert_eq!(job.spreads[0].weight, 50, "Nomad's default weight");
    let group = &job.task_groups[0];
    assert_eq!(group.constraints[0].operator, helios_core::ConstraintOperator::DistinctProperty);
    assert_eq!(group.affinities[0].operator, helios_core::ConstraintOperator::Version);
    assert_eq!(group.affinities[0].weight, 50);
    let targets: Vec<(&str, u8)> = group.spreads[0].targets.iter().map(|t| (t.value.as_str(), t.percent)).collect();
    assert_eq!(targets, [("r1", 60), ("r2", 40)]);
    let written = serde_json::to_string_pretty(&export::to_file_json(&job)).expect("json");
    assert!(job.same_spec(&parse(&written, Format::Json).expect("exported").job), "{written}");

    // Nomad's rules, by field.
    let bad = text.replace("percent = 40", "percent = 50").replace("weight    = -30", "weight    = 0");
    let err = parse(&bad, Format::Hcl).err().expect("refused").to_string();
    assert!(err.contains("affinities[0].weight: must be -100 to 100 and not 0, got 0"), "{err}");
    assert!(err.contains("group[0].spreads[0].targets: percentages add up to 110, more than 100"), "{err}");
    let bad = text.replace("value     = \"2\"", "value     = \"two\"");
    let err = parse(&bad, Format::Hcl).err().expect("refused").to_string();
    assert!(err.contains("constraints[0].value: is how many allocations a value may have"), "{err}");
}

#[test]
fn migrate_blocks_merge_over_nomads_defaults_and_only_services_take_them() {
    let text = r#"
job "api" {
  migrate {
    max_parallel = 2
  }
  group "web" {
    migrate {
      health_check     = "task_states"
      min_healthy_time = "5s"
    }
    task "t" {
      driver = "exec"
      config { command = "/bin/true" }
    }
  }
}
"#;
    let job = parse(text, Format::Hcl).expect("parses").job;
    let m = &job.task_groups[0].migrate;
    assert_eq!((m.max_parallel, m.health_check, m.min_healthy_time_secs), (2, helios_core::HealthCheck::TaskStates, 5));
    assert_eq!(m.healthy_deadline_secs, 300, "Nomad's default");
    let written = serde_json::to_string_pretty(&export::to_file_json(&job)).expect("json");
    assert!(job.same_spec(&parse(&written, Format::Json).expect("exported").job), "{written}");

    let batch = text.replace("job \"api\" {", "job \"api\" {\n  type = \"batch\"");
    let err = parse(&batch, Format::Hcl).err().expect("refused").to_string();
    assert!(err.contains("migrate: applies to service jobs"), "{err}");
    let slow = text.replace("\"5s\"", "\"10m\"");
    let err = parse(&slow, Format::Hcl).err().expect("refused").to_string();
    assert!(err.contains("group[0].migrate.min_healthy_time: must be less than healthy_deadline (300s)"), "{err}");
}

#[test]
fn update_blocks_read_deployments_fields_and_refuse_what_does_not_fit_by_name() {
    let text = r#"
job "api" {
  update {
    max_parallel     = 2
    min_healthy_time = "5s"
    auto_revert      = false
    canary           = 0
  }
  group "web" {
    count = 4
    task "t" {
      driver = "exec"
      config { command = "/bin/true" }
    }
  }
}
"#;
    let job = parse(text, Format::Hcl).expect("parses").job;
    let u = &job.task_groups[0].update;
    assert_eq!((u.max_parallel, u.min_healthy_time_secs, u.healthy_deadline_secs), (2, 5, 300));
    assert_eq!((u.progress_deadline_secs, u.auto_revert, u.canary), (600, false, 0), "Nomad's defaults");
    let written = serde_json::to_string_pretty(&export::to_file_json(&job)).expect("json");
    assert!(job.same_spec(&parse(&written, Format::Json).expect("exported").job), "{written}");

    let deployments = text.replace("auto_revert      = false", "auto_revert      = true").replace(
        "canary           = 0",
        "canary           = 1\n    auto_promote = true\n    progress_deadline = \"15m\"\n    stagger = \"30s\"",
    );
    let file = parse(&deployments, Format::Hcl).expect("parses");
    let u = &file.job.task_groups[0].update;
    assert_eq!((u.canary, u.auto_revert, u.auto_promote, u.progress_deadline_secs), (1, true, true, 900));
    assert!(
        file.notes.iter().any(|n| n.contains("update.stagger is ignored, as Nomad ignores it")),
        "{:?}",
        file.notes
    );
    let written = serde_json::to_string_pretty(&export::to_file_json(&file.job)).expect("json");
    assert!(file.job.same_spec(&parse(&written, Format::Json).expect("exported").job), "{written}");
    let manual = text.replace("canary           = 0", "health_check = \"manual\"");
    let manual = parse(&manual, Format::Hcl).expect("parses").job;
    assert_eq!(manual.task_groups[0].update.health_check, helios_core::HealthCheck::Manual);

    let refused = [
        ("canary           = 0", "auto_promote = true", "update.auto_promote: needs canary greater than 0"),
        (
            "canary           = 0",
            "progress_deadline = \"1m\"",
            "update.progress_deadline: must be 0 or more than healthy_deadline",
        ),
        (
            "canary           = 0",
            "health_check = \"sometimes\"",
            "update.health_check: must be checks, task_states or manual",
        ),
    ];
    for (from, to, expected) in refused {
        let err = parse(&text.replace(from, to), Format::Hcl).err().expect("refused").to_string();
        assert!(err.contains(expected), "{expected}: {err}");
    }
    let no_waves =
        text.replace("max_parallel     = 2", "max_parallel = 0").replace("canary           = 0", "canary = 1");
    let err = parse(&no_waves, Format::Hcl).err().expect("refused").to_string();
    assert!(err.contains("update.max_parallel: must be at least 1 for canary"), "{err}");
    let batch = text.replace("job \"api\" {", "job \"api\" {\n  type = \"batch\"");
    let err = parse(&batch, Format::Hcl).err().expect("refused").to_string();
    assert!(err.contains("update: rolling updates apply to service and system jobs"), "{err}");
    // A system job rolls by max_parallel and stagger (Nomad's), and nothing else.
    let system = text
        .replace("job \"api\" {", "job \"api\" {\n  type = \"system\"")
        .replace("    count = 4\n", "")
        .replace("min_healthy_time = \"5s\"", "stagger = \"10s\"");
    let file = parse(&system, Format::Hcl).expect("parses");
    let u = &file.job.task_groups[0].update;
    assert_eq!((u.max_parallel, u.stagger_secs), (2, 10));
    // Nomad ignores the health fields for a system job; so does Helios, and says so.
    assert!(
        file.notes.iter().any(|n| n.contains("update.auto_revert is ignored, as Nomad ignores it for system jobs")),
        "{:?}",
        file.notes
    );
    let written = serde_json::to_string_pretty(&export::to_file_json(&file.job)).expect("json");
    let again = parse(&written, Format::Json).expect("exported");
    assert!(file.job.same_spec(&again.job) && again.notes.is_empty(), "{written} {:?}", again.notes);
    let err = parse(&system.replace("canary           = 0", "canary = 1"), Format::Hcl).err().expect("refused");
    assert!(err.to_string().contains("update.canary: a system job rolls by max_parallel and stagger only"), "{err}");
    // A service job's stagger is not kept (Nomad ignores it there).
    let service = parse(&text.replace("min_healthy_time = \"5s\"", "stagger = \"10s\""), Format::Hcl).expect("parses");
    assert_eq!(service.job.task_groups[0].update.stagger_secs, 30);
}

#[test]
fn an_inspected_job_reads_back_as_the_same_job() {
    for entry in std::fs::read_dir(examples()).expect("docs/examples") {
        let path = entry.expect("entry").path();
        if Format::of(&path).is_err() {
            continue;
        }
        let job = load(&path).expect("example").job;
        let written = serde_json::to_string_pretty(&export::to_file_json(&job)).expect("json");
        let again =
            parse(&written, Format::Json).unwrap_or_else(|e| panic!("{}: {e:#}\n{written}", path.display())).job;
        assert!(job.same_spec(&again), "{}:\n{job:#?}\n{again:#?}", path.display());
        assert_eq!(job.name, again.name);
    }
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

/// Hostile input: whatever the text, parsing gives a valid job or an error; it never panics.
mod hostile {
    use proptest::prelude::*;

    use super::super::{parse, Format};

    const EXAMPLES: [(&str, Format); 4] = [
        (include_str!("../../../docs/examples/web.toml"), Format::Toml),
        (include_str!("../../../docs/examples/report.json"), Format::Json),
        (include_str!("../../../docs/examples/web.nomad.hcl"), Format::Hcl),
        (include_str!("../../../docs/examples/cleanup.nomad.hcl"), Format::Hcl),
    ];

    fn checked(text: &str, format: Format) -> Result<(), TestCaseError> {
        if let Ok(file) = parse(text, format) {
            prop_assert!(file.job.validate().is_ok(), "an accepted job must be valid: {text:?}");
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn any_text_in_any_format_is_a_valid_job_or_an_error(text in "\\PC{0,300}") {
            for format in [Format::Toml, Format::Json, Format::Hcl] {
                checked(&text, format)?;
            }
        }

        #[test]
        fn an_example_with_bytes_spliced_in_is_a_valid_job_or_an_error(
            example in 0..EXAMPLES.len(),
            at in 0usize..4096,
            cut in 0usize..16,
            splice in "[\\PC\n\"{}=\\[\\]#$]{0,12}",
        ) {
            let (text, format) = EXAMPLES[example];
            let chars: Vec<char> = text.chars().collect();
            let at = at % chars.len();
            let end = (at + cut).min(chars.len());
            let mutated: String = chars[..at].iter().chain(splice.chars().collect::<Vec<_>>().iter()).chain(chars[end..].iter()).collect();
            checked(&mutated, format)?;
        }
    }

    /// Nesting far deeper than any job needs, where each format allows nesting: an error from
    /// the parser's depth limit (or the schema), not a stack overflow.
    #[test]
    fn deeply_nested_input_is_an_error_not_a_crash() {
        let n = 100_000;
        let (open, close) = ("[".repeat(n), "]".repeat(n));
        let cases = [
            (format!("name = {open}{close}\n"), Format::Toml),
            (format!("[meta]\nx = {open}{close}\n"), Format::Toml),
            (format!("{{\"name\": {open}{close}}}"), Format::Json),
            (format!("{{\"meta\": {}1{}}}", "{\"a\": ".repeat(n), "}".repeat(n)), Format::Json),
            (format!("job \"x\" {{\n  meta = {open}{close}\n}}\n"), Format::Hcl),
            (format!("job \"x\" {{\n  a = {}1{}\n}}\n", "(".repeat(n), ")".repeat(n)), Format::Hcl),
        ];
        for (text, format) in cases {
            assert!(parse(&text, format).is_err(), "{format:?} accepted {} bytes of nesting", text.len());
        }
    }
}

const SERVICES: &str = r#"
job "shop" {
  group "web" {
    count = 2
    network {
      port "http" {}
    }
    service {
      name     = "${NOMAD_JOB_NAME}-web"
      port     = "http"
      provider = "nomad"
      tags     = ["v1", "${NOMAD_GROUP_NAME}"]
      meta { owner = "team" }
      check {
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
        header { X-Probe = ["yes"] }
        success_before_passing = 2
        check_restart {
          limit = 3
          grace = "30s"
        }
      }
      check {
        name     = "alive"
        type     = "script"
        task     = "server"
        command  = "/bin/true"
        interval = "5s"
        timeout  = "1s"
      }
    }
    task "server" {
      driver = "exec"
      config { command = "/bin/httpd" }
      service {
        provider = "helios"
        port     = "http"
        check {
          type           = "tcp"
          interval       = "1s"
          timeout        = "2s"
          initial_status = "passing"
        }
      }
    }
  }
}
"#;

#[test]
fn service_and_check_blocks_become_the_groups_services() {
    use helios_core::service::{AddressMode, CheckKind, CheckRestart, CheckStatus};
    let file = parse(SERVICES, Format::Hcl).unwrap_or_else(|e| panic!("{e:#}"));
    let group = &file.job.task_groups[0];
    assert_eq!(group.services.len(), 2);
    let web = &group.services[0];
    assert_eq!((web.name.as_str(), web.task.as_deref(), web.port.as_deref()), ("shop-web", None, Some("http")));
    assert_eq!(web.tags, ["v1", "web"]);
    assert_eq!(web.meta["owner"], "team");
    assert_eq!(web.address_mode, AddressMode::Auto);
    let http = &web.checks[0];
    assert_eq!(http.name, "service: \"shop-web\" check");
    let CheckKind::Http { path, method, headers } = &http.kind else { panic!("http") };
    assert_eq!((path.as_str(), method.as_str()), ("/health", "GET"));
    assert_eq!(headers["X-Probe"], ["yes"]);
    assert_eq!((http.interval_ms, http.timeout_ms, http.success_before_passing), (10_000, 2_000, 2));
    assert_eq!(http.initial_status, CheckStatus::Critical, "Nomad's default");
    assert_eq!(http.check_restart, Some(CheckRestart { limit: 3, grace_ms: 30_000, ignore_warnings: false }));
    let CheckKind::Script { task, command, .. } = &web.checks[1].kind else { panic!("script") };
    assert_eq!((task.as_deref(), command.as_str()), (Some("server"), "/bin/true"));
    // A task's service: named after the job, group and task, as Nomad names it.
    let own = &group.services[1];
    assert_eq!((own.name.as_str(), own.task.as_deref()), ("shop-web-server", Some("server")));
    assert_eq!((own.checks[0].timeout_ms, own.checks[0].initial_status), (2_000, CheckStatus::Passing));
    assert!(file.notes.is_empty(), "{:?}", file.notes);
    // `job inspect` writes them back, and they read the same.
    let written = serde_json::to_string_pretty(&export::to_file_json(&file.job)).expect("json");
    assert!(file.job.same_spec(&parse(&written, Format::Json).expect("exported").job), "{written}");
}

#[test]
fn what_helios_cannot_do_for_a_service_is_refused_by_name() {
    let refused = |from: &str, to: &str| {
        assert!(SERVICES.contains(from), "{from}");
        parse(&SERVICES.replace(from, to), Format::Hcl).err().expect("refused").to_string()
    };
    let err = refused("provider = \"nomad\"", "provider = \"consul\"");
    assert!(err.contains("group[0].service[0].provider: \"consul\" is not available"), "{err}");
    let err = refused("provider = \"nomad\"", "address_mode = \"driver\"");
    assert!(err.contains("group[0].service[0].address_mode: must be auto or host"), "{err}");
    let err = refused("type     = \"http\"", "type     = \"ttl\"");
    assert!(err.contains("check[0].type: must be http, tcp, grpc or script, got \"ttl\""), "{err}");
    let err = refused("path     = \"/health\"", "path = \"/health\"\n protocol = \"https\"");
    assert!(err.contains("check[0].protocol: only \"http\""), "{err}");
    let err = refused("interval = \"10s\"", "");
    assert!(err.contains("check[0].interval: a check needs an interval"), "{err}");
    let err = refused("interval       = \"1s\"", "interval = \"100ms\"");
    assert!(err.contains("group[0].service[1].check[0].interval: must be between 1s and 24h"), "{err}");
    let err = refused("port     = \"http\"\n      provider", "port     = \"admin\"\n      provider");
    assert!(err.contains("group[0].service[0].port: \"admin\" is neither a port number nor a port label"), "{err}");
    let err = refused("task     = \"server\"", "task     = \"nope\"");
    assert!(err.contains("group[0].service[0].check[1].task: the group has no task \"nope\""), "{err}");
    // A field Consul has and Helios does not is refused by line, as every unknown one is.
    let err = refused("tags     = [", "enable_tag_override = true\n      tags = [");
    assert!(err.contains("attribute `enable_tag_override` in `service` is not supported"), "{err}");
    // Without a provider: Helios's own catalog, with a note saying so.
    let file = parse(&SERVICES.replace("provider = \"helios\"", ""), Format::Hcl).expect("parses");
    assert!(
        file.notes.iter().any(|n| n.contains("no provider: registered in Helios's own catalog")),
        "{:?}",
        file.notes
    );
}

#[test]
fn a_checks_check_restart_merges_over_its_services_and_names_fill_in() {
    let text = SERVICES
        .replace("      tags     = [", "      check_restart {\n        limit = 2\n      }\n      tags = [")
        .replace("          limit = 3\n          grace = \"30s\"", "          ignore_warnings = true")
        .replace("name     = \"alive\"", "name     = \"${NOMAD_GROUP_NAME}-alive\"");
    let job = parse(&text, Format::Hcl).unwrap_or_else(|e| panic!("{e:#}\n{text}")).job;
    let web = &job.task_groups[0].services[0];
    let merged = web.checks[0].check_restart.clone().expect("merged");
    assert_eq!((merged.limit, merged.ignore_warnings), (2, true), "limit from the service, the rest from the check");
    assert_eq!(web.checks[1].check_restart.as_ref().map(|r| r.limit), Some(2), "the service's alone");
    assert_eq!(web.checks[1].name, "web-alive");
    // A TLS field is refused under its own name.
    let tls = SERVICES.replace("path     = \"/health\"", "path = \"/health\"\n tls_skip_verify = true");
    let err = parse(&tls, Format::Hcl).err().expect("refused").to_string();
    assert!(err.contains("check[0].tls_skip_verify: the agent's checks do not speak TLS"), "{err}");
    // A group service's task only says where its script checks run: without any, refused.
    let no_script = SERVICES
        .replace("type     = \"script\"\n        task     = \"server\"", "type     = \"tcp\"")
        .replace("        command  = \"/bin/true\"\n", "")
        .replace("      provider = \"nomad\"", "      provider = \"nomad\"\n      task = \"server\"");
    let err = parse(&no_script, Format::Hcl).err().expect("refused").to_string();
    assert!(err.contains("group[0].service[0].task: names the task a group service's script checks run in"), "{err}");
}

/// Nomad converts a quoted number where a number is expected (`cpu = "500"`, `static = "9015"`),
/// as many of its own job files write them; anything else quoted is still refused by line.
#[test]
fn quoted_numbers_are_numbers_as_in_nomad() {
    let text = r#"job "q" {
  priority = "70"
  group "g" {
    count = "3"
    network {
      port "http" { static = "9015" }
    }
    task "t" {
      driver = "exec"
      config { command = "sleep" }
      resources {
        cpu    = "500"
        memory = "256"
      }
    }
  }
}
"#;
    let job = parse(text, Format::Hcl).expect("quoted numbers convert").job;
    let group = &job.task_groups[0];
    assert_eq!((job.priority, group.count), (70, 3));
    assert_eq!(group.ports[0].static_port, Some(9015));
    assert_eq!((group.tasks[0].resources.cpu_mhz, group.tasks[0].resources.memory_mb), (500, 256));

    let wrong = text.replace(r#"count = "3""#, r#"count = "3.5""#).replace(r#"static = "9015""#, r#"static = "99999""#);
    let err = parse(&wrong, Format::Hcl).err().expect("refused").to_string();
    let problems: Vec<&str> = err.split("; ").collect();
    assert_eq!(
        problems,
        ["line 4: `count` must be a whole number >= 0", "line 6: `static` must be a port, 1 to 65535"]
    );
}

/// Nomad's `to = -1` and `to = 0` map a port to the host port itself, as leaving `to` out does:
/// an exec task's group port, or a docker task's static one. A docker task's dynamic one has no
/// container port Helios can know at submission, and is refused by line.
#[test]
fn a_port_mapped_to_minus_one_or_zero_is_the_host_port() {
    let text = r#"job "p" {
  group "exec" {
    network {
      port "admin" { to = -1 }
    }
    task "t" {
      driver = "exec"
      config { command = "sleep" }
    }
  }
  group "docker" {
    network {
      port "http" {
        static = 8080
        to     = 0
      }
    }
    task "web" {
      driver = "docker"
      config {
        image = "busybox"
        ports = ["http"]
      }
    }
  }
}
"#;
    let job = parse(text, Format::Hcl).expect("Nomad's host-port markers").job;
    assert_eq!(job.task_groups[0].ports[0].static_port, None, "a dynamic host port for the exec task");
    let TaskDriver::Docker(docker) = &job.task_groups[1].tasks[0].driver else { panic!("docker expected") };
    assert_eq!(docker.ports, vec![PortMapping { name: "http".into(), container_port: 8080, host_port: Some(8080) }]);

    let dynamic = text.replace("        static = 8080\n", "");
    let err = parse(&dynamic, Format::Hcl).err().expect("refused").to_string();
    assert!(err.contains(r#"network port "http" needs `to` (the container port) or `static`"#), "{err}");
    let wrong = text.replace("to = -1", "to = -2");
    let err = parse(&wrong, Format::Hcl).err().expect("refused").to_string();
    assert_eq!(err, "line 4: `to` must be a port, 1 to 65535 (or -1: the host port)");
}
