//! docs/api/openapi.json is the API: its paths, methods, operation ids, parameters, bodies,
//! answers and schemas must be exactly those of the route table and the wire types, both ways.

use catenary_api::http::Method;
use catenary_api::routes::{Body, ROUTES};
use catenary_api::types::{schema_samples, RunRequest, StopRequest, UploadCreate};
use serde_json::Value;
use std::collections::BTreeSet;

fn doc() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("docs/api/openapi.json")).expect("openapi.json is JSON")
}

fn schema_ref(v: &Value) -> Option<&str> {
    v["$ref"].as_str()?.strip_prefix("#/components/schemas/")
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Get => "get",
        Method::Post => "post",
        Method::Put => "put",
        Method::Delete => "delete",
    }
}

#[test]
fn openapi_matches_the_implementation() {
    let doc = doc();
    let paths = doc["paths"].as_object().expect("paths");
    // every operation of the document is a route, and every route is in the document
    let mut in_doc = BTreeSet::new();
    for (p, ops) in paths {
        for (m, _) in ops.as_object().unwrap() {
            in_doc.insert((m.clone(), p.clone()));
        }
    }
    let in_code: BTreeSet<(String, String)> = ROUTES.iter().map(|r| (method_name(r.method).to_string(), r.path.to_string())).collect();
    assert_eq!(in_doc, in_code, "operations in openapi.json vs routes::ROUTES");

    for r in ROUTES {
        let op = &paths[r.path][method_name(r.method)];
        let what = format!("{} {}", r.method.as_str(), r.path);
        assert_eq!(op["operationId"], r.operation_id, "{what}: operationId");
        // parameters: the path's {names} and the route's query names
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        let named = |kind: &str| -> BTreeSet<String> { params.iter().filter(|p| p["in"] == kind).map(|p| p["name"].as_str().unwrap().to_string()).collect() };
        let path_params: BTreeSet<String> = r.path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).map(String::from).collect();
        assert_eq!(named("path"), path_params, "{what}: path parameters");
        assert_eq!(named("query"), r.query.iter().map(|s| s.to_string()).collect(), "{what}: query parameters");
        // the body
        let body = &op["requestBody"];
        match r.body {
            Body::None => assert!(body.is_null(), "{what}: takes no body"),
            Body::Json(s) | Body::OptionalJson(s) => {
                assert_eq!(schema_ref(&body["content"]["application/json"]["schema"]), Some(s), "{what}: body schema");
                assert_eq!(body["required"], matches!(r.body, Body::Json(_)), "{what}: body required");
            }
            Body::Bytes => {
                assert!(body["content"]["application/octet-stream"].is_object(), "{what}: bytes body");
                assert_eq!(named("header"), BTreeSet::from(["Chunk-Digest".to_string()]), "{what}: Chunk-Digest header");
            }
        }
        // the answers: the success status with its schema, errors as Error
        let responses = op["responses"].as_object().unwrap();
        let codes: BTreeSet<&str> = responses.keys().map(String::as_str).collect();
        let status = r.status.to_string();
        assert_eq!(codes, BTreeSet::from([status.as_str(), "default"]), "{what}: answers");
        assert_eq!(schema_ref(&responses[&status]["content"]["application/json"]["schema"]), Some(r.response), "{what}: answer schema");
        assert_eq!(schema_ref(&responses["default"]["content"]["application/json"]["schema"]), Some("Error"), "{what}: error schema");
    }

    // schemas: the same names, and each sample's fields are the schema's properties with their types
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let samples = schema_samples();
    let doc_names: BTreeSet<&str> = schemas.keys().map(String::as_str).collect();
    let code_names: BTreeSet<&str> = samples.iter().map(|(n, _)| *n).collect();
    assert_eq!(doc_names, code_names, "schemas in openapi.json vs types::schema_samples");
    // (HealthCheck is in requests too, where only `cmd` is required; answers give every field.)
    let request_types = ["UploadCreate", "RunRequest", "StopRequest", "HealthCheck"];
    for (name, sample) in &samples {
        let s = &schemas[*name];
        let props = s["properties"].as_object().unwrap_or_else(|| panic!("{name}: properties"));
        let fields = sample.as_object().unwrap();
        let pk: BTreeSet<&String> = props.keys().collect();
        let fk: BTreeSet<&String> = fields.keys().collect();
        assert_eq!(pk, fk, "{name}: properties vs fields");
        let required: BTreeSet<&str> = s["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        if !request_types.contains(name) {
            // answers always carry every field
            assert_eq!(required, pk.iter().map(|k| k.as_str()).collect(), "{name}: every field of an answer is required");
        }
        for (k, v) in fields {
            let p = &props[k];
            let ty = match schema_ref(p) {
                Some(r) => {
                    assert!(schemas.contains_key(r), "{name}.{k}: $ref {r}");
                    "object"
                }
                None => p["type"].as_str().unwrap_or_else(|| panic!("{name}.{k}: type")),
            };
            let ok = match v {
                Value::String(_) => ty == "string",
                Value::Number(n) => ty == "integer" && (n.is_u64() || n.is_i64()),
                Value::Bool(_) => ty == "boolean",
                Value::Array(_) => ty == "array",
                Value::Object(_) => ty == "object",
                Value::Null => p["nullable"] == true,
            };
            assert!(ok, "{name}.{k}: {v} is not a {ty}");
        }
    }
    // request bodies: only the required properties are enough, and unknown fields are refused
    let minimal = |name: &str| -> Value {
        let s = &schemas[name];
        let (_, sample) = samples.iter().find(|(n, _)| *n == name).unwrap();
        let mut o = serde_json::Map::new();
        for r in s["required"].as_array().unwrap() {
            let k = r.as_str().unwrap();
            o.insert(k.to_string(), sample[k].clone());
        }
        Value::Object(o)
    };
    serde_json::from_value::<RunRequest>(minimal("RunRequest")).expect("RunRequest with its required fields only");
    serde_json::from_value::<StopRequest>(minimal("StopRequest")).expect("StopRequest with its required fields only");
    serde_json::from_value::<UploadCreate>(minimal("UploadCreate")).expect("UploadCreate with its required fields only");
    let mut extra = minimal("RunRequest");
    extra["colour"] = Value::from(1);
    assert!(serde_json::from_value::<RunRequest>(extra).is_err());
}

/// Every value of `enum` the code can send. Each list is built from the Rust enum that the
/// value comes from; the `match` below each list stops compiling when a variant is added, so
/// that whoever adds it sees this test.
fn values_sent() -> Vec<(&'static str, &'static str, BTreeSet<String>)> {
    use catenary_api::events::EventKind;
    use catenary_api::types::NodeState;
    use catenary_cluster::membership::MemberState;
    use catenary_cluster::put_change::{Fields, PutChange};
    use catenary_workload::logring::Stream;
    use catenary_workload::status::Health;
    use catenary_workload::{ExitStatus, State};

    let exits = [
        ExitStatus::Code(0),
        ExitStatus::Signal(15),
        ExitStatus::InitFailed(127),
        ExitStatus::OomKilled(9),
        ExitStatus::Crashed,
        ExitStatus::PoweredOff,
        ExitStatus::CreateFailed,
        ExitStatus::ThrashKilled(9),
        ExitStatus::Unhealthy(9),
    ];
    for e in exits {
        match e {
            ExitStatus::Code(_) | ExitStatus::Signal(_) | ExitStatus::InitFailed(_) | ExitStatus::OomKilled(_) => {}
            ExitStatus::Crashed | ExitStatus::PoweredOff | ExitStatus::CreateFailed | ExitStatus::ThrashKilled(_) | ExitStatus::Unhealthy(_) => {}
        }
    }
    let streams = [Stream::Stdout, Stream::Stderr, Stream::Init, Stream::Node];
    for s in streams {
        match s {
            Stream::Stdout | Stream::Stderr | Stream::Init | Stream::Node => {}
        }
    }
    let members = [MemberState::Alive, MemberState::Suspect, MemberState::Dead, MemberState::Left];
    for m in members {
        match m {
            MemberState::Alive | MemberState::Suspect | MemberState::Dead | MemberState::Left => {}
        }
    }
    let changes = [PutChange::Created, PutChange::Updated(Fields(Fields::IMAGE)), PutChange::Unchanged];
    for c in changes {
        match c {
            PutChange::Created | PutChange::Updated(_) | PutChange::Unchanged => {}
        }
    }
    let nodes = [NodeState::Up, NodeState::Unreachable, NodeState::Pending, NodeState::Removed];
    for n in nodes {
        match n {
            NodeState::Up | NodeState::Unreachable | NodeState::Pending | NodeState::Removed => {}
        }
    }
    let events = [EventKind::Created, EventKind::State, EventKind::Removed];
    for k in events {
        match k {
            EventKind::Created | EventKind::State | EventKind::Removed => {}
        }
    }
    // (State::ALL is the workload service's own list of every state.)
    for s in State::ALL {
        match s {
            State::Created | State::Starting | State::Running | State::Stopping | State::Exited | State::Failed => {}
        }
    }
    let states: BTreeSet<String> = State::ALL.iter().map(|s| s.name().to_string()).collect();
    // (Health::ALL likewise.)
    for h in Health::ALL {
        match h {
            Health::Unchecked | Health::Starting | Health::Healthy => {}
        }
    }
    let health: BTreeSet<String> = Health::ALL.iter().map(|h| h.name().to_string()).collect();
    vec![
        ("Exit", "how", exits.into_iter().map(|e| catenary_api::types::Exit::from(e).how).collect()),
        ("Workload", "state", states.clone()),
        ("WorkloadSummary", "state", states),
        ("Workload", "health", health.clone()),
        ("WorkloadSummary", "health", health),
        ("Event", "kind", events.into_iter().map(|k| k.name().to_string()).collect()),
        ("LogRecord", "stream", streams.into_iter().map(|s| catenary_api::types::stream_name(s).to_string()).collect()),
        ("Node", "state", nodes.into_iter().map(|n| n.name().to_string()).collect()),
        ("Node", "membership", members.into_iter().map(|m| catenary_cluster::service::state_name(m).to_string()).collect()),
        ("ClusterWorkload", "change", changes.into_iter().map(|c| catenary_api::cluster_state::change_text(c).0.to_string()).collect()),
    ]
}

/// A string property with an `enum` lists exactly the values the code sends (a client
/// generated from the document must not meet a value it was not told of, nor wait for one
/// that never comes).
#[test]
fn openapi_enums_are_the_values_the_code_sends() {
    let doc = doc();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    // every enum property of the document is checked here
    let with_enum: BTreeSet<(String, String)> = schemas
        .iter()
        .flat_map(|(n, s)| s["properties"].as_object().into_iter().flatten().filter(|(_, p)| p.get("enum").is_some()).map(move |(k, _)| (n.clone(), k.clone())))
        .collect();
    let checked: BTreeSet<(String, String)> = values_sent().iter().map(|(s, p, _)| (s.to_string(), p.to_string())).collect();
    assert_eq!(with_enum, checked, "the enum properties of openapi.json vs those this test checks");
    for (schema, prop, sent) in values_sent() {
        let listed: BTreeSet<String> = schemas[schema]["properties"][prop]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{schema}.{prop}: no enum"))
            .iter()
            .map(|v| v.as_str().unwrap_or_else(|| panic!("{schema}.{prop}: {v} is not a string")).to_string())
            .collect();
        assert_eq!(listed, sent, "{schema}.{prop}: openapi.json's enum vs the values the code sends");
    }
}
