//! Nomad's jobspec in HCL, read into the same `JobSpec` as TOML and JSON.
//!
//! The file is walked against `JOB`, the part of Nomad's jobspec Helios has. Every attribute and
//! block is checked by name, kind and value type as it is met, so anything Helios does not
//! support, or a value of the wrong type, is reported with its line and name (all of them, not
//! only the first). What passes becomes the JSON shape of `JobSpec`.

use hcl_edit::expr::{Expression, ObjectKey};
use hcl_edit::structure::{Block, Body, Structure};
use hcl_edit::Span;
use serde_json::{Map, Value};

/// The type an attribute's value must have.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ty {
    Str,
    Int,
    /// A whole number that may be negative (an affinity's weight).
    SignedInt,
    /// A TCP port: 1 to 65535.
    Port,
    /// A network port's `to`: a port, or Nomad's -1 and 0 for "the host port", which is what
    /// leaving it out means (read as unset).
    MappedPort,
    Bool,
    StrList,
    /// `{ KEY = "value" }`, as an attribute or a block of attributes (env, meta, labels).
    StrMap,
    /// `[{ key = "value", ... }, ...]` with only the keys listed (docker's `devices`).
    MapList(&'static [&'static str]),
    /// A block of `NAME = ["value", ...]` lines (an http check's `header`).
    StrListMap,
}

/// What a name may be inside a block.
enum Kind {
    Attr(Ty),
    /// A block without labels, at most once.
    Block(&'static [Field]),
    /// Labelled blocks (`group "web" {}`), collected into an array of objects named by label.
    Named(&'static [Field]),
    /// Unlabelled blocks that may repeat (`constraint {}`), collected into an array.
    Repeated(&'static [Field]),
    /// Labelled blocks collected into an object keyed by label (`port "http" {}`).
    Keyed(&'static [Field]),
}

struct Field {
    name: &'static str,
    kind: Kind,
}

const fn attr(name: &'static str, ty: Ty) -> Field {
    Field { name, kind: Kind::Attr(ty) }
}

const CONSTRAINT: &[Field] = &[attr("attribute", Ty::Str), attr("operator", Ty::Str), attr("value", Ty::Str)];
const RESTART: &[Field] =
    &[attr("attempts", Ty::Int), attr("interval", Ty::Str), attr("delay", Ty::Str), attr("mode", Ty::Str)];
const RESCHEDULE: &[Field] = &[
    attr("attempts", Ty::Int),
    attr("interval", Ty::Str),
    attr("delay", Ty::Str),
    attr("delay_function", Ty::Str),
    attr("max_delay", Ty::Str),
    attr("unlimited", Ty::Bool),
];
const UPDATE: &[Field] = &[
    attr("max_parallel", Ty::Int),
    attr("health_check", Ty::Str),
    attr("min_healthy_time", Ty::Str),
    attr("healthy_deadline", Ty::Str),
    attr("progress_deadline", Ty::Str),
    attr("auto_revert", Ty::Bool),
    attr("auto_promote", Ty::Bool),
    attr("canary", Ty::Int),
    attr("stagger", Ty::Str),
];
const MIGRATE: &[Field] = &[
    attr("max_parallel", Ty::Int),
    attr("health_check", Ty::Str),
    attr("min_healthy_time", Ty::Str),
    attr("healthy_deadline", Ty::Str),
];
const AFFINITY: &[Field] =
    &[attr("attribute", Ty::Str), attr("operator", Ty::Str), attr("value", Ty::Str), attr("weight", Ty::SignedInt)];
const SPREAD_TARGET: &[Field] = &[attr("percent", Ty::Int)];
const SPREAD: &[Field] =
    &[attr("attribute", Ty::Str), attr("weight", Ty::Int), Field { name: "target", kind: Kind::Keyed(SPREAD_TARGET) }];
const PORT: &[Field] = &[attr("static", Ty::Port), attr("to", Ty::MappedPort)];
const NETWORK: &[Field] = &[attr("mode", Ty::Str), Field { name: "port", kind: Kind::Keyed(PORT) }];
const RESOURCES: &[Field] = &[attr("cpu", Ty::Int), attr("memory", Ty::Int)];
const CONFIG: &[Field] = &[
    attr("command", Ty::Str),
    attr("args", Ty::StrList),
    attr("image", Ty::Str),
    attr("entrypoint", Ty::StrList),
    attr("ports", Ty::StrList),
    attr("work_dir", Ty::Str),
    attr("labels", Ty::StrMap),
    attr("network_mode", Ty::Str),
    attr("volumes", Ty::StrList),
    attr("cpu_hard_limit", Ty::Bool),
    attr("privileged", Ty::Bool),
    attr("cap_add", Ty::StrList),
    attr("cap_drop", Ty::StrList),
    attr("devices", Ty::MapList(&["host_path", "container_path", "cgroup_permissions"])),
];
const CHECK_RESTART: &[Field] = &[attr("limit", Ty::Int), attr("grace", Ty::Str), attr("ignore_warnings", Ty::Bool)];
const CHECK: &[Field] = &[
    attr("name", Ty::Str),
    attr("type", Ty::Str),
    attr("port", Ty::Str),
    attr("path", Ty::Str),
    attr("method", Ty::Str),
    attr("header", Ty::StrListMap),
    attr("protocol", Ty::Str),
    attr("interval", Ty::Str),
    attr("timeout", Ty::Str),
    attr("initial_status", Ty::Str),
    attr("success_before_passing", Ty::Int),
    attr("failures_before_critical", Ty::Int),
    attr("grpc_service", Ty::Str),
    attr("grpc_use_tls", Ty::Bool),
    attr("tls_skip_verify", Ty::Bool),
    attr("command", Ty::Str),
    attr("args", Ty::StrList),
    attr("task", Ty::Str),
    attr("address_mode", Ty::Str),
    attr("on_update", Ty::Str),
    attr("expose", Ty::Bool),
    Field { name: "check_restart", kind: Kind::Block(CHECK_RESTART) },
];
const SERVICE: &[Field] = &[
    attr("name", Ty::Str),
    attr("port", Ty::Str),
    attr("tags", Ty::StrList),
    attr("meta", Ty::StrMap),
    attr("address_mode", Ty::Str),
    attr("provider", Ty::Str),
    attr("task", Ty::Str),
    Field { name: "check_restart", kind: Kind::Block(CHECK_RESTART) },
    Field { name: "check", kind: Kind::Repeated(CHECK) },
];
const TASK: &[Field] = &[
    attr("driver", Ty::Str),
    Field { name: "config", kind: Kind::Block(CONFIG) },
    attr("env", Ty::StrMap),
    Field { name: "resources", kind: Kind::Block(RESOURCES) },
    Field { name: "constraint", kind: Kind::Repeated(CONSTRAINT) },
    attr("kill_timeout", Ty::Str),
    attr("user", Ty::Str),
    Field { name: "service", kind: Kind::Repeated(SERVICE) },
];
const GROUP: &[Field] = &[
    attr("count", Ty::Int),
    Field { name: "constraint", kind: Kind::Repeated(CONSTRAINT) },
    Field { name: "restart", kind: Kind::Block(RESTART) },
    Field { name: "reschedule", kind: Kind::Block(RESCHEDULE) },
    Field { name: "migrate", kind: Kind::Block(MIGRATE) },
    Field { name: "update", kind: Kind::Block(UPDATE) },
    Field { name: "affinity", kind: Kind::Repeated(AFFINITY) },
    Field { name: "spread", kind: Kind::Repeated(SPREAD) },
    attr("meta", Ty::StrMap),
    Field { name: "network", kind: Kind::Block(NETWORK) },
    Field { name: "service", kind: Kind::Repeated(SERVICE) },
    Field { name: "task", kind: Kind::Named(TASK) },
];
const JOB: &[Field] = &[
    attr("type", Ty::Str),
    attr("priority", Ty::Int),
    attr("datacenters", Ty::StrList),
    attr("meta", Ty::StrMap),
    Field { name: "constraint", kind: Kind::Repeated(CONSTRAINT) },
    Field { name: "reschedule", kind: Kind::Block(RESCHEDULE) },
    Field { name: "migrate", kind: Kind::Block(MIGRATE) },
    Field { name: "update", kind: Kind::Block(UPDATE) },
    Field { name: "affinity", kind: Kind::Repeated(AFFINITY) },
    Field { name: "spread", kind: Kind::Repeated(SPREAD) },
    Field { name: "group", kind: Kind::Named(GROUP) },
];

/// The JSON shape of the job the HCL text declares with notes about what it keeps as written,
/// or every problem found, each as `line N: ...`.
pub fn to_json(text: &str) -> Result<(Value, Vec<String>), Vec<String>> {
    let body = hcl_edit::parser::parse_body(text)
        .map_err(|e| vec![format!("line {}: {}", e.location().line(), e.message())])?;
    let mut walker = Walker { text, problems: Vec::new(), notes: Vec::new() };
    let jobs: Vec<&Block> = body.blocks().filter(|b| b.ident.as_str() == "job").collect();
    for other in body.iter() {
        match other {
            Structure::Block(b) if b.ident.as_str() == "job" => {}
            Structure::Block(b) => walker.unsupported(b.span(), &format!("block `{}`", b.ident.as_str()), "the file"),
            Structure::Attribute(a) => {
                walker.unsupported(a.span(), &format!("attribute `{}`", a.key.as_str()), "the file");
            }
        }
    }
    let job = match jobs.as_slice() {
        [job] => job,
        [] => {
            walker.problems.push("a job file needs one `job \"NAME\" { ... }` block".to_string());
            return Err(walker.problems);
        }
        [_, second, ..] => {
            return Err(vec![format!("line {}: a job file declares one job", walker.line(second.span()))]);
        }
    };
    let label = job.labels.first().map_or(String::new(), |l| format!(" {:?}", l.as_str()));
    let mut object = walker.block(job, JOB, &format!("job{label}"));
    match job.labels.as_slice() {
        [name] => {
            object.insert("name".into(), Value::String(name.as_str().to_string()));
        }
        _ => walker.problem(job.span(), "`job` takes one label, its name: job \"NAME\" { ... }"),
    }
    if walker.problems.is_empty() {
        Ok((Value::Object(object), walker.notes))
    } else {
        Err(walker.problems)
    }
}

struct Walker<'t> {
    text: &'t str,
    problems: Vec<String>,
    notes: Vec<String>,
}

impl Walker<'_> {
    fn line(&self, span: Option<std::ops::Range<usize>>) -> usize {
        span.map_or(0, |r| self.text[..r.start.min(self.text.len())].matches('\n').count() + 1)
    }

    fn problem(&mut self, span: Option<std::ops::Range<usize>>, what: &str) {
        let line = self.line(span);
        self.problems.push(format!("line {line}: {what}"));
    }

    fn unsupported(&mut self, span: Option<std::ops::Range<usize>>, what: &str, inside: &str) {
        self.problem(span, &format!("{what} in {inside} is not supported by Helios"));
    }

    /// A block's body as a JSON object, checked against `fields`.
    fn block(&mut self, block: &Block, fields: &[Field], inside: &str) -> Map<String, Value> {
        self.body(&block.body, fields, inside)
    }

    fn body(&mut self, body: &Body, fields: &[Field], inside: &str) -> Map<String, Value> {
        let mut object = Map::new();
        for item in body.iter() {
            let (name, span) = match item {
                Structure::Attribute(a) => (a.key.as_str(), a.span()),
                Structure::Block(b) => (b.ident.as_str(), b.span()),
            };
            let Some(field) = fields.iter().find(|f| f.name == name) else {
                let what = if item.is_block() { "block" } else { "attribute" };
                self.unsupported(span, &format!("{what} `{name}`"), inside);
                continue;
            };
            let here = format!("`{name}`");
            let repeatable = matches!(field.kind, Kind::Named(_) | Kind::Repeated(_) | Kind::Keyed(_));
            if !repeatable && object.contains_key(name) {
                self.problem(span, &format!("{here} is given twice in {inside}"));
                continue;
            }
            match (&field.kind, item) {
                (Kind::Attr(ty), Structure::Attribute(a)) => {
                    if let Some(value) = self.value(&a.value, *ty, &here) {
                        object.insert(name.to_string(), value);
                    }
                }
                // env, meta and labels may be written as blocks of attributes.
                (Kind::Attr(Ty::StrMap), Structure::Block(b)) if b.labels.is_empty() => {
                    let mut map = Map::new();
                    for entry in b.body.iter() {
                        match entry {
                            Structure::Attribute(a) => {
                                if let Some(v) = self.scalar_text(&a.value, &format!("`{name}.{}`", a.key.as_str())) {
                                    map.insert(a.key.as_str().to_string(), Value::String(v));
                                }
                            }
                            Structure::Block(inner) => {
                                self.problem(inner.span(), &format!("`{name}` holds only KEY = \"value\" lines"));
                            }
                        }
                    }
                    object.insert(name.to_string(), Value::Object(map));
                }
                (Kind::Attr(Ty::StrListMap), Structure::Block(b)) if b.labels.is_empty() => {
                    let mut map = Map::new();
                    for entry in b.body.iter() {
                        match entry {
                            Structure::Attribute(a) => {
                                let here = format!("`{name}.{}`", a.key.as_str());
                                if let Some(v) = self.value(&a.value, Ty::StrList, &here) {
                                    map.insert(a.key.as_str().to_string(), v);
                                }
                            }
                            Structure::Block(inner) => {
                                self.problem(inner.span(), &format!("`{name}` holds only NAME = [\"value\"] lines"));
                            }
                        }
                    }
                    object.insert(name.to_string(), Value::Object(map));
                }
                (Kind::Block(inner), Structure::Block(b)) if b.labels.is_empty() => {
                    let value = self.block(b, inner, &here);
                    object.insert(name.to_string(), Value::Object(value));
                }
                (Kind::Repeated(inner), Structure::Block(b)) if b.labels.is_empty() => {
                    let value = self.block(b, inner, &here);
                    push(&mut object, name, Value::Object(value));
                }
                (Kind::Named(inner), Structure::Block(b)) if b.labels.len() == 1 => {
                    let label = b.labels[0].as_str().to_string();
                    let mut value = self.block(b, inner, &format!("{name} {label:?}"));
                    value.insert("name".into(), Value::String(label));
                    push(&mut object, name, Value::Object(value));
                }
                (Kind::Keyed(inner), Structure::Block(b)) if b.labels.len() == 1 => {
                    let label = b.labels[0].as_str().to_string();
                    let value = self.block(b, inner, &format!("{name} {label:?}"));
                    let entry = object.entry(name.to_string()).or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(map) = entry {
                        if map.contains_key(&label) {
                            self.problem(span, &format!("{name} {label:?} is given twice in {inside}"));
                        }
                        map.insert(label, Value::Object(value));
                    }
                }
                (Kind::Attr(_), Structure::Block(_)) => {
                    self.problem(span, &format!("{here} is an attribute: write {name} = ..."));
                }
                (Kind::Named(_) | Kind::Keyed(_), _) => {
                    self.problem(span, &format!("{here} is a block with one label: {name} \"NAME\" {{ ... }}"));
                }
                (Kind::Block(_) | Kind::Repeated(_), _) => {
                    self.problem(span, &format!("{here} is a block without labels: {name} {{ ... }}"));
                }
            }
        }
        object
    }

    /// An attribute's value, checked against its type.
    fn value(&mut self, expr: &Expression, ty: Ty, here: &str) -> Option<Value> {
        let span = expr.span();
        let wrong = |this: &mut Self, expected: &str| {
            this.problem(span.clone(), &format!("{here} must be {expected}"));
            None
        };
        match ty {
            Ty::Str => self.scalar_text(expr, here).map(Value::String),
            Ty::Int => match whole_number(expr) {
                Some(Some(v)) if v >= 0 => Some(Value::from(v)),
                Some(_) => wrong(self, "a whole number >= 0"),
                None => wrong(self, "a number"),
            },
            Ty::SignedInt => match whole_number(expr) {
                Some(Some(v)) => Some(Value::from(v)),
                Some(None) => wrong(self, "a whole number"),
                None => wrong(self, "a number"),
            },
            Ty::Port => match whole_number(expr) {
                Some(Some(v)) if (1..=65_535).contains(&v) => Some(Value::from(v)),
                Some(_) => wrong(self, "a port, 1 to 65535"),
                None => wrong(self, "a port number"),
            },
            Ty::MappedPort => match whole_number(expr) {
                Some(Some(-1 | 0)) => Some(Value::Null),
                Some(Some(v)) if (1..=65_535).contains(&v) => Some(Value::from(v)),
                Some(_) => wrong(self, "a port, 1 to 65535 (or -1: the host port)"),
                None => wrong(self, "a port number"),
            },
            Ty::Bool => match expr {
                Expression::Bool(b) => Some(Value::Bool(*b.value())),
                _ => wrong(self, "true or false"),
            },
            Ty::StrList => match expr {
                Expression::Array(items) => {
                    let mut out = Vec::new();
                    for item in items.iter() {
                        out.push(Value::String(self.scalar_text(item, here)?));
                    }
                    Some(Value::Array(out))
                }
                _ => wrong(self, "a list: [\"a\", \"b\"]"),
            },
            Ty::StrMap => match expr {
                Expression::Object(entries) => {
                    let mut map = Map::new();
                    for (key, value) in entries.iter() {
                        let key = match key {
                            ObjectKey::Ident(ident) => ident.as_str().to_string(),
                            ObjectKey::Expression(e) => self.scalar_text(e, here)?,
                        };
                        let value = self.scalar_text(value.expr(), &format!("`{}.{key}`", here.trim_matches('`')))?;
                        map.insert(key, Value::String(value));
                    }
                    Some(Value::Object(map))
                }
                _ => wrong(self, "a map: { KEY = \"value\" }"),
            },
            Ty::MapList(keys) => match expr {
                Expression::Array(items) => {
                    let mut out = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        let item_here = format!("`{}[{i}]`", here.trim_matches('`'));
                        let Some(Value::Object(map)) = self.value(item, Ty::StrMap, &item_here) else { return None };
                        if let Some(unknown) = map.keys().find(|k| !keys.contains(&k.as_str())) {
                            let known = keys.join(", ");
                            self.problem(item.span(), &format!("{item_here} has no {unknown:?} (it takes {known})"));
                            return None;
                        }
                        out.push(Value::Object(map));
                    }
                    Some(Value::Array(out))
                }
                _ => wrong(self, "a list of maps: [{ KEY = \"value\" }]"),
            },
            Ty::StrListMap => wrong(self, "a block: header { NAME = [\"value\"] }"),
        }
    }

    /// A string, number or bool as text. A template (`"${NOMAD_PORT_http}"`) is kept as written:
    /// the agent interpolates the runtime variables and node facts in a task's command, args,
    /// entrypoint, image, work_dir, labels and env when the task starts (as Nomad does), and the constraint
    /// attributes Nomad writes as `${attr.x}` are read by name. Anything else is noted.
    /// Variables and functions are refused.
    fn scalar_text(&mut self, expr: &Expression, here: &str) -> Option<String> {
        match expr {
            Expression::String(s) => Some(s.as_str().to_string()),
            Expression::Number(n) => Some(n.to_string()),
            Expression::Bool(b) => Some(b.value().to_string()),
            Expression::StringTemplate(_) => {
                let raw = expr.span().map(|r| &self.text[r]).unwrap_or_default();
                let raw = raw.trim().trim_matches('"').to_string();
                // A service's name and tags are filled in by the job file reader (`services.rs`).
                let interpolated = ["`command`", "`args`", "`entrypoint`", "`image`", "`work_dir`", "`name`", "`tags`"]
                    .contains(&here)
                    || here.starts_with("`env.")
                    || here.starts_with("`labels.");
                if here != "`attribute`" && !(interpolated && names_only_runtime_values(&raw)) {
                    let line = self.line(expr.span());
                    self.notes.push(format!(
                        "line {line}: {here} keeps {raw:?} as written: Helios interpolates only \
                         ${{NOMAD_*}}, ${{node.*}}, ${{attr.*}} and ${{meta.*}}, in a task's command, args, \
                         entrypoint, image, work_dir, labels and env"
                    ));
                }
                Some(raw)
            }
            Expression::HeredocTemplate(h) => Some(h.template.to_string()),
            _ => {
                self.problem(
                    expr.span(),
                    &format!("{here} must be a literal value (variables and functions are not supported)"),
                );
                None
            }
        }
    }
}

/// True if every `${...}` in `text` names what the agent interpolates when a task starts.
/// A whole number as written: `500`, `-1`, or quoted, `"500"`, which Nomad converts where a
/// number is expected. `None`: not a number at all; `Some(None)`: a number, but not a whole one
/// (or one beyond i64).
fn whole_number(expr: &Expression) -> Option<Option<i64>> {
    match expr {
        Expression::Number(n) => Some(n.as_i64()),
        Expression::UnaryOp(op) if *op.operator.value() == hcl_edit::expr::UnaryOperator::Neg => match &op.expr {
            Expression::Number(n) => Some(n.as_i64().map(|v| -v)),
            _ => None,
        },
        Expression::String(s) => {
            let text = s.as_str();
            let numeric =
                !text.is_empty() && text.trim_start_matches('-').bytes().all(|b| b.is_ascii_digit() || b == b'.');
            numeric.then(|| text.parse().ok())
        }
        _ => None,
    }
}

fn names_only_runtime_values(text: &str) -> bool {
    text.split("${").skip(1).all(|rest| {
        rest.split_once('}').is_some_and(|(name, _)| {
            let name = name.trim();
            let plain = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            plain && ["NOMAD_", "HELIOS_", "node.", "attr.", "meta."].iter().any(|p| name.starts_with(p))
        })
    })
}

fn push(object: &mut Map<String, Value>, name: &str, value: Value) {
    let entry = object.entry(name.to_string()).or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(items) = entry {
        items.push(value);
    }
}
