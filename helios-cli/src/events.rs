//! `helios-cli events`: the cluster's event stream as it happens (Nomad's event stream), one line
//! per event, or one JSON document per line with `--json`. A stream cut by a server that stops
//! resumes on another server from the next index, missing nothing.

use anyhow::{anyhow, bail, Result};
use helios_api::convert::Label;
use helios_api::pb;
use helios_api::pb::event_service_client::EventServiceClient;
use helios_core::events::Topic;
use serde_json::{json, Value};

use crate::connect::{status_error, Servers};

#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// Follow a topic: Job, Allocation, Node, Evaluation or Deployment, all its events or,
    /// with `:KEY`, those of one job (by name), node or object (by id). Repeat for more; none:
    /// every topic.
    #[arg(long = "topic", value_name = "TOPIC[:KEY]", value_parser = parse_topic)]
    topics: Vec<(Topic, Option<String>)>,
    /// Start at this log index (a batch's index + 1 continues after it); default: from now.
    #[arg(long)]
    from_index: Option<u64>,
    /// Each event as one line of JSON.
    #[arg(long)]
    json: bool,
}

/// `TOPIC` or `TOPIC:KEY` (a key may hold ':' itself, as `NAME:VERSION` job ids do).
fn parse_topic(text: &str) -> Result<(Topic, Option<String>), String> {
    let (topic, key) = match text.split_once(':') {
        Some((topic, "")) => return Err(format!("{topic}: the key after ':' is empty")),
        Some((topic, key)) => (topic, Some(key.to_string())),
        None => (text, None),
    };
    Ok((Topic::parse(topic)?, key))
}

pub async fn run(servers: &Servers, args: EventsArgs) -> Result<()> {
    let topics: Vec<pb::TopicFilter> = args
        .topics
        .iter()
        .map(|(topic, key)| pb::TopicFilter {
            topic: helios_api::convert::topic_to_pb(*topic) as i32,
            keys: key.iter().cloned().collect(),
        })
        .collect();
    let mut from = args.from_index;
    loop {
        let mut client =
            EventServiceClient::new(servers.connect().await?).max_decoding_message_size(crate::connect::MAX_RESPONSE);
        let request = pb::SubscribeRequest { topics: topics.clone(), from_index: from };
        let mut stream = client.subscribe(request).await.map_err(status_error)?.into_inner();
        loop {
            match stream.message().await {
                Ok(Some(batch)) => {
                    for event in &batch.events {
                        print_event(event, args.json)?;
                    }
                    from = Some(batch.index + 1);
                }
                Ok(None) => bail!("the server ended the event stream"),
                // A server that stops (or is gone): resume where this one stopped, on another.
                Err(status) if resumable(&status) && from.is_some() => {
                    eprintln!("==> {}; resuming from index {}", status.message(), from.unwrap_or_default());
                    break;
                }
                Err(status) => return Err(status_error(status)),
            }
        }
    }
}

/// Whether a stream that ended with `status` may go on elsewhere.
fn resumable(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal)
}

fn print_event(event: &pb::Event, json: bool) -> Result<()> {
    let topic = pb::EventTopic::try_from(event.topic)
        .ok()
        .and_then(helios_api::convert::topic_from_pb)
        .ok_or_else(|| anyhow!("the server sent an event of unknown topic {}", event.topic))?;
    let kind = match pb::EventType::try_from(event.r#type) {
        Ok(pb::EventType::Deleted) => "deleted",
        _ => "upserted",
    };
    if json {
        let mut doc = json!({ "index": event.index, "topic": topic.as_str(), "type": kind, "key": event.key });
        if let Some((name, payload)) = payload_json(event.payload.as_ref()) {
            doc[name] = payload;
        }
        println!("{doc}");
    } else {
        println!("{:>8}  {:<10}  {:<8}  {}  {}", event.index, topic.as_str(), kind, event.key, summary(event));
    }
    Ok(())
}

/// One line about the object, as it was written.
fn summary(event: &pb::Event) -> String {
    use pb::event::Payload;
    match &event.payload {
        Some(Payload::Job(j)) => {
            let status = crate::job::status_name(j.status, j.stopped);
            format!("version {} {status}", j.version)
        }
        Some(Payload::Allocation(a)) => {
            format!(
                "{} on {}: desired {}, {}",
                a.name,
                a.node_id,
                a.desired_status().label(),
                a.client_status().label()
            )
        }
        Some(Payload::Node(n)) => {
            let drain = if n.drain { ", draining" } else { "" };
            format!("{} {}{drain}", n.status().label(), n.eligibility().label())
        }
        Some(Payload::Evaluation(e)) => format!("{}: {} ({})", e.job_name, e.status().label(), e.trigger().label()),
        Some(Payload::Deployment(d)) => {
            let status = crate::deployment::status_name(d.status);
            format!("{} version {}: {status} {}", d.job_name, d.job_version, d.status_description)
        }
        None => String::new(),
    }
}

fn payload_json(payload: Option<&pb::event::Payload>) -> Option<(&'static str, Value)> {
    use pb::event::Payload;
    Some(match payload? {
        Payload::Job(j) => ("job", crate::json::job(j)),
        Payload::Allocation(a) => ("allocation", crate::json::allocation(a)),
        Payload::Node(n) => ("node", crate::json::node(n)),
        Payload::Evaluation(e) => ("evaluation", crate::json::evaluation(e)),
        Payload::Deployment(d) => ("deployment", crate::deployment::deployment_json(d)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_is_named_alone_or_with_a_key() {
        assert_eq!(parse_topic("job"), Ok((Topic::Job, None)));
        assert_eq!(parse_topic("Job:web:3"), Ok((Topic::Job, Some("web:3".to_string()))));
        assert!(parse_topic("Job:").unwrap_err().contains("empty"));
        assert!(parse_topic("jobs").unwrap_err().contains("unknown topic"));
    }
}
