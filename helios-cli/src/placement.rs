//! The scores that decided a placement, printed as Nomad's `alloc status -verbose` prints its
//! placement metrics (`alloc status --verbose`, `job plan --verbose`), and their JSON form.

use helios_api::pb;
use serde_json::{json, Value};

use crate::table::Table;

/// The parts of a score, in Nomad's order; only those some candidate has are shown.
const PARTS: [&str; 5] =
    ["binpack", "job-anti-affinity", "node-reschedule-penalty", "node-affinity", "allocation-spread"];

pub fn print(m: &pb::PlacementMetrics) {
    let mut filtered: Vec<(&String, &u32)> = m.nodes_filtered.iter().collect();
    filtered.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let filtered: Vec<String> = filtered.iter().map(|(why, n)| format!("{n} {why}")).collect();
    let filtered = if filtered.is_empty() { String::new() } else { format!("; filtered: {}", filtered.join(", ")) };
    println!("Nodes evaluated: {}{filtered}", m.nodes_evaluated);
    let shown: Vec<&str> =
        PARTS.iter().copied().filter(|p| m.scores.iter().any(|s| s.parts.contains_key(*p))).collect();
    let mut header = vec!["NODE"];
    header.extend(shown.iter().copied());
    header.push("FINAL SCORE");
    let header: Vec<String> = header.iter().map(|h| h.to_uppercase()).collect();
    let mut table = Table::new(&header.iter().map(String::as_str).collect::<Vec<_>>());
    for s in &m.scores {
        let mut row = vec![s.node_id.clone()];
        row.extend(shown.iter().map(|p| s.parts.get(*p).map_or("-".to_string(), |v| format!("{v:.3}"))));
        row.push(format!("{:.3}", s.total));
        table.row(row);
    }
    table.print();
}

pub fn to_json(m: &pb::PlacementMetrics) -> Value {
    let scores: Vec<Value> =
        m.scores.iter().map(|s| json!({ "node_id": s.node_id, "parts": s.parts, "total": s.total })).collect();
    json!({ "nodes_evaluated": m.nodes_evaluated, "nodes_filtered": m.nodes_filtered, "scores": scores })
}
