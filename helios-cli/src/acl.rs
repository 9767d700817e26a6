//! `helios-cli acl ...`: bootstrap, policies (Nomad's policy files, HCL or JSON) and tokens.

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use hcl_edit::expr::Expression;
use hcl_edit::structure::{Body, Structure};
use hcl_edit::Span;
use helios_api::convert::{time_of, timestamp_from_pb, Label};
use helios_api::pages::every_page;
use helios_api::pb;
use helios_api::pb::acl_service_client::AclServiceClient;
use helios_core::Timestamp;
use serde_json::Value;

use crate::connect::{status_error, Servers};
use crate::table::{now, Table};

#[derive(Subcommand, Debug)]
pub enum AclCommand {
    /// Create the first management token and print its secret (once per cluster).
    Bootstrap,
    /// Policies: what tokens may do.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Tokens: who may do it.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Create or replace policy NAME from FILE (Nomad's policy syntax, HCL or JSON).
    Apply {
        name: String,
        file: std::path::PathBuf,
        #[arg(long, default_value = "")]
        description: String,
    },
    List,
    Info {
        name: String,
    },
    Delete {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once.
    Create {
        #[arg(long, default_value = "")]
        name: String,
        /// A policy the token holds; repeatable (client tokens).
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// client (holds policies) or management (may do everything).
        #[arg(long = "type", default_value = "client")]
        token_type: String,
        /// Lifetime, such as 30m, 8h, 7d; none: no expiry.
        #[arg(long)]
        ttl: Option<String>,
    },
    List,
    /// One token, by accessor id.
    Info {
        accessor_id: String,
    },
    /// The token this CLI uses (--token, HELIOS_TOKEN or NOMAD_TOKEN).
    #[command(name = "self")]
    Myself,
    Delete {
        accessor_id: String,
    },
}

pub async fn run(servers: &Servers, command: AclCommand) -> Result<()> {
    let mut acl = AclServiceClient::new(servers.connect().await?);
    match command {
        AclCommand::Bootstrap => {
            let token = acl.bootstrap(pb::AclBootstrapRequest {}).await.map_err(status_error)?.into_inner().token;
            print_token(&token.ok_or_else(|| anyhow!("the server returned no token"))?);
        }
        AclCommand::Policy(PolicyCommand::Apply { name, file, description }) => {
            let source = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let rules = parse_policy(&source, &file.to_string_lossy())
                .map_err(|problems| anyhow!("{}", problems.join("; ")))?;
            let policy =
                pb::AclPolicy { name: name.clone(), description, rules: Some(rules), source, update_time: None };
            acl.upsert_policy(pb::UpsertAclPolicyRequest { policy: Some(policy), ..Default::default() })
                .await
                .map_err(status_error)?;
            println!("Successfully wrote {name:?} ACL policy!");
        }
        AclCommand::Policy(PolicyCommand::List) => {
            let policies = every_page(pb::ListAclPoliciesRequest::default(), |r| {
                let mut acl = acl.clone();
                async move { acl.list_policies(r).await }
            })
            .await
            .map_err(status_error)?;
            let mut table = Table::new(&["NAME", "DESCRIPTION"]);
            for p in policies {
                table.row(vec![p.name, p.description]);
            }
            table.print();
        }
        AclCommand::Policy(PolicyCommand::Info { name }) => {
            let p = acl.get_policy(pb::GetAclPolicyRequest { name }).await.map_err(status_error)?.into_inner().policy;
            let p = p.ok_or_else(|| anyhow!("the server returned no policy"))?;
            println!("Name        = {}", p.name);
            println!("Description = {}", p.description);
            println!("Modified    = {}", time_of(p.update_time.as_ref()).to_rfc3339());
            println!("\nRules\n\n{}", p.source.trim_end());
        }
        AclCommand::Policy(PolicyCommand::Delete { name }) => {
            acl.delete_policy(pb::DeleteAclPolicyRequest { name: name.clone(), ..Default::default() })
                .await
                .map_err(status_error)?;
            println!("Successfully deleted {name:?} ACL policy!");
        }
        AclCommand::Token(TokenCommand::Create { name, policies, token_type, ttl }) => {
            let ttl_ms =
                ttl.as_deref().map(helios_core::acl::parse_ttl).transpose().map_err(|e| anyhow!("--ttl: {e}"))?;
            let request = pb::CreateAclTokenRequest { name, r#type: token_type, policies, ttl_ms: ttl_ms.unwrap_or(0) };
            let token = acl.create_token(request).await.map_err(status_error)?.into_inner().token;
            print_token(&token.ok_or_else(|| anyhow!("the server returned no token"))?);
        }
        AclCommand::Token(TokenCommand::List) => {
            let tokens = every_page(pb::ListAclTokensRequest::default(), |r| {
                let mut acl = acl.clone();
                async move { acl.list_tokens(r).await }
            })
            .await
            .map_err(status_error)?;
            let now = now();
            let mut table = Table::new(&["NAME", "TYPE", "ACCESSOR ID", "POLICIES", "EXPIRES"]);
            for t in tokens {
                let expires = timestamp_from_pb(t.expire_time.as_ref())
                    .map_or("never".to_string(), |at| describe_expiry(at.as_millis(), now));
                table.row(vec![
                    t.name.clone(),
                    t.r#type().label().to_string(),
                    t.accessor_id,
                    t.policies.join(","),
                    expires,
                ]);
            }
            table.print();
        }
        AclCommand::Token(TokenCommand::Info { accessor_id }) => {
            let token = acl.get_token(pb::GetAclTokenRequest { accessor_id }).await.map_err(status_error)?.into_inner();
            print_token(&token.token.ok_or_else(|| anyhow!("the server returned no token"))?);
        }
        AclCommand::Token(TokenCommand::Myself) => {
            let token = acl.get_token_self(pb::GetAclTokenSelfRequest {}).await.map_err(status_error)?.into_inner();
            print_token(&token.token.ok_or_else(|| anyhow!("the server returned no token"))?);
        }
        AclCommand::Token(TokenCommand::Delete { accessor_id }) => {
            acl.delete_token(pb::DeleteAclTokenRequest { accessor_id: accessor_id.clone(), ..Default::default() })
                .await
                .map_err(status_error)?;
            println!("Token {accessor_id} successfully deleted");
        }
    }
    Ok(())
}

fn describe_expiry(at_ms: u64, now: Timestamp) -> String {
    let at = Timestamp(at_ms);
    if at <= now {
        format!("expired {}", at.to_rfc3339())
    } else {
        at.to_rfc3339()
    }
}

fn print_token(t: &pb::AclToken) {
    println!("Accessor ID  = {}", t.accessor_id);
    // Shown only when the token was just made; the servers keep only its hash.
    println!("Secret ID    = {}", if t.secret_id.is_empty() { "<hidden>" } else { &t.secret_id });
    println!("Name         = {}", t.name);
    println!("Type         = {}", t.r#type().label());
    println!("Policies     = {:?}", t.policies);
    println!("Create Time  = {}", time_of(t.create_time.as_ref()).to_rfc3339());
    println!(
        "Expiry Time  = {}",
        timestamp_from_pb(t.expire_time.as_ref()).map_or("<none>".to_string(), |at| at.to_rfc3339())
    );
}

/// A policy file, HCL or JSON (by its first character), as rules; problems by line (HCL).
pub fn parse_policy(text: &str, file: &str) -> Result<pb::AclPolicyRules, Vec<String>> {
    let json = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| vec![format!("{file}: line {}: {e}", e.line())])?
    } else {
        hcl_to_json(text).map_err(|p| p.into_iter().map(|p| format!("{file}: {p}")).collect::<Vec<_>>())?
    };
    json_rules(&json).map_err(|p| p.into_iter().map(|p| format!("{file}: {p}")).collect())
}

/// Nomad's JSON policy shape from its HCL: `namespace "default" { ... }` and `node`, `agent`,
/// `operator` blocks holding `policy` and (namespaces) `capabilities`.
fn hcl_to_json(text: &str) -> Result<Value, Vec<String>> {
    let body: Body = hcl_edit::parser::parse_body(text)
        .map_err(|e| vec![format!("line {}: {}", e.location().line(), e.message())])?;
    let line = |span: Option<std::ops::Range<usize>>| {
        span.map_or(0, |s| text[..s.start.min(text.len())].matches('\n').count() + 1)
    };
    let mut problems = Vec::new();
    let mut out = serde_json::Map::new();
    for structure in body.iter() {
        let Structure::Block(block) = structure else {
            problems.push(format!("line {}: only blocks belong at the top of a policy", line(structure.span())));
            continue;
        };
        let mut rules = serde_json::Map::new();
        for inner in block.body.iter() {
            match inner {
                Structure::Attribute(a) => match (a.key.as_str(), &a.value) {
                    ("policy", Expression::String(s)) => {
                        rules.insert("policy".into(), Value::String(s.as_str().to_string()));
                    }
                    ("capabilities", Expression::Array(items)) => {
                        let mut caps = Vec::new();
                        for item in items.iter() {
                            match item {
                                Expression::String(s) => caps.push(Value::String(s.as_str().to_string())),
                                _ => problems.push(format!("line {}: capabilities are strings", line(a.span()))),
                            }
                        }
                        rules.insert("capabilities".into(), Value::Array(caps));
                    }
                    (key, _) => problems.push(format!(
                        "line {}: `{key}` is not a policy rule here (policy = \"...\", capabilities = [...])",
                        line(a.span())
                    )),
                },
                Structure::Block(b) => problems.push(format!(
                    "line {}: block `{}` is not supported inside `{}`",
                    line(b.span()),
                    b.ident.as_str(),
                    block.ident.as_str()
                )),
            }
        }
        let ident = block.ident.as_str();
        match (ident, block.labels.as_slice()) {
            ("namespace", [label]) => {
                let namespaces = out.entry("namespace").or_insert_with(|| Value::Object(Default::default()));
                if let Value::Object(map) = namespaces {
                    if map.insert(label.as_str().to_string(), Value::Object(rules)).is_some() {
                        problems.push(format!(
                            "line {}: namespace {:?} is given twice",
                            line(block.span()),
                            label.as_str()
                        ));
                    }
                }
            }
            ("node" | "agent" | "operator", []) => {
                if out.insert(ident.to_string(), Value::Object(rules)).is_some() {
                    problems.push(format!("line {}: `{ident}` is given twice", line(block.span())));
                }
            }
            _ => problems.push(format!(
                "line {}: `{ident}` is not a Helios policy block (namespace \"default\", node, agent, operator)",
                line(block.span())
            )),
        }
    }
    if problems.is_empty() {
        Ok(Value::Object(out))
    } else {
        Err(problems)
    }
}

/// Rules from Nomad's JSON policy shape. Helios has one namespace: `default` (or `*`).
fn json_rules(json: &Value) -> Result<pb::AclPolicyRules, Vec<String>> {
    let mut problems = Vec::new();
    let mut rules = pb::AclPolicyRules::default();
    let Some(top) = json.as_object() else { return Err(vec!["a policy is an object".into()]) };
    let policy_of = |v: &Value, at: &str, problems: &mut Vec<String>| -> i32 {
        let level = match v.get("policy") {
            None => Ok(pb::AclLevel::Unspecified),
            Some(Value::String(s)) => helios_api::acl::level_from_word(s),
            Some(_) => Err("must be a string".to_string()),
        };
        level.unwrap_or_else(|problem| {
            problems.push(format!("{at}.policy: {problem}"));
            pb::AclLevel::Unspecified
        }) as i32
    };
    for (key, value) in top {
        match key.as_str() {
            "namespace" => {
                let Some(namespaces) = value.as_object() else {
                    problems.push("namespace must map names to rules".into());
                    continue;
                };
                if namespaces.contains_key("default") && namespaces.contains_key("*") {
                    problems.push("namespace \"default\" and \"*\" are the same one here: give one".into());
                    continue;
                }
                for (name, ns) in namespaces {
                    if name != "default" && name != "*" {
                        problems.push(format!("namespace {name:?}: Helios has one namespace, \"default\" (or \"*\")"));
                        continue;
                    }
                    rules.job_policy = policy_of(ns, &format!("namespace.{name}"), &mut problems);
                    match ns.get("capabilities") {
                        None => {}
                        Some(Value::Array(caps)) => {
                            for cap in caps {
                                match cap.as_str().map(helios_api::acl::job_capability_from_word) {
                                    Some(Ok(c)) => rules.job_capabilities.push(c as i32),
                                    Some(Err(problem)) => {
                                        problems.push(format!("namespace.{name}.capabilities: {problem}"))
                                    }
                                    None => problems.push(format!("namespace.{name}.capabilities holds strings")),
                                }
                            }
                        }
                        Some(_) => problems.push(format!("namespace.{name}.capabilities must be a list")),
                    }
                }
            }
            "node" => rules.node = policy_of(value, "node", &mut problems),
            "agent" => rules.agent = policy_of(value, "agent", &mut problems),
            "operator" => rules.operator = policy_of(value, "operator", &mut problems),
            other => problems.push(format!("`{other}` is not a Helios policy rule (namespace, node, agent, operator)")),
        }
    }
    if problems.is_empty() {
        Ok(rules)
    } else {
        Err(problems)
    }
}

/// Refuses an empty token early with the variable names a user may have meant.
pub fn resolve_token(flag: Option<String>) -> Result<Option<String>> {
    let present = |t: &String| !t.trim().is_empty();
    let token = flag.filter(present).or_else(|| std::env::var("NOMAD_TOKEN").ok().filter(present));
    if let Some(t) = &token {
        if t.chars().any(|c| !c.is_ascii_graphic()) {
            bail!("the ACL token (--token, HELIOS_TOKEN or NOMAD_TOKEN) holds characters a token cannot");
        }
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nomads_policy_files_parse_in_hcl_and_json() {
        let hcl = r#"
namespace "default" {
  policy       = "read"
  capabilities = ["submit-job", "read-logs"]
}
node { policy = "write" }
agent { policy = "read" }
"#;
        let rules = parse_policy(hcl, "p.hcl").expect("parses");
        assert_eq!(rules.job_policy(), pb::AclLevel::Read);
        let capabilities: Vec<_> = rules.job_capabilities().collect();
        assert_eq!(capabilities, [pb::AclJobCapability::SubmitJob, pb::AclJobCapability::ReadLogs]);
        assert_eq!(
            (rules.node(), rules.agent(), rules.operator()),
            (pb::AclLevel::Write, pb::AclLevel::Read, pb::AclLevel::Unspecified)
        );
        let json = r#"{"namespace": {"default": {"policy": "write"}}, "operator": {"policy": "read"}}"#;
        let rules = parse_policy(json, "p.json").expect("parses");
        assert_eq!((rules.job_policy(), rules.operator()), (pb::AclLevel::Write, pb::AclLevel::Read));
    }

    #[test]
    fn unknown_levels_and_capabilities_are_refused_naming_where() {
        let hcl = "namespace \"default\" {\n  policy = \"admin\"\n  capabilities = [\"read-fs\", \"fly\"]\n}\n";
        let problems = parse_policy(hcl, "p.hcl").expect_err("refused");
        assert!(
            problems.iter().any(|p| p.contains("namespace.default.policy") && p.contains("\"admin\"")),
            "{problems:?}"
        );
        assert!(problems.iter().any(|p| p.contains("read-fs") && p.contains("Nomad's")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("unknown capability \"fly\"")), "{problems:?}");
        let problems = parse_policy(r#"{"node": {"policy": 3}}"#, "p.json").expect_err("refused");
        assert!(problems.iter().any(|p| p.contains("node.policy: must be a string")), "{problems:?}");
    }

    #[test]
    fn a_rule_given_twice_is_refused_not_overwritten() {
        let hcl = "node {\n  policy = \"read\"\n}\nnode {\n  policy = \"write\"\n}\n";
        let problems = parse_policy(hcl, "p.hcl").expect_err("refused");
        assert!(problems.iter().any(|p| p.contains("line 4") && p.contains("`node` is given twice")), "{problems:?}");
        let hcl = "namespace \"default\" { policy = \"read\" }\nnamespace \"*\" { policy = \"write\" }\n";
        let problems = parse_policy(hcl, "p.hcl").expect_err("refused");
        assert!(problems.iter().any(|p| p.contains("the same one")), "{problems:?}");
    }

    #[test]
    fn what_helios_does_not_have_is_refused_by_line() {
        let hcl = "namespace \"prod\" {\n  policy = \"read\"\n}\nhost_volume \"x\" {\n  policy = \"write\"\n}\n";
        let problems = parse_policy(hcl, "p.hcl").expect_err("refused");
        assert!(problems.iter().any(|p| p.contains("line 4") && p.contains("host_volume")), "{problems:?}");
        let problems = parse_policy("namespace \"prod\" { policy = \"read\" }", "p.hcl").expect_err("refused");
        assert!(problems[0].contains("one namespace"), "{problems:?}");
    }
}
