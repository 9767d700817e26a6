//! Job files: `helios-cli job run|validate FILE` in TOML, JSON or HCL (Nomad's jobspec). Every
//! format becomes a `spec::JobSpec`, then a `Job`; what cannot be read is reported with its line
//! (TOML, JSON, HCL) or field path, and nothing is silently dropped.

pub mod export;
mod hcl;
mod services;
pub mod spec;

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use helios_core::Job;

use spec::JobSpec;

/// The formats a job file may be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
    /// Nomad's jobspec.
    Hcl,
}

impl Format {
    /// By extension: `.toml`, `.json`, `.hcl` or `.nomad`.
    pub fn of(path: &Path) -> Result<Format> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Ok(Format::Toml),
            Some("json") => Ok(Format::Json),
            Some("hcl" | "nomad") => Ok(Format::Hcl),
            _ => bail!("{}: unknown job file format (expected .toml, .json, .hcl or .nomad)", path.display()),
        }
    }
}

/// A parsed job file: the job, and notes about what it declared that Helios ignores.
pub struct JobFile {
    pub job: Job,
    pub notes: Vec<String>,
}

/// Reads and checks the job file at `path` (the same checks the servers make).
pub fn load(path: &Path) -> Result<JobFile> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    parse(&text, Format::of(path)?).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Parses a job file's text and validates the job it declares.
pub fn parse(text: &str, format: Format) -> Result<JobFile> {
    let mut hcl_notes = Vec::new();
    let spec: JobSpec = match format {
        Format::Toml => toml::from_str(text).map_err(|e| anyhow!("{}", toml_error(text, &e)))?,
        Format::Json => serde_json::from_str(text)
            .map_err(|e| anyhow!("line {}, column {}: {}", e.line(), e.column(), json_message(&e)))?,
        // The walk checked every name and type with its line; what remains cannot fail but is
        // still reported rather than assumed.
        Format::Hcl => {
            let (json, notes) = hcl::to_json(text).map_err(|p| anyhow!("{}", p.join("; ")))?;
            hcl_notes = notes;
            serde_json::from_value(json).map_err(|e| anyhow!("{e}"))?
        }
    };
    let (job, mut notes) = spec.to_job().map_err(|p| anyhow!("{}", p.0.join("; ")))?;
    notes.extend(hcl_notes);
    // The servers' paths (task_groups[0].tasks[0]) in the file's words (group[0].task[0]).
    job.validate().map_err(|e| {
        anyhow!(
            "{}",
            e.to_string()
                .replace("task_groups[", "group[")
                .replace(".tasks[", ".task[")
                .replace(".services[", ".service[")
                .replace(".checks[", ".check[")
        )
    })?;
    Ok(JobFile { job, notes })
}

/// `line N: message` from the TOML parser's multi-line report.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    match e.span() {
        Some(span) => format!("line {}: {message}", text[..span.start.min(text.len())].matches('\n').count() + 1),
        None => message.to_string(),
    }
}

/// serde_json appends " at line L column C" itself; the caller says it first.
fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    text.split(" at line ").next().unwrap_or(&text).to_string()
}

#[cfg(test)]
mod tests;
