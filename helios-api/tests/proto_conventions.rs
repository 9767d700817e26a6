//! The API's conventions (Google's API design guide, as issue 16 asks), checked over the
//! compiled descriptor set so that they stay: every service and RPC says what it does, and every
//! field of the public API what it holds; every
//! public RPC has a request and a response message of its own; every enum's zero value is
//! `<ENUM>_UNSPECIFIED` and its values carry the enum's prefix; a request names the resource it
//! acts on `name` (jobs, policies, services), `id` (allocations, nodes, deployments, servers) or
//! `accessor_id` (tokens); and a closed set of values is an enum, not a string.

use std::collections::{BTreeMap, BTreeSet};

use helios_api::pb::FILE_DESCRIPTOR_SET;
use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};

/// Services between Helios's own processes (servers, agents), not for users: their messages
/// follow their transport (bincode payloads, the agent protocol), not the public conventions.
const INTERNAL_SERVICES: [&str; 3] = ["RaftPeer", "AgentService", "ClientService"];

/// String fields that still hold a closed set of values, each with why. The list only
/// shrinks: the test fails on a new one (a field named as a closed set, `names_a_closed_set`),
/// and on one listed that is no longer a string.
const STILL_STRINGS: [(&str, &str); 2] =
    [("AllocationUpdate.client_status", AGENT_PROTOCOL), ("CreateAclTokenRequest.type", READ_BY_OLDER_SERVERS)];

/// Integer times (`*_ms`, `*_secs`) still in the public API, each with why; every other time is
/// a `google.protobuf.Timestamp` or `Duration`. The list only shrinks, as `STILL_STRINGS`.
const STILL_INTEGER_TIMES: [(&str, &str); 1] = [("CreateAclTokenRequest.ttl_ms", READ_BY_OLDER_SERVERS)];

/// In the agent protocol's own messages, whose wire format agents of every build share.
const AGENT_PROTOCOL: &str = "the agent protocol's wire format";
/// In a request: a server of the previous build would drop a replacing field unseen during a
/// rolling upgrade (and, for a token, make a client token of a management one, or one that never
/// expires), so the request keeps the field it reads.
const READ_BY_OLDER_SERVERS: &str = "a request older servers must read";

/// Field names that hold a closed set of values wherever they appear.
fn names_a_closed_set(field: &str) -> bool {
    matches!(field, "status" | "state" | "role" | "operator" | "eligibility" | "trigger" | "type" | "kind" | "mode")
        || field.ends_with("_status")
}

fn descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("the compiled descriptor set decodes")
}

fn helios_files() -> Vec<FileDescriptorProto> {
    let files: Vec<_> =
        descriptor_set().file.into_iter().filter(|f| f.package.as_deref() == Some("helios.v1")).collect();
    assert!(files.len() >= 7, "every Helios proto file is in the set: {}", files.len());
    files
}

/// The source locations (paths into the file's descriptor) that carry a comment.
fn commented(file: &FileDescriptorProto) -> BTreeSet<Vec<i32>> {
    let info = file.source_code_info.as_ref().expect("the descriptor set keeps source info (comments)");
    info.location
        .iter()
        .filter(|l| {
            let leading = l.leading_comments.as_deref().unwrap_or_default().trim();
            let trailing = l.trailing_comments.as_deref().unwrap_or_default().trim();
            !leading.is_empty() || !trailing.is_empty()
        })
        .map(|l| l.path.clone())
        .collect()
}

// Field numbers of FileDescriptorProto and ServiceDescriptorProto, for source locations.
const FILE_SERVICES: i32 = 6;
const SERVICE_METHODS: i32 = 2;
const FILE_MESSAGES: i32 = 4;
const MESSAGE_FIELDS: i32 = 2;
const MESSAGE_NESTED: i32 = 3;

/// The files of the public API (the others are between Helios's own processes).
const PUBLIC_FILES: [&str; 4] =
    ["helios/v1/api.proto", "helios/v1/acl.proto", "helios/v1/events.proto", "helios/v1/types.proto"];

/// Every message, nested ones too, but protoc's map entries.
fn every_message(messages: &[DescriptorProto]) -> Vec<&DescriptorProto> {
    let mut all = Vec::new();
    for message in messages.iter().filter(|m| !m.options.as_ref().is_some_and(|o| o.map_entry())) {
        all.push(message);
        all.extend(every_message(&message.nested_type));
    }
    all
}

fn short(type_name: &str) -> &str {
    type_name.trim_start_matches(".helios.v1.")
}

#[test]
fn every_service_and_rpc_says_what_it_does() {
    let mut silent = Vec::new();
    for file in helios_files() {
        let commented = commented(&file);
        for (s, service) in file.service.iter().enumerate() {
            if !commented.contains(&vec![FILE_SERVICES, s as i32]) {
                silent.push(service.name().to_string());
            }
            for (m, method) in service.method.iter().enumerate() {
                let path = vec![FILE_SERVICES, s as i32, SERVICE_METHODS, m as i32];
                if !commented.contains(&path) {
                    silent.push(format!("{}.{}", service.name(), method.name()));
                }
            }
        }
    }
    assert!(silent.is_empty(), "services and RPCs without a comment: {silent:?}");
}

#[test]
fn every_public_field_says_what_it_holds() {
    fn walk(messages: &[DescriptorProto], at: Vec<i32>, commented: &BTreeSet<Vec<i32>>, silent: &mut Vec<String>) {
        for (i, message) in messages.iter().enumerate() {
            // A map's entry message is protoc's, not ours: the map field says what it holds.
            if message.options.as_ref().is_some_and(|o| o.map_entry()) {
                continue;
            }
            let mut path = at.clone();
            path.push(i as i32);
            for (f, field) in message.field.iter().enumerate() {
                let mut field_path = path.clone();
                field_path.extend([MESSAGE_FIELDS, f as i32]);
                if !commented.contains(&field_path) {
                    silent.push(format!("{}.{}", message.name(), field.name()));
                }
            }
            let mut nested = path.clone();
            nested.push(MESSAGE_NESTED);
            walk(&message.nested_type, nested, commented, silent);
        }
    }
    let mut silent = Vec::new();
    let public: Vec<_> = helios_files().into_iter().filter(|f| PUBLIC_FILES.contains(&f.name())).collect();
    assert_eq!(public.len(), PUBLIC_FILES.len());
    for file in public {
        walk(&file.message_type, vec![FILE_MESSAGES], &commented(&file), &mut silent);
    }
    assert!(silent.is_empty(), "fields without a comment: {silent:?}");
}

#[test]
fn every_public_rpc_has_its_own_request_and_response() {
    let mut uses: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut misnamed = Vec::new();
    for file in helios_files() {
        for service in file.service.iter().filter(|s| !INTERNAL_SERVICES.contains(&s.name())) {
            for method in &service.method {
                let rpc = format!("{}.{}", service.name(), method.name());
                let (input, output) = (short(method.input_type()), short(method.output_type()));
                uses.entry(input.to_string()).or_default().push(rpc.clone());
                uses.entry(output.to_string()).or_default().push(rpc.clone());
                // A stream's messages may be named for what they carry (EventBatch).
                if !method.client_streaming() && !input.ends_with("Request") {
                    misnamed.push(format!("{rpc} takes {input}"));
                }
                if !method.server_streaming() && !output.ends_with("Response") {
                    misnamed.push(format!("{rpc} returns {output}"));
                }
            }
        }
    }
    let shared: Vec<_> = uses.iter().filter(|(_, rpcs)| rpcs.len() > 1).collect();
    assert!(shared.is_empty(), "messages used by more than one RPC: {shared:?}");
    assert!(misnamed.is_empty(), "{misnamed:?}");
}

/// `NodeStatus` -> `NODE_STATUS`.
fn upper_snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[test]
fn every_enum_starts_unspecified_and_prefixes_its_values() {
    let mut wrong = Vec::new();
    let mut enums = 0;
    for file in helios_files() {
        let nested = file.message_type.iter().flat_map(|m| m.enum_type.iter());
        for e in file.enum_type.iter().chain(nested) {
            enums += 1;
            let prefix = upper_snake(e.name());
            let zero = e.value.iter().find(|v| v.number() == 0).map(|v| v.name().to_string());
            if zero.as_deref() != Some(&format!("{prefix}_UNSPECIFIED")) {
                wrong.push(format!("{}: zero value {zero:?}", e.name()));
            }
            for v in &e.value {
                if !v.name().starts_with(&format!("{prefix}_")) {
                    wrong.push(format!("{}: {}", e.name(), v.name()));
                }
            }
        }
    }
    assert!(enums >= 14, "the enums are found: {enums}");
    assert!(wrong.is_empty(), "{wrong:?}");
}

#[test]
fn a_request_names_its_resource_name_id_or_accessor_id() {
    let messages: BTreeMap<String, DescriptorProto> =
        helios_files().into_iter().flat_map(|f| f.message_type).map(|m| (m.name().to_string(), m)).collect();
    let mut wrong = Vec::new();
    for file in helios_files() {
        for service in file.service.iter().filter(|s| !INTERNAL_SERVICES.contains(&s.name())) {
            for method in service.method.iter().filter(|m| !m.name().starts_with("List")) {
                let input = &messages[short(method.input_type())];
                // The resource a call acts on is its first field, when that is a key (a string or
                // a number); a call that takes a whole resource (SubmitJob) or none is not one.
                let Some(first) = input.field.iter().find(|f| f.number() == 1) else { continue };
                let key = matches!(first.r#type(), prost_types::field_descriptor_proto::Type::String)
                    || matches!(first.r#type(), prost_types::field_descriptor_proto::Type::Uint64);
                if key && !["name", "id", "accessor_id"].contains(&first.name()) {
                    wrong.push(format!("{}.{}: {}", service.name(), method.name(), first.name()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "requests whose resource key is not name, id or accessor_id: {wrong:?}");
}

#[test]
fn closed_sets_of_values_are_enums() {
    use prost_types::field_descriptor_proto::Type;
    let listed: BTreeSet<String> = STILL_STRINGS.iter().map(|(field, _why)| field.to_string()).collect();
    let mut strings = BTreeSet::new();
    for file in helios_files() {
        for message in every_message(&file.message_type) {
            for field in message.field.iter().filter(|f| f.r#type() == Type::String) {
                let name = format!("{}.{}", message.name(), field.name());
                if names_a_closed_set(field.name()) || listed.contains(&name) {
                    strings.insert(name);
                }
            }
        }
    }
    let new: Vec<_> = strings.difference(&listed).collect();
    assert!(new.is_empty(), "closed sets of values as strings (make them enums): {new:?}");
    let gone: Vec<_> = listed.difference(&strings).collect();
    assert!(gone.is_empty(), "listed as strings but no longer are (take them off the list): {gone:?}");
}

#[test]
fn times_are_timestamps_and_durations() {
    use prost_types::field_descriptor_proto::Type;
    let mut integers = BTreeSet::new();
    for file in helios_files().into_iter().filter(|f| PUBLIC_FILES.contains(&f.name())) {
        for message in every_message(&file.message_type) {
            for field in &message.field {
                let integer = matches!(field.r#type(), Type::Uint64 | Type::Int64 | Type::Uint32 | Type::Int32);
                if integer && (field.name().ends_with("_ms") || field.name().ends_with("_secs")) {
                    integers.insert(format!("{}.{}", message.name(), field.name()));
                }
            }
        }
    }
    let listed: BTreeSet<String> = STILL_INTEGER_TIMES.iter().map(|(field, _why)| field.to_string()).collect();
    let new: Vec<_> = integers.difference(&listed).collect();
    assert!(new.is_empty(), "times as integers (make them Timestamp or Duration): {new:?}");
    let gone: Vec<_> = listed.difference(&integers).collect();
    assert!(gone.is_empty(), "listed as integer times but no longer are (take them off the list): {gone:?}");
}

/// What marks a message or enum of the public files that agents of other builds also decode.
const SHARED_MARK: &str = "Shared with agents";

/// The public API's messages and enums that the agent protocol embeds (through helios.agent.v1,
/// or AgentService's and ClientService's own messages) are also read by agents of other builds,
/// so they may change only as protobuf allows between builds: each says so in its comment,
/// where whoever edits it sees it. A new reference from the agent protocol fails here until the
/// type it reaches is marked.
#[test]
fn public_types_the_agent_protocol_embeds_say_they_are_shared() {
    let set = descriptor_set();
    let mut types: BTreeMap<String, (&FileDescriptorProto, Vec<i32>, Vec<String>)> = BTreeMap::new();
    for file in &set.file {
        let package = file.package();
        for (i, message) in file.message_type.iter().enumerate() {
            let mut refs = Vec::new();
            collect_refs(message, &mut refs);
            types.insert(format!(".{package}.{}", message.name()), (file, vec![FILE_MESSAGES, i as i32], refs));
        }
        for (i, e) in file.enum_type.iter().enumerate() {
            types.insert(format!(".{package}.{}", e.name()), (file, vec![FILE_ENUMS, i as i32], Vec::new()));
        }
    }
    // From every agent message, and every request and answer of the services agents use.
    let mut todo: Vec<String> = types.keys().filter(|name| name.starts_with(".helios.agent.v1.")).cloned().collect();
    for file in &set.file {
        for service in file.service.iter().filter(|s| matches!(s.name(), "AgentService" | "ClientService")) {
            for method in &service.method {
                todo.extend([method.input_type().to_string(), method.output_type().to_string()]);
            }
        }
    }
    let mut seen = BTreeSet::new();
    let mut unmarked = Vec::new();
    while let Some(name) = todo.pop() {
        // A nested type (a oneof's message, a map entry) belongs to its outer message.
        let outer = types.keys().filter(|t| name == **t || name.starts_with(&format!("{t}."))).max_by_key(|t| t.len());
        let Some(outer) = outer.cloned() else { continue };
        if !seen.insert(outer.clone()) {
            continue;
        }
        let (file, path, refs) = &types[&outer];
        todo.extend(refs.iter().cloned());
        if PUBLIC_FILES.contains(&file.name()) && !leading_comment(file, path).contains(SHARED_MARK) {
            unmarked.push(short(&outer).to_string());
        }
    }
    assert!(unmarked.is_empty(), "public types agents decode, whose comment lacks {SHARED_MARK:?}: {unmarked:?}");
}

const FILE_ENUMS: i32 = 5;

/// The types a message's fields (and its nested messages' fields) refer to.
fn collect_refs(message: &DescriptorProto, refs: &mut Vec<String>) {
    refs.extend(message.field.iter().filter(|f| !f.type_name().is_empty()).map(|f| f.type_name().to_string()));
    for nested in &message.nested_type {
        collect_refs(nested, refs);
    }
}

fn leading_comment(file: &FileDescriptorProto, path: &[i32]) -> String {
    let info = file.source_code_info.as_ref().expect("source info");
    info.location.iter().find(|l| l.path == path).and_then(|l| l.leading_comments.clone()).unwrap_or_default()
}
