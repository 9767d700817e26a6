//! The `helios-cli` binary against a real (in-process) server, checking what a user sees.

use std::process::{Command, Output};

use helios_server::ServerConfig;
use tokio::net::TcpListener;

const CLI: &str = env!("CARGO_BIN_EXE_helios-cli");

struct Server {
    url: String,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), helios_server::StartError>>>,
}

impl Server {
    /// A single-server cluster, bootstrapped like `helios-server --dev`.
    async fn start() -> Server {
        let server = Server::spawn(1, true).await;
        // Ready once the cluster has a leader and answers a read.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !cli(&server.url, &["job", "list"]).await.status.success() {
            assert!(std::time::Instant::now() < deadline, "server did not become ready");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        server
    }

    /// Server `id`, bootstrapping a one-server cluster or (without `bootstrap`) waiting to join.
    async fn spawn(id: u64, bootstrap: bool) -> Server {
        Server::spawn_with(id, bootstrap, false).await
    }

    async fn spawn_with(id: u64, bootstrap: bool, acl_enabled: bool) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let dir = tempfile::tempdir().expect("temp dir");
        let peers = if bootstrap { vec![(id, addr.to_string())] } else { Vec::new() };
        let mut config = ServerConfig::new(id, addr, peers, bootstrap, dir.path().to_path_buf()).expect("config");
        config.acl_enabled = acl_enabled;
        if acl_enabled {
            // ACLs need servers that authenticate each other.
            config.cluster_key = Some(helios_server::raft::peer_auth::ClusterKey::generate().expect("randomness"));
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(helios_server::run_on(config, listener, async move {
            let _ = stopped.await;
        }));
        Server { url: format!("http://{addr}"), _dir: dir, stop: Some(stop), task: Some(task) }
    }

    fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().expect("running").send(());
        self.task.take().expect("running").await.expect("task").expect("clean exit");
    }
}

async fn cli(url: &str, args: &[&str]) -> Output {
    run(&[&["--server-addr", url], args].concat(), &[]).await
}

async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(CLI);
    cmd.args(args).env_remove("HELIOS_ADDR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || cmd.output().expect("run helios-cli")).await.expect("join")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    format!("http://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_commands_as_the_readme_shows_them() {
    let server = Server::start().await;
    let url = server.url.clone();

    // No client node: watching the job ends at once with the reason, and the job stays.
    let out = cli(&url, &["job", "run", "--name", "multi-node-test", "echo", "--", "It replicated!"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).starts_with("Job \"multi-node-test\" submitted: version 0, evaluation "), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with(
            "Error: placement failed: group multi-node-test: no client nodes are registered (the job stays"
        ),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let again = cli(&url, &["job", "run", "--name", "multi-node-test", "echo", "--", "It replicated!"]).await;
    assert_eq!(stdout(&again).trim(), "Job \"multi-node-test\" unchanged (version 0); nothing to do");

    let list = stdout(&cli(&url, &["job", "list"]).await);
    let lines: Vec<&str> = list.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].contains("STATUS"), "{list}");
    assert!(lines[1].starts_with("multi-node-test  batch  50") && lines[1].contains("pending  0/1"), "{list}");

    assert_eq!(stdout(&cli(&url, &["job", "status"]).await), list, "without a job, every job");
    let status = stdout(&cli(&url, &["job", "status", "multi-node-test"]).await);
    assert!(status.contains("Status      = pending"), "{status}");
    assert!(status.contains("Placement   = waiting for placement: no client nodes have registered"), "{status}");
    assert!(status.contains("echo 'It replicated!'"), "{status}");
    assert!(status.contains("No allocations placed"), "{status}");
    // The leader's scheduler may already have looked at it: pending, or blocked for want of nodes.
    assert!(status.contains("job-register  pending") || status.contains("job-register  blocked"), "{status}");

    // The same as JSON documents.
    let json = |args: &[&str]| {
        let url = url.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = cli(&url, &args).await;
            serde_json::from_str::<serde_json::Value>(&stdout(&out)).unwrap_or_else(|e| panic!("{args:?}: {e}"))
        }
    };
    let list = json(&["job", "list", "--json"]).await;
    assert_eq!(list[0]["name"], "multi-node-test");
    assert_eq!((list[0]["type"].as_str(), list[0]["desired"].as_u64()), (Some("batch"), Some(1)));
    let status = json(&["job", "status", "multi-node-test", "--json"]).await;
    assert_eq!(status["status"], "pending");
    assert_eq!(status["spec"]["group"][0]["task"][0]["config"]["args"][0], "It replicated!");
    assert_eq!(status["evaluations"][0]["trigger"], "job-register");
    assert_eq!(status["allocations"], serde_json::json!([]));
    assert_eq!(json(&["node", "list", "--json"]).await, serde_json::json!([]));
    assert_eq!(json(&["hosts", "--json"]).await, serde_json::json!([]));
    assert_eq!(json(&["status", "--json"]).await, serde_json::json!([]));
    let digest = stdout(&cli(&url, &["server", "digest"]).await);
    assert!(
        digest.starts_with("ID  ADDRESS") && digest.contains("every server that answered agrees at applied index ")
    );
    let digest = json(&["server", "digest", "--json"]).await;
    assert_eq!(
        (digest["agree"].as_bool(), digest["servers"][0]["digest"].as_str().map(str::len)),
        (Some(true), Some(64))
    );
    let members = json(&["server", "members", "--json"]).await;
    assert_eq!((members["leader_id"].as_u64(), members["members"][0]["role"].as_str()), (Some(1), Some("leader")));

    let stop = cli(&url, &["job", "stop", "multi-node-test"]).await;
    assert!(stop.status.success(), "{}", stderr(&stop));
    let status = stdout(&cli(&url, &["job", "status", "multi-node-test"]).await);
    assert!(status.contains("Status      = dead") && status.contains("Placement   = stopped"), "{status}");

    let members = stdout(&cli(&url, &["server", "members"]).await);
    assert!(members.lines().nth(1).is_some_and(|l| l.starts_with("1") && l.contains("leader  yes")), "{members}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line_with_documented_exit_codes() {
    let server = Server::start().await;
    let url = server.url.clone();

    let out = cli(&url, &["job", "status", "nope"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "Error: job \"nope\" not found\n");

    // Usage errors: one line, exit code 2, with the likely meaning of a typo.
    let out = cli(&url, &["job", "lsit"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "Error: unrecognized subcommand 'lsit' (tip: some similar subcommands exist: 'validate', 'list'); see --help\n"
    );
    let out = cli(&url, &["job", "run", "--name", "x", "--drvier", "exec", "echo"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("(tip: a similar argument exists: '--driver'"), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1);

    let out = cli(&url, &["job", "run", "--name", "bad name", "echo"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("Error: invalid --name \"bad name\": may contain only"), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1);

    let out = cli(&url, &["job", "run", "--name", "mem", "--memory-mb", "0", "echo"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("task_groups[0].tasks[0].resources.memory_mb: must be > 0"), "{}", stderr(&out));

    let out = cli(&url, &["job", "frobnicate"]).await;
    assert_eq!(out.status.code(), Some(2));

    let out = cli(&url, &["job", "run", "--name", "box", "--driver", "docker", "sh"]).await;
    assert_eq!((out.status.code(), stderr(&out).as_str()), (Some(1), "Error: --driver docker needs --image IMAGE\n"));
    let out = cli(&url, &["job", "run", "--name", "box", "--image", "busybox", "sh"]).await;
    assert_eq!((out.status.code(), stderr(&out).as_str()), (Some(1), "Error: --image and -p need --driver docker\n"));
    let out = cli(&url, &["job", "run", "--name", "box", "--driver", "raw_exec", "--cpu-hard-limit", "sh"]).await;
    assert_eq!(
        (out.status.code(), stderr(&out).as_str()),
        (Some(1), "Error: --image and -p need --driver docker; --cpu-hard-limit needs exec or docker\n")
    );
    let out = cli(&url, &["job", "run", "--name", "box", "--driver", "docker", "--image", "b", "-p", "http=x"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("expected NAME=PORT[:HOSTPORT]"), "{}", stderr(&out));
    // A docker job with a port, stored as given (no agent runs it here).
    let args = ["job", "run", "-d", "--name", "box", "--driver", "docker", "--image", "busybox:1.36", "-p", "http=80"];
    let out = cli(&url, &[&args[..], &["sh", "--", "-c", "httpd -f"]].concat()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let status = stdout(&cli(&url, &["job", "status", "box"]).await);
    assert!(status.contains("busybox:1.36"), "{status}");

    let dead = dead_url();
    let out = cli(&dead, &["job", "list"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!("Error: cannot reach a Helios server at {dead}")) && err.contains("--server-addr"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);

    // A system job that no node can run: watching it ends with that, not forever.
    let out = cli(&url, &["job", "run", "--name", "everywhere", "--type", "system", "true"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).starts_with("Error: no node can run it; see helios-cli job status everywhere"),
        "{}",
        stderr(&out)
    );

    // A server that accepts connections but never answers is passed over, not waited on.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hung_url = format!("http://{}", hung.local_addr().expect("addr"));
    let out = cli(&format!("{hung_url},{url}"), &["job", "list"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("NAME"), "{}", stdout(&out));
    let out = cli(&hung_url, &["job", "list"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("(no answer within 3s)"), "{}", stderr(&out));

    // Several addresses: the first that answers is used. HELIOS_ADDR works like the flag.
    let both = format!("{dead},{url}");
    let out = run(&["job", "run", "--detach", "--name", "failover", "echo"], &[("HELIOS_ADDR", &both)]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let list = stdout(&cli(&url, &["job", "list"]).await);
    assert!(list.contains("failover"), "{list}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_join_members_and_remove() {
    let first = Server::start().await;
    let second = Server::spawn(2, false).await;
    let url = first.url.clone();

    let member = format!("2={}", second.addr());
    let out = cli(&url, &["server", "join", &member]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with(&format!("Server 2 ({}) joined the cluster as a voter", second.addr())));

    // The new server answers too, and sees both members.
    let members = stdout(&cli(&second.url, &["server", "members"]).await);
    let (rows, format) = members.lines().skip(1).partition::<Vec<&str>, _>(|l| !l.starts_with("Cluster stored format"));
    assert_eq!(rows.len(), 2, "{members}");
    assert_eq!(format.len(), 1, "one line tells the cluster's stored format: {members}");
    assert!(rows[0].starts_with("1 ") && rows[0].contains("leader"), "{members}");
    assert!(rows[1].starts_with("2 ") && rows[1].contains("follower  yes"), "{members}");

    let out = cli(&url, &["server", "join", "2=not an address"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("addr: "), "{}", stderr(&out));

    // Nothing answers at that address: refused at once, before it becomes a member.
    let out = cli(&url, &["server", "join", &format!("3={}", dead_url().trim_start_matches("http://"))]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no Helios server answers at"), "{}", stderr(&out));

    let out = cli(&second.url, &["server", "remove", "2"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let members = stdout(&cli(&url, &["server", "members"]).await);
    assert_eq!(members.lines().filter(|l| l.starts_with("1 ") || l.starts_with("2 ")).count(), 1, "{members}");
    second.shutdown().await;
    first.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_files_are_validated_offline_and_submitted() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples");
    let report = format!("{examples}/report.json");
    let web = format!("{examples}/web.toml");

    // Offline: no server is asked.
    let out = cli(&dead_url(), &["job", "validate", &web]).await;
    assert_eq!(stdout(&out), "Job \"web\" is valid: a service job, 1 group(s), 2 allocation(s)\n");
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\n[[group]]\nname = \"g\"\ncuont = 1\n").expect("write");
    for command in ["validate", "run"] {
        let out = cli(&dead_url(), &["job", command, bad.to_str().expect("utf-8")]).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.starts_with(&format!("Error: {}: line 4: unknown field `cuont`", bad.display())), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    let server = Server::start().await;
    let out = cli(&server.url, &["job", "run", "--detach", &report]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("Job \"report\" submitted: version 0, evaluation "), "{}", stdout(&out));
    let again = cli(&server.url, &["job", "run", &report]).await;
    assert_eq!(stdout(&again), "Job \"report\" unchanged (version 0); nothing to do\n");
    let status = stdout(&cli(&server.url, &["job", "status", "report"]).await);
    assert!(status.contains("Type        = batch") && status.contains("Priority    = 60"), "{status}");
    assert!(status.contains("report  3      count-words  exec"), "{status}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_plan_shows_what_would_change_with_nomads_exit_codes() {
    let report = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples/report.json");
    let server = Server::start().await;

    // New, and no client node to run it: a change (1) that does not fit.
    let out = cli(&server.url, &["job", "plan", report]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(
        text.starts_with("+ Job: \"report\" (new, version 0)\n  Task Group \"report\": 3 cannot be placed\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "- WARNING: not every allocation fits.\n  Task Group \"report\": no client nodes are registered\n"
        ),
        "{text}"
    );
    let json = cli(&server.url, &["job", "plan", "--json", report]).await;
    let doc: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("one JSON document");
    assert_eq!(
        (doc["job"].as_str(), doc["exists"].as_bool(), doc["changes"].as_bool()),
        (Some("report"), Some(false), Some(true))
    );
    assert_eq!(doc["fits"], false);
    assert_eq!(doc["groups"][0]["unplaced"], 3);
    assert!(doc["groups"][0]["failure"].is_string(), "{doc}");

    // Submitted as is: planning it again changes nothing (0), and nothing was submitted by plan.
    assert!(cli(&server.url, &["job", "run", "-d", report]).await.status.success());
    let out = cli(&server.url, &["job", "plan", report]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).starts_with("Job: \"report\" (version 0, unchanged)\n"), "{}", stdout(&out));
    let status = stdout(&cli(&server.url, &["job", "status", "report"]).await);
    assert!(status.contains("Version     = 0"), "{status}");

    // Errors use Nomad's 255.
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.hcl");
    std::fs::write(&bad, "job \"x\" {\n  vault {}\n}\n").expect("write");
    let out = cli(&server.url, &["job", "plan", bad.to_str().expect("utf-8")]).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr(&out).contains("line 2: block `vault` in job \"x\" is not supported by Helios"), "{}", stderr(&out));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_colour_only_on_a_terminal_without_no_color() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell], &[]).await;
        assert!(out.status.success(), "{shell}");
        assert!(stdout(&out).contains("deploy") && stdout(&out).contains("validate"), "{shell}");
    }
    let server = Server::start().await;
    assert!(cli(&server.url, &["job", "run", "-d", "--name", "tinted", "echo"]).await.status.success());
    // Piped: plain.
    let piped = stdout(&cli(&server.url, &["job", "list"]).await);
    assert!(!piped.contains('\x1b'), "{piped:?}");
    // On a terminal (a pseudo-terminal from `script`): a bold header and a coloured status.
    let on_terminal = |no_color: Option<&str>| {
        let command = format!("{CLI} --server-addr {} job list", server.url);
        let mut script = Command::new("script");
        script.args(["-qec", &command, "/dev/null"]).env_remove("HELIOS_ADDR").env_remove("NO_COLOR");
        if let Some(value) = no_color {
            script.env("NO_COLOR", value);
        }
        String::from_utf8_lossy(&script.output().expect("script").stdout).into_owned()
    };
    let coloured = on_terminal(None);
    assert!(coloured.contains("\x1b[1mNAME\x1b[0m") && coloured.contains("\x1b[33mpending\x1b[0m"), "{coloured:?}");
    let plain = on_terminal(Some("1"));
    assert!(plain.contains("tinted") && !plain.contains('\x1b'), "{plain:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_keygen_and_node_purge() {
    // A fresh key each time, 64 hex digits, with no server needed.
    let keys: Vec<String> = [run(&["operator", "keygen"], &[]).await, run(&["operator", "keygen"], &[]).await]
        .iter()
        .map(|o| {
            assert!(o.status.success(), "{}", stderr(o));
            stdout(o).trim().to_string()
        })
        .collect();
    for key in &keys {
        assert!(key.len() == 64 && key.chars().all(|c| c.is_ascii_hexdigit()), "{key}");
    }
    assert_ne!(keys[0], keys[1]);

    let server = Server::start().await;
    let out = cli(&server.url, &["node", "purge", "ghost"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("node \"ghost\" not found"), "{}", stderr(&out));
    server.shutdown().await;
}

/// The value of `Key = value` in `acl` output.
fn field(out: &Output, key: &str) -> String {
    stdout(out)
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|rest| rest.trim_start().trim_start_matches('=').trim().to_string()))
        .unwrap_or_else(|| panic!("no {key} in {}", stdout(out)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_bootstrap_policies_and_tokens_from_the_cli() {
    let server = Server::spawn_with(1, true, true).await;
    let url = server.url.clone();
    // Anonymous: refused (waiting out the first election), naming the capability.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let refused = loop {
        let out = cli(&url, &["job", "run", "--name", "a", "echo", "--", "hi"]).await;
        if stderr(&out).contains("needs submit-job") || std::time::Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("permission denied: this call needs submit-job"), "{}", stderr(&refused));

    let boot = cli(&url, &["acl", "bootstrap"]).await;
    assert!(boot.status.success(), "{}", stderr(&boot));
    let root = field(&boot, "Secret ID");
    let again = cli(&url, &["acl", "bootstrap"]).await;
    assert_eq!(again.status.code(), Some(1));

    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("readonly.hcl");
    std::fs::write(&file, "namespace \"default\" {\n  policy = \"read\"\n}\nnode {\n  policy = \"read\"\n}\n")
        .expect("write");
    let as_root = [("HELIOS_TOKEN", root.as_str())];
    let file_arg = file.to_str().expect("utf8");
    let applied = run(&["--server-addr", &url, "acl", "policy", "apply", "readonly", file_arg], &as_root).await;
    assert!(applied.status.success(), "{}", stderr(&applied));
    let bad = dir.path().join("bad.hcl");
    std::fs::write(&bad, "namespace \"default\" {\n  capabilities = [\"dispatch-job\"]\n}\n").expect("write");
    let refused =
        run(&["--server-addr", &url, "acl", "policy", "apply", "bad", bad.to_str().expect("utf8")], &as_root).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("dispatch-job"), "{}", stderr(&refused));
    let created =
        run(&["--server-addr", &url, "acl", "token", "create", "--name", "ro", "--policy", "readonly"], &as_root).await;
    assert!(created.status.success(), "{}", stderr(&created));
    let reader = field(&created, "Secret ID");

    // Nomad's variable works too; the read-only token reads and cannot write.
    let as_reader = [("NOMAD_TOKEN", reader.as_str())];
    let listed = run(&["--server-addr", &url, "job", "list"], &as_reader).await;
    assert!(listed.status.success(), "{}", stderr(&listed));
    let write = run(&["--server-addr", &url, "job", "run", "-d", "--name", "b", "echo", "--", "hi"], &as_reader).await;
    assert_eq!(write.status.code(), Some(1));
    assert!(stderr(&write).contains("needs submit-job"), "{}", stderr(&write));
    let me = run(&["--server-addr", &url, "acl", "token", "self"], &as_reader).await;
    assert_eq!(field(&me, "Name"), "ro");
    assert_eq!(field(&me, "Secret ID"), "<hidden>");
    let wrote =
        run(&["--server-addr", &url, "--token", &root, "job", "run", "-d", "--name", "b", "echo", "--", "hi"], &[])
            .await;
    assert!(wrote.status.success(), "{}", stderr(&wrote));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_save_inspect_restore_and_system_gc() {
    let server = Server::start().await;
    for name in ["kept", "stopped"] {
        let out = cli(&server.url, &["job", "run", "-d", "--name", name, "true"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert!(cli(&server.url, &["job", "stop", "stopped"]).await.status.success());
    // A job of 600 KB (stored twice, as the job and its version) makes the file several chunks
    // long: a chunk of exactly the API's message limit was refused with its framing.
    let big_arg = "x".repeat(60_000);
    let mut big = vec!["job", "run", "-d", "--name", "big", "true", "--"];
    big.extend(std::iter::repeat_n(big_arg.as_str(), 10));
    let out = cli(&server.url, &big).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("state.snap");
    let file = file.to_str().expect("utf8");
    let out = cli(&server.url, &["operator", "snapshot", "save", file]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with(&format!("Saved {file} (")), "{}", stdout(&out));
    let size = std::fs::metadata(file).expect("saved").len();
    assert!(size > 1024 * 1024, "{size} bytes: more than one message's worth");

    // Inspected with no server at all.
    let out = run(&["--server-addr", &dead_url(), "operator", "snapshot", "inspect", file], &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = stdout(&out);
    assert!(shown.contains(&format!("Format  = {}", helios_server::store::tables::FORMAT_VERSION)), "{shown}");
    assert!(shown.contains(&format!("Members = 1={}", server.addr())), "{shown}");
    let jobs_row = shown.lines().find(|l| l.starts_with("jobs ")).expect("a jobs row");
    assert_eq!(jobs_row.split_whitespace().nth(1), Some("3"), "{shown}");

    // Restored into another (new) cluster: the same jobs.
    let other = Server::start().await;
    let out = cli(&other.url, &["operator", "snapshot", "restore", file]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with(&format!("Restored {file} (")), "{}", stdout(&out));
    let listed = stdout(&cli(&other.url, &["job", "list"]).await);
    assert!(listed.contains("kept") && listed.contains("stopped") && listed.contains("big"), "{listed}");
    other.shutdown().await;

    // A damaged file is refused in one line.
    let mut bytes = std::fs::read(file).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let damaged = dir.path().join("damaged.snap");
    std::fs::write(&damaged, bytes).expect("write");
    let out = run(&["operator", "snapshot", "inspect", damaged.to_str().expect("utf8")], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("damaged.snap"), "{}", stderr(&out));

    // system gc forgets the stopped job (its allocation never started: no agent).
    let out = cli(&server.url, &["system", "gc"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(", 1 jobs,"), "{}", stdout(&out));
    let listed = stdout(&cli(&server.url, &["job", "list"]).await);
    assert!(listed.contains("kept") && !listed.contains("stopped"), "{listed}");
    server.shutdown().await;
}

/// `helios-cli ... | head`: output to a pipe whose reader has gone ends the command quietly (as
/// SIGPIPE ends other tools), not with a panic and its backtrace.
#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = Command::new(CLI)
        .args(["operator", "keygen"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run helios-cli");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(stderr.is_empty(), "nothing on stderr: {stderr}");
}
