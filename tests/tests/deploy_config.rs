//! The Kubernetes manifests in `deploy/` against the binaries they run.
//!
//! For every overlay (`deploy/overlays/*`), rendered with `kubectl kustomize`:
//! - the `AMR_*` variables in each binary's container env (explicit `env` plus every key of
//!   the ConfigMaps and Secrets in `envFrom`) are exactly the ones the binary accepts, read
//!   from its clap definition: a new option without a manifest entry fails, and so does a
//!   manifest entry no binary reads;
//! - the gateway gets time to drain: `terminationGracePeriodSeconds` > preStop sleep +
//!   `AMR_DRAIN_TIMEOUT`;
//! - probes, security context and resources are where a platform engineer expects them;
//! - every Service, PodDisruptionBudget, NetworkPolicy and HPA selects an existing workload.
//!
//! kubectl: `AMR_KUBECTL`, else `kubectl` on the PATH (`deploy/check.sh` installs a pinned
//! one). Without any, the overlays are read with a small built-in reader of the parts of
//! kustomize they use (resources, ConfigMap generators); under CI (`CI` set) a missing
//! kubectl fails instead.

use clap::CommandFactory;
use serde::Deserialize;
use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Variables in the manifests that `amr-gateway` does not accept yet (an option being added
/// on another branch). The test fails when one of them becomes accepted, so that this list
/// empties itself out; it is empty on main.
const PENDING_GATEWAY: &[&str] = &[];

/// One binary as deployed: its Deployment, its container, and what it accepts.
struct Binary {
    deployment: &'static str,
    container: &'static str,
    accepted: BTreeSet<String>,
    pending: &'static [&'static str],
}

fn binaries() -> Vec<Binary> {
    vec![
        Binary {
            deployment: "amr-gateway",
            container: "gateway",
            accepted: accepted_env(amr_gateway::config::Config::command()),
            pending: PENDING_GATEWAY,
        },
        Binary {
            deployment: "amr-session-service",
            container: "session-service",
            accepted: accepted_env(amr_session_service::config::Config::command()),
            pending: &[],
        },
    ]
}

/// The `AMR_*` variables of a clap command (every option has one).
fn accepted_env(cmd: clap::Command) -> BTreeSet<String> {
    cmd.get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .filter(|n| n.starts_with("AMR_"))
        .collect()
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn overlays() -> Vec<PathBuf> {
    let dir = deploy_dir().join("overlays");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("kustomization.yaml").is_file())
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no overlay in {}", dir.display());
    found
}

// ---------------------------------------------------------------- rendering

/// Every overlay with its objects, rendered once per test process.
fn rendered() -> &'static [(PathBuf, Vec<Value>)] {
    static RENDERED: OnceLock<Vec<(PathBuf, Vec<Value>)>> = OnceLock::new();
    RENDERED.get_or_init(|| {
        overlays()
            .into_iter()
            .map(|o| {
                let objects = render(&o);
                (o, objects)
            })
            .collect()
    })
}

/// The objects of an overlay, rendered by kubectl or, without it, by [`mini_kustomize`].
fn render(overlay: &Path) -> Vec<Value> {
    let kubectl = std::env::var("AMR_KUBECTL").unwrap_or_else(|_| "kubectl".to_owned());
    match Command::new(&kubectl)
        .arg("kustomize")
        .arg(overlay)
        .output()
    {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8(out.stdout).expect("kubectl output is UTF-8");
            parse_docs(&text, overlay)
        }
        Ok(out) => panic!(
            "`{kubectl} kustomize {}` failed: {}",
            overlay.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "kubectl not found ({kubectl}: {e}) and CI is set: run deploy/check.sh first \
                 (it installs a pinned kubectl) and export AMR_KUBECTL"
            );
            eprintln!(
                "NOTE: {kubectl} not runnable ({e}); reading {} with the built-in reader \
                 (resources and ConfigMap generators only; patches are not applied)",
                overlay.display()
            );
            mini_kustomize(overlay)
        }
    }
}

fn parse_docs(text: &str, origin: &Path) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("YAML of {}: {e}", origin.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// What the manifests need of kustomize when kubectl is absent: resource files and
/// directories (recursively), ConfigMap generators (`envs`, `literals`, `files`;
/// `behavior: merge|replace`) and `images`. Generated names keep no hash suffix; patches are
/// skipped (none of ours touches an env).
fn mini_kustomize(dir: &Path) -> Vec<Value> {
    let k: Value = serde_norway::from_str(&read(&dir.join("kustomization.yaml")))
        .unwrap_or_else(|e| panic!("{}/kustomization.yaml: {e}", dir.display()));
    let mut objects = Vec::new();
    for r in seq(&k, "resources") {
        let path = dir.join(r.as_str().expect("resource is a path"));
        if path.is_dir() {
            objects.extend(mini_kustomize(&path));
        } else {
            objects.extend(parse_docs(&read(&path), &path));
        }
    }
    for g in seq(&k, "configMapGenerator") {
        let name = str_at(g, &["name"])
            .expect("generator has a name")
            .to_owned();
        let mut data = BTreeMap::new();
        for f in seq(g, "envs") {
            let path = dir.join(f.as_str().expect("env file path"));
            for line in read(&path).lines() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (k, v) = line.split_once('=').unwrap_or((line, ""));
                data.insert(k.to_owned(), v.to_owned());
            }
        }
        for l in seq(g, "literals") {
            let l = l.as_str().expect("literal is a string");
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            data.insert(k.to_owned(), v.to_owned());
        }
        for f in seq(g, "files") {
            let f = f.as_str().expect("file entry");
            let (key, file) = f.split_once('=').unwrap_or((f, f));
            let key = Path::new(key)
                .file_name()
                .map_or(key.into(), |n| n.to_string_lossy());
            data.insert(key.into_owned(), read(&dir.join(file)));
        }
        let existing = objects.iter_mut().find(|o| {
            str_at(o, &["kind"]) == Some("ConfigMap")
                && str_at(o, &["metadata", "name"]) == Some(&name)
        });
        match (str_at(g, &["behavior"]).unwrap_or("create"), existing) {
            ("merge", Some(o)) => {
                if let Some(Value::Mapping(m)) = o.get_mut("data") {
                    for (k, v) in data {
                        m.insert(Value::String(k), Value::String(v));
                    }
                }
            }
            ("replace", Some(o)) => *o = config_map(&name, data),
            ("create", None) => objects.push(config_map(&name, data)),
            (b, o) => panic!(
                "{}: generator {name} with behavior {b} (existing: {})",
                dir.display(),
                o.is_some()
            ),
        }
    }
    for i in seq(&k, "images") {
        let name = str_at(i, &["name"]).expect("image entry has a name");
        for o in objects.iter_mut() {
            let containers = o
                .get_mut("spec")
                .and_then(|s| s.get_mut("template"))
                .and_then(|t| t.get_mut("spec"))
                .and_then(|p| p.get_mut("containers"))
                .and_then(Value::as_sequence_mut);
            for c in containers.into_iter().flatten() {
                let Some(image) = str_at(c, &["image"]).map(str::to_owned) else {
                    continue;
                };
                // `name[:tag]`; a registry port's colon sits before the last slash.
                let (base, tag) = match image.rsplit_once(':') {
                    Some((b, t)) if !t.contains('/') => (b.to_owned(), Some(t.to_owned())),
                    _ => (image.clone(), None),
                };
                if base != name {
                    continue;
                }
                let base = str_at(i, &["newName"]).map_or(base, str::to_owned);
                let tag = str_at(i, &["newTag"]).map(str::to_owned).or(tag);
                let image = tag.map_or(base.clone(), |t| format!("{base}:{t}"));
                if let Some(m) = c.as_mapping_mut() {
                    m.insert("image".into(), Value::String(image));
                }
            }
        }
    }
    objects
}

fn config_map(name: &str, data: BTreeMap<String, String>) -> Value {
    let mut doc = serde_norway::Mapping::new();
    doc.insert("kind".into(), "ConfigMap".into());
    let mut meta = serde_norway::Mapping::new();
    meta.insert("name".into(), name.into());
    doc.insert("metadata".into(), Value::Mapping(meta));
    let data: serde_norway::Mapping = data
        .into_iter()
        .map(|(k, v)| (Value::String(k), Value::String(v)))
        .collect();
    doc.insert("data".into(), Value::Mapping(data));
    Value::Mapping(doc)
}

// ---------------------------------------------------------------- reading objects

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

fn seq<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key)
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects.iter().find(|o| {
        str_at(o, &["kind"]) == Some(kind) && str_at(o, &["metadata", "name"]) == Some(name)
    })
}

/// Keys of a ConfigMap (`data`) or Secret (`data`, `stringData`).
fn keys_of(objects: &[Value], kind: &str, name: &str, optional: bool) -> BTreeSet<String> {
    let Some(o) = find(objects, kind, name) else {
        assert!(
            optional,
            "{kind} {name} is referenced by envFrom but not rendered"
        );
        return BTreeSet::new();
    };
    ["data", "stringData"]
        .iter()
        .filter_map(|k| o.get(*k).and_then(Value::as_mapping))
        .flat_map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_owned)))
        .collect()
}

fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    seq(
        at(deployment, &["spec", "template", "spec"]).expect("pod spec"),
        "containers",
    )
    .find(|c| str_at(c, &["name"]) == Some(name))
    .unwrap_or_else(|| panic!("no container {name}"))
}

/// Every variable name the container gets: `env` entries and `envFrom` keys (with prefix).
fn env_names(objects: &[Value], c: &Value) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = seq(c, "env")
        .filter_map(|e| str_at(e, &["name"]).map(str::to_owned))
        .collect();
    for from in seq(c, "envFrom") {
        let prefix = str_at(from, &["prefix"]).unwrap_or("");
        for (field, kind) in [("configMapRef", "ConfigMap"), ("secretRef", "Secret")] {
            if let Some(r) = from.get(field) {
                let name = str_at(r, &["name"]).expect("envFrom ref has a name");
                let optional = at(r, &["optional"]).and_then(Value::as_bool) == Some(true);
                names.extend(
                    keys_of(objects, kind, name, optional)
                        .into_iter()
                        .map(|k| format!("{prefix}{k}")),
                );
            }
        }
    }
    names
}

/// The value a ConfigMap referenced by the container gives `key` (the last `envFrom` wins,
/// an explicit `env` value over all).
fn env_value(objects: &[Value], c: &Value, key: &str) -> Option<String> {
    if let Some(v) = seq(c, "env")
        .filter(|e| str_at(e, &["name"]) == Some(key))
        .find_map(|e| str_at(e, &["value"]))
    {
        return Some(v.to_owned());
    }
    seq(c, "envFrom")
        .filter_map(|f| str_at(f, &["configMapRef", "name"]))
        .filter_map(|n| find(objects, "ConfigMap", n))
        .filter_map(|cm| str_at(cm, &["data", key]))
        .last()
        .map(str::to_owned)
}

// ---------------------------------------------------------------- tests

/// The drift check: each binary's container env carries exactly the `AMR_*` variables the
/// binary accepts.
#[test]
fn every_overlay_gives_each_binary_exactly_the_variables_it_accepts() {
    let binaries = binaries();
    for b in &binaries {
        assert!(
            !b.accepted.is_empty(),
            "{}: no AMR_* variable read from clap",
            b.deployment
        );
        let now_accepted: Vec<_> = b
            .pending
            .iter()
            .filter(|p| b.accepted.contains(**p))
            .collect();
        assert!(
            now_accepted.is_empty(),
            "{} accepts {now_accepted:?} now: remove them from PENDING_GATEWAY in {}",
            b.deployment,
            file!()
        );
    }
    let mut problems = Vec::new();
    for (overlay, objects) in rendered() {
        let o = overlay
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        for b in &binaries {
            let Some(d) = find(objects, "Deployment", b.deployment) else {
                problems.push(format!("{o}: no Deployment {}", b.deployment));
                continue;
            };
            let have: BTreeSet<String> = env_names(objects, container(d, b.container))
                .into_iter()
                .filter(|n| n.starts_with("AMR_"))
                .collect();
            for missing in b.accepted.difference(&have) {
                problems.push(format!(
                    "{o}: {} accepts {missing} but its container env lacks it (add it to deploy/base/*.env)",
                    b.deployment
                ));
            }
            for extra in have.difference(&b.accepted) {
                if !b.pending.contains(&extra.as_str()) {
                    problems.push(format!(
                        "{o}: {} container env has {extra}, which {} does not accept",
                        b.deployment, b.deployment
                    ));
                }
            }
            for pending in b.pending {
                if !have.contains(*pending) {
                    problems.push(format!(
                        "{o}: {} container env lacks {pending} (fixed by the contract)",
                        b.deployment
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "manifests and binaries disagree:\n  {}",
        problems.join("\n  ")
    );
}

/// The gateway drains within its grace period: kubelet sends SIGTERM after the preStop
/// sleep, and kills at `terminationGracePeriodSeconds`.
#[test]
fn gateway_grace_period_covers_prestop_and_drain() {
    for (overlay, objects) in rendered() {
        let d = find(objects, "Deployment", "amr-gateway").expect("gateway Deployment");
        let c = container(d, "gateway");
        let grace = at(
            d,
            &["spec", "template", "spec", "terminationGracePeriodSeconds"],
        )
        .and_then(Value::as_u64)
        .map(Duration::from_secs)
        .expect("terminationGracePeriodSeconds set");
        let pre_stop = at(c, &["lifecycle", "preStop", "sleep", "seconds"])
            .and_then(Value::as_u64)
            .map(Duration::from_secs)
            .expect("preStop sleep set");
        let drain = env_value(objects, c, "AMR_DRAIN_TIMEOUT")
            .map(|v| amr_gateway::config::parse_duration(&v).expect("AMR_DRAIN_TIMEOUT parses"))
            .expect("AMR_DRAIN_TIMEOUT set");
        assert!(
            grace > pre_stop + drain,
            "{}: terminationGracePeriodSeconds {grace:?} must exceed preStop {pre_stop:?} + AMR_DRAIN_TIMEOUT {drain:?}",
            overlay.display()
        );
    }
}

/// What a platform engineer checks first: pinned image tags, probes on the right endpoints,
/// no root, read-only root filesystem, no privilege escalation, no capabilities, limits.
#[test]
fn workloads_are_probed_locked_down_and_bounded() {
    for (overlay, objects) in rendered() {
        let mut workloads = 0;
        for o in objects {
            let kind = str_at(o, &["kind"]).unwrap_or("");
            if kind != "Deployment" && kind != "StatefulSet" {
                continue;
            }
            workloads += 1;
            let name = str_at(o, &["metadata", "name"]).unwrap_or("?");
            let pod = at(o, &["spec", "template", "spec"]).expect("pod spec");
            let ctx = format!("{}: {kind} {name}", overlay.display());
            assert_eq!(
                at(pod, &["securityContext", "runAsNonRoot"]).and_then(Value::as_bool),
                Some(true),
                "{ctx}: runAsNonRoot"
            );
            assert_eq!(
                at(pod, &["automountServiceAccountToken"]).and_then(Value::as_bool),
                Some(false),
                "{ctx}: no API token needed"
            );
            for c in seq(pod, "containers") {
                let image = str_at(c, &["image"]).unwrap_or("");
                let tag = image
                    .rsplit('/')
                    .next()
                    .and_then(|last| last.split_once(':'));
                assert!(
                    tag.is_some_and(|(_, t)| !t.is_empty() && t != "latest"),
                    "{ctx}: image {image:?} needs an explicit tag"
                );
                let sc = c.get("securityContext").expect("container securityContext");
                assert_eq!(
                    at(sc, &["readOnlyRootFilesystem"]).and_then(Value::as_bool),
                    Some(true),
                    "{ctx}: readOnlyRootFilesystem"
                );
                assert_eq!(
                    at(sc, &["allowPrivilegeEscalation"]).and_then(Value::as_bool),
                    Some(false),
                    "{ctx}: allowPrivilegeEscalation"
                );
                let drops: Vec<_> = seq(at(sc, &["capabilities"]).expect("capabilities"), "drop")
                    .filter_map(Value::as_str)
                    .collect();
                assert_eq!(drops, ["ALL"], "{ctx}: capabilities.drop");
                assert!(
                    at(c, &["resources", "limits", "memory"]).is_some()
                        && at(c, &["resources", "requests", "cpu"]).is_some(),
                    "{ctx}: resources"
                );
                for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                    assert!(c.get(probe).is_some(), "{ctx}: {probe}");
                }
            }
        }
        assert!(
            workloads >= 4,
            "{}: only {workloads} workloads",
            overlay.display()
        );
        for (deployment, name) in [
            ("amr-gateway", "gateway"),
            ("amr-session-service", "session-service"),
        ] {
            let c = container(
                find(objects, "Deployment", deployment).expect("Deployment"),
                name,
            );
            assert_eq!(
                str_at(c, &["livenessProbe", "httpGet", "path"]),
                Some("/healthz")
            );
            assert_eq!(
                str_at(c, &["readinessProbe", "httpGet", "path"]),
                Some("/readyz")
            );
        }
    }
}

/// Every selector selects something: a typo in a Service, PodDisruptionBudget, NetworkPolicy
/// or HPA target would otherwise protect, route or scale nothing, silently.
#[test]
fn every_selector_and_target_matches_a_workload() {
    for (overlay, objects) in rendered() {
        let workloads: Vec<(&str, &str, BTreeMap<String, String>)> = objects
            .iter()
            .filter(|o| matches!(str_at(o, &["kind"]), Some("Deployment" | "StatefulSet")))
            .map(|o| {
                (
                    str_at(o, &["kind"]).unwrap_or(""),
                    str_at(o, &["metadata", "name"]).unwrap_or(""),
                    labels(at(o, &["spec", "template", "metadata", "labels"])),
                )
            })
            .collect();
        let selects = |selector: &BTreeMap<String, String>| {
            workloads
                .iter()
                .any(|(_, _, l)| selector.iter().all(|(k, v)| l.get(k) == Some(v)))
        };
        let mut problems = Vec::new();
        for o in objects {
            let kind = str_at(o, &["kind"]).unwrap_or("");
            let name = str_at(o, &["metadata", "name"]).unwrap_or("?");
            let mut selectors = Vec::new();
            match kind {
                "Service" => selectors.push(labels(at(o, &["spec", "selector"]))),
                "PodDisruptionBudget" => {
                    selectors.push(labels(at(o, &["spec", "selector", "matchLabels"])))
                }
                "NetworkPolicy" => {
                    selectors.push(labels(at(o, &["spec", "podSelector", "matchLabels"])));
                    // Peers in this namespace; opt-in labels (amr-bridge.io/...) are for pods
                    // of other applications and select nothing here by design.
                    for dir in ["ingress", "egress"] {
                        for rule in seq(at(o, &["spec"]).expect("spec"), dir) {
                            for peer in seq(rule, "from").chain(seq(rule, "to")) {
                                let sel = labels(at(peer, &["podSelector", "matchLabels"]));
                                if peer.get("namespaceSelector").is_none()
                                    && !sel.is_empty()
                                    && !sel.keys().any(|k| k.starts_with("amr-bridge.io/"))
                                {
                                    selectors.push(sel);
                                }
                            }
                        }
                    }
                }
                "HorizontalPodAutoscaler" => {
                    let target = (
                        str_at(o, &["spec", "scaleTargetRef", "kind"]).unwrap_or(""),
                        str_at(o, &["spec", "scaleTargetRef", "name"]).unwrap_or(""),
                    );
                    if !workloads.iter().any(|(k, n, _)| (*k, *n) == target) {
                        problems.push(format!("{kind} {name}: no {target:?}"));
                    }
                }
                _ => {}
            }
            for sel in selectors {
                if !sel.is_empty() && !selects(&sel) {
                    problems.push(format!("{kind} {name}: selector {sel:?} matches no pod"));
                }
            }
        }
        assert!(
            problems.is_empty(),
            "{}:\n  {}",
            overlay.display(),
            problems.join("\n  ")
        );
    }
}

fn labels(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
        .collect()
}
