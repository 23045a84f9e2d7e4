//! The copy-paste examples of `docs/protocol.md`, replayed against a running stack (both modes),
//! so that they cannot rot; every message sent and received is also validated against the
//! committed JSON Schemas (`proto/schema/`).
//!
//! An example is a fenced block opened with ```` ```jsonl example:<name> ````. In it:
//! - `> {...}` is a message the client sends, `< {...}` one the server must send next on that
//!   connection (acks included: the examples wait for each ack before going on);
//! - a name before the arrow (`a> `, `b< `) picks a connection of the example (opened on first
//!   use); no name is the connection `app`;
//! - a string `"<name>"` in an expected message matches any value and binds it to `name` on its
//!   first use; later uses (sent or expected) stand for that value; `"<any>"` matches anything;
//! - expected messages must have exactly the fields shown;
//! - `!>` sends a message that is deliberately outside the contract (an error example): it is
//!   not validated against the schemas;
//! - `#` starts a comment line.
//!
//! Examples share one stack per mode, so each must use its own deviceId(s).

use amr_tests::{both_modes, Mode, Stack, WsClient};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Dir {
    Send,
    Expect,
}

#[derive(Debug)]
struct Line {
    number: usize,
    conn: String,
    dir: Dir,
    json: Value,
    /// `!>`: a message deliberately outside the contract (not validated against the schemas).
    invalid: bool,
}

#[derive(Debug)]
struct Example {
    name: String,
    lines: Vec<Line>,
}

const FENCE: &str = "```jsonl example:";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn examples() -> Vec<Example> {
    let path = workspace_root().join("docs/protocol.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_examples(&text)
}

fn parse_examples(text: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut current: Option<Example> = None;
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let line = raw.trim();
        if let Some(ex) = current.as_mut() {
            if line.starts_with("```") {
                out.extend(current.take());
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let arrow = line
                .find(['>', '<'])
                .unwrap_or_else(|| panic!("docs/protocol.md:{number}: no `>` or `<` in {line}"));
            let (conn, invalid) = match line[..arrow].strip_suffix('!') {
                Some(c) => (c, true),
                None => (&line[..arrow], false),
            };
            assert!(
                conn.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "docs/protocol.md:{number}: bad connection name {conn:?}"
            );
            let dir = if line[arrow..].starts_with('>') {
                Dir::Send
            } else {
                Dir::Expect
            };
            let json: Value = serde_json::from_str(line[arrow + 1..].trim())
                .unwrap_or_else(|e| panic!("docs/protocol.md:{number}: not JSON ({e}): {line}"));
            ex.lines.push(Line {
                number,
                conn: if conn.is_empty() { "app" } else { conn }.to_owned(),
                dir,
                json,
                invalid,
            });
        } else if let Some(name) = line.strip_prefix(FENCE) {
            current = Some(Example {
                name: name.trim().to_owned(),
                lines: Vec::new(),
            });
        }
    }
    assert!(
        current.is_none(),
        "docs/protocol.md: unterminated example block"
    );
    out
}

fn placeholder(v: &Value) -> Option<&str> {
    v.as_str()?.strip_prefix('<')?.strip_suffix('>')
}

/// Replaces every bound placeholder in a message to send.
fn substitute(v: &Value, bound: &HashMap<String, Value>, at: usize) -> Value {
    if let Some(name) = placeholder(v) {
        return bound.get(name).cloned().unwrap_or_else(|| {
            panic!("docs/protocol.md:{at}: placeholder <{name}> used before it is bound")
        });
    }
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), substitute(x, bound, at)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute(x, bound, at)).collect()),
        other => other.clone(),
    }
}

/// Matches `actual` against `expected`, binding placeholders. Returns why it does not match.
fn matches(
    expected: &Value,
    actual: &Value,
    bound: &mut HashMap<String, Value>,
    path: &str,
) -> Result<(), String> {
    if let Some(name) = placeholder(expected) {
        if name == "any" {
            return Ok(());
        }
        return match bound.get(name) {
            Some(v) if v == actual => Ok(()),
            Some(v) => Err(format!("{path}: <{name}> is {v}, got {actual}")),
            None => {
                bound.insert(name.to_owned(), actual.clone());
                Ok(())
            }
        };
    }
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let ek: BTreeSet<&String> = e.keys().collect();
            let ak: BTreeSet<&String> = a.keys().collect();
            if ek != ak {
                return Err(format!("{path}: fields {ak:?}, expected {ek:?}"));
            }
            for (k, ev) in e {
                matches(ev, &a[k], bound, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                matches(ev, av, bound, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (e, a) if e == a => Ok(()),
        (e, a) => Err(format!("{path}: expected {e}, got {a}")),
    }
}

/// The committed schemas, by `<direction>/<type>`.
struct Schemas(BTreeMap<String, jsonschema::Validator>);

impl Schemas {
    fn load() -> Schemas {
        let dir = workspace_root().join("proto/schema");
        let mut map = BTreeMap::new();
        for sub in ["client", "server"] {
            let entries = std::fs::read_dir(dir.join(sub))
                .unwrap_or_else(|e| panic!("cannot list proto/schema/{sub}: {e}"));
            for e in entries.flatten() {
                let p = e.path();
                let text = std::fs::read_to_string(&p).expect("readable schema");
                let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
                let ty = schema["properties"]["type"]["const"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{} has no type const", p.display()))
                    .to_owned();
                let v = jsonschema::validator_for(&schema)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                map.insert(format!("{sub}/{ty}"), v);
            }
        }
        assert!(map.len() >= 12, "schemas found: {:?}", map.keys());
        Schemas(map)
    }

    fn check(&self, sub: &str, msg: &Value, at: usize) {
        let ty = msg["type"].as_str().unwrap_or("<no type>");
        let key = format!("{sub}/{ty}");
        let v = self
            .0
            .get(&key)
            .unwrap_or_else(|| panic!("docs/protocol.md:{at}: no schema {key} for {msg}"));
        let errors: Vec<String> = v.iter_errors(msg).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "docs/protocol.md:{at}: {msg} does not validate against proto/schema/{key}.json: {errors:?}"
        );
    }
}

/// Replays one example; records `<direction>/<type>` of every message validated.
async fn replay(stack: &Stack, ex: &Example, schemas: &Schemas, seen: &mut BTreeSet<String>) {
    let mut conns: BTreeMap<String, WsClient> = BTreeMap::new();
    let mut bound: HashMap<String, Value> = HashMap::new();
    for line in &ex.lines {
        if !conns.contains_key(&line.conn) {
            conns.insert(line.conn.clone(), stack.client(0).await);
        }
        let client = conns.get_mut(&line.conn).expect("opened above");
        match line.dir {
            Dir::Send => {
                let msg = substitute(&line.json, &bound, line.number);
                if !line.invalid {
                    schemas.check("client", &msg, line.number);
                    seen.insert(format!("client/{}", msg["type"].as_str().unwrap_or("")));
                }
                client.send_json(&msg).await;
            }
            Dir::Expect => {
                let (_, text) = client.recv_with_text().await;
                let got: Value = serde_json::from_str(&text).expect("server sends JSON");
                schemas.check("server", &got, line.number);
                seen.insert(format!("server/{}", got["type"].as_str().unwrap_or("")));
                if let Err(why) = matches(&line.json, &got, &mut bound, "") {
                    panic!(
                        "example {} (docs/protocol.md:{}), connection {}: {why}\n  expected {}\n  got      {}",
                        ex.name, line.number, line.conn, line.json, got
                    );
                }
            }
        }
    }
    for (_, c) in conns {
        c.close().await;
    }
}

/// Every deviceId an example uses (examples share a stack, so they must not share devices).
fn devices(ex: &Example) -> BTreeSet<String> {
    ex.lines
        .iter()
        .filter_map(|l| l.json.get("deviceId").and_then(Value::as_str))
        .filter(|d| !d.starts_with('<'))
        .map(str::to_owned)
        .collect()
}

async fn protocol_md_examples_replay(mode: Mode) {
    let examples = examples();
    assert!(
        examples.len() >= 5,
        "docs/protocol.md has {} examples",
        examples.len()
    );
    let mut names = BTreeSet::new();
    let mut seen_devices = BTreeSet::new();
    for ex in &examples {
        assert!(names.insert(ex.name.clone()), "example {} twice", ex.name);
        assert!(
            ex.lines.iter().any(|l| l.dir == Dir::Expect),
            "example {} expects nothing",
            ex.name
        );
        for d in devices(ex) {
            assert!(
                seen_devices.insert(d.clone()),
                "example {} reuses deviceId {d}",
                ex.name
            );
        }
    }
    let schemas = Schemas::load();
    let stack = Stack::start_mode(mode).await;
    let mut seen = BTreeSet::new();
    for ex in &examples {
        replay(&stack, ex, &schemas, &mut seen).await;
    }
    // The examples show every message type of the contract, in both directions.
    let all: BTreeSet<String> = schemas.0.keys().cloned().collect();
    let missing: Vec<&String> = all.difference(&seen).collect();
    assert!(missing.is_empty(), "no example shows {missing:?}");
}
both_modes!(protocol_md_examples_replay);

#[test]
fn matcher_binds_and_checks_placeholders() {
    let mut bound = HashMap::new();
    let e: Value = serde_json::from_str(r#"{"a":"<x>","b":"<any>","c":[1,"<x>"]}"#).unwrap();
    let ok: Value = serde_json::from_str(r#"{"a":"s1","b":5,"c":[1,"s1"]}"#).unwrap();
    assert!(matches(&e, &ok, &mut bound, "").is_ok());
    assert_eq!(bound["x"], Value::from("s1"));
    let mut fresh = HashMap::new();
    let bad: Value = serde_json::from_str(r#"{"a":"s1","b":5,"c":[1,"s2"]}"#).unwrap();
    assert!(matches(&e, &bad, &mut fresh, "").is_err());
    let extra: Value = serde_json::from_str(r#"{"a":"s1","b":5,"c":[1,"s1"],"d":0}"#).unwrap();
    assert!(matches(&e, &extra, &mut HashMap::new(), "").is_err());
    let sent = substitute(
        &serde_json::from_str(r#"{"sessionId":"<x>"}"#).unwrap(),
        &bound,
        0,
    );
    assert_eq!(sent["sessionId"], Value::from("s1"));
}

#[test]
fn example_blocks_are_parsed() {
    let text = "intro\n```jsonl example:t\n# comment\n> {\"type\":\"ping\"}\nx!> {\"type\":\"nope\"}\nb< {\"type\":\"pong\",\"timestamp\":\"<any>\"}\n```\n";
    let ex = parse_examples(text);
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].name, "t");
    assert_eq!(ex[0].lines.len(), 3);
    assert_eq!(ex[0].lines[0].conn, "app");
    assert_eq!(ex[0].lines[0].dir, Dir::Send);
    assert!(!ex[0].lines[0].invalid);
    assert_eq!(ex[0].lines[1].conn, "x");
    assert!(ex[0].lines[1].invalid);
    assert_eq!(ex[0].lines[2].conn, "b");
    assert_eq!(ex[0].lines[2].dir, Dir::Expect);
}
