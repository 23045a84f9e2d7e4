//! The Redis implementation of [`SessionStore`].
//!
//! Every state change is one atomic Lua script: a generic compare-and-set `commit` (checks the
//! guards of a plan, then applies its writes, the per-gateway session index included),
//! `activity` (counts and idle deadlines of a batch), the sweeper's `claim` (of a deadline or
//! of a silent gateway) and `forget_gateway`; a heartbeat is one `ZADD`. Reads for a decision
//! are one Lua script too (`snapshot`), because the rows it needs depend on the pointers it
//! reads. Key names come only from [`Keys`], field names only from [`field`] (the Lua sources
//! get them substituted in).

use crate::config::millis;
use crate::machine::{Guard, Phase, Plan, Session, Snapshot, Write};
use crate::store::{CommitOutcome, ListQuery, SessionStore, SnapshotQuery, StoreError};
use amr_proto::events::{SessionPage, SessionState};
use amr_proto::internal::ActivityRequest;
use amr_proto::keys::{field, Keys};
use amr_proto::{ids, EndReason};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How long a `(deviceId, requestId)` is remembered (protocol: 60 s).
pub(crate) const REQUEST_MEMORY_MS: i64 = 60_000;
/// Index entries examined per round trip when listing.
pub(crate) const LIST_BATCH: usize = 200;
/// Round trips one listing may take before it returns what it has (with a cursor).
pub(crate) const LIST_MAX_BATCHES: usize = 20;

/// Reads the device's active pointer, the request key, and every row they or the query name.
/// The rows' keys depend on the pointers' values, so they are built here from the session key
/// prefix (`Keys::session("")`).
const SNAPSHOT_LUA: &str = r#"
local prefix = ARGV[1]
local out = { rows = {} }
local ids = {}
if ARGV[2] ~= '' then
  local a = redis.call('GET', ARGV[2])
  if a then out.active = a; table.insert(ids, a) end
end
if ARGV[3] ~= '' then
  local r = redis.call('GET', ARGV[3])
  if r then out.request = r; table.insert(ids, r) end
end
for i = 4, #ARGV do table.insert(ids, ARGV[i]) end
for _, id in ipairs(ids) do
  if out.rows[id] == nil then
    local h = redis.call('HGETALL', prefix .. id)
    if #h > 0 then out.rows[id] = h end
  end
end
return cjson.encode(out)
"#;

/// Compare-and-set: ARGV[1] is a JSON plan `{guards:[..], ops:[..]}` with concrete keys.
/// Returns 1 when applied, 0 when a guard failed (nothing written).
const COMMIT_LUA: &str = r#"
local plan = cjson.decode(ARGV[1])
for _, g in ipairs(plan.guards) do
  if g.t == 'version' then
    if g.v == '' then
      if redis.call('EXISTS', g.k) == 1 then return 0 end
    elseif redis.call('HGET', g.k, '$version') ~= g.v then
      return 0
    end
  elseif g.t == 'pointer' then
    local v = redis.call('GET', g.k)
    if g.v == '' then
      if v then return 0 end
    elseif v ~= g.v then
      return 0
    end
  elseif g.t == 'due' then
    local d = tonumber(redis.call('HGET', g.k, '$deadline'))
    if d == nil or d > tonumber(g.now) then return 0 end
  else
    return redis.error_reply('unknown guard ' .. tostring(g.t))
  end
end
for _, o in ipairs(plan.ops) do
  if o.t == 'hset' then
    redis.call('HSET', o.k, unpack(o.f))
  elseif o.t == 'hdel' then
    redis.call('HDEL', o.k, unpack(o.f))
  elseif o.t == 'set' then
    redis.call('SET', o.k, o.v)
  elseif o.t == 'setpx' then
    redis.call('SET', o.k, o.v, 'PX', o.ms)
  elseif o.t == 'delif' then
    if redis.call('GET', o.k) == o.v then redis.call('DEL', o.k) end
  elseif o.t == 'zadd' then
    redis.call('ZADD', o.k, o.s, o.m)
  elseif o.t == 'zrem' then
    redis.call('ZREM', o.k, o.m)
  elseif o.t == 'gwidx' then
    -- Before the row's hset: the row leaves the set of the gateway it named, and enters the
    -- set of `g` ('' when it is not held by a connection).
    local old = redis.call('HGET', o.k, '$gateway')
    if old and old ~= '' and old ~= o.g then redis.call('SREM', o.p .. old .. o.s, o.m) end
    if o.g ~= '' then
      redis.call('SADD', o.p .. o.g .. o.s, o.m)
      redis.call('ZADD', o.z, 'NX', o.now, o.g)
    end
  elseif o.t == 'pexpire' then
    redis.call('PEXPIRE', o.k, o.ms)
  elseif o.t == 'persist' then
    redis.call('PERSIST', o.k)
  else
    return redis.error_reply('unknown op ' .. tostring(o.t))
  end
end
return 1
"#;

/// Activity batch. KEYS[1] deadlines. ARGV: session key prefix, deviceId, owner, the
/// owner's count field, new idle deadline, then (sessionId, cumulative accepted) pairs.
/// Keeps the highest count per connection; dataCount moves by the difference.
/// Returns the ids that are not active.
const ACTIVITY_LUA: &str = r#"
local inactive = {}
for i = 6, #ARGV, 2 do
  local sid = ARGV[i]
  local k = ARGV[1] .. sid
  local h = redis.call('HMGET', k, '$state', '$deviceId', '$owner', '$pendingReason', ARGV[4])
  if h[1] == '$ACTIVE' and h[2] == ARGV[2] then
    local seen = tonumber(h[5]) or 0
    local accepted = tonumber(ARGV[i + 1])
    if accepted > seen then
      redis.call('HSET', k, ARGV[4], ARGV[i + 1])
      redis.call('HINCRBY', k, '$dataCount', accepted - seen)
    end
    redis.call('HINCRBY', k, '$version', 1)
    if h[3] == ARGV[3] and h[3] ~= '' and h[4] == '$IDLE' then
      redis.call('HSET', k, '$deadline', ARGV[5])
      redis.call('ZADD', KEYS[1], ARGV[5], sid)
    end
  else
    table.insert(inactive, sid)
  end
end
return inactive
"#;

/// Sweeper claim of a schedule entry. KEYS[1] the schedule (deadlines, or gateways). ARGV:
/// member, the latest score that may be claimed, the score the claim sets.
const CLAIM_LUA: &str = r#"
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) <= tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
"#;

/// Forgets a swept gateway. KEYS[1] gateways, KEYS[2] its session set. ARGV: gatewayId, the
/// score its claim set. Only while that score stands (no heartbeat since) and the set is empty.
const FORGET_GATEWAY_LUA: &str = r#"
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) == tonumber(ARGV[2]) and redis.call('SCARD', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"#;

/// Marks where the gateway id goes in `Keys::gateway_sessions` (never in a prefix or an id).
const GATEWAY_MARK: &str = "*";

/// A Lua source with the field names and state values of the contract substituted in.
fn lua(src: &str) -> Script {
    let mut s = src.to_string();
    // Longest names first, so that `$deadline` never eats part of a longer placeholder.
    let subs = [
        ("$pendingReason", field::PENDING_REASON),
        ("$dataCount", field::DATA_COUNT),
        ("$deviceId", field::DEVICE_ID),
        ("$deadline", field::DEADLINE),
        ("$gateway", field::GATEWAY),
        ("$version", field::VERSION),
        ("$owner", field::OWNER),
        ("$state", field::STATE),
        ("$ACTIVE", SessionState::Active.as_str()),
        ("$IDLE", EndReason::IdleTimeout.as_str()),
    ];
    for (from, to) in subs {
        s = s.replace(from, to);
    }
    Script::new(&s)
}

/// A plan as `COMMIT_LUA` reads it: `{guards: [..], ops: [..]}`, each entry tagged by `t`.
/// Serialized straight from these types (no intermediate JSON tree: this is on every commit).
#[derive(Serialize)]
struct PlanBody {
    guards: Vec<GuardOp>,
    ops: Vec<Op>,
}

#[derive(Serialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum GuardOp {
    /// The row's `$version` is `v` ('': the row does not exist).
    Version { k: String, v: String },
    /// The pointer key (active session, remembered request) holds `v` ('': it is absent).
    Pointer { k: String, v: String },
    /// The row's `$deadline` is at or before `now`.
    Due { k: String, now: String },
}

#[derive(Serialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum Op {
    Set {
        k: String,
        v: String,
    },
    Delif {
        k: String,
        v: String,
    },
    Setpx {
        k: String,
        v: String,
        ms: String,
    },
    Zadd {
        k: String,
        s: String,
        m: String,
    },
    Zrem {
        k: String,
        m: String,
    },
    /// Moves row `k` (member `m`) to the session set of gateway `g`: the set's key is
    /// `p + gateway + s`; `z` is the gateway schedule, entered at `now`.
    Gwidx {
        k: String,
        m: String,
        g: String,
        p: String,
        s: String,
        z: String,
        now: String,
    },
    Hset {
        k: String,
        f: Vec<String>,
    },
    Hdel {
        k: String,
        f: Vec<&'static str>,
    },
    Pexpire {
        k: String,
        ms: String,
    },
    Persist {
        k: String,
    },
}

struct Scripts {
    snapshot: Script,
    commit: Script,
    activity: Script,
    claim: Script,
    forget_gateway: Script,
}

#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    keys: Keys,
    retention_ms: i64,
    idle_timeout_ms: i64,
    /// Bound of every call, on top of the connection manager's response timeout.
    timeout: Duration,
    scripts: Arc<Scripts>,
}

impl RedisStore {
    /// Connects (one attempt, bounded by `timeout`).
    pub async fn connect(
        url: &str,
        keys: Keys,
        retention: Duration,
        idle_timeout: Duration,
        timeout: Duration,
    ) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(2);
        let conn =
            tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, config))
                .await
                .map_err(|_| StoreError::Unavailable("timed out connecting to redis".into()))?
                .map_err(unavailable)?;
        Ok(RedisStore {
            conn,
            keys,
            retention_ms: millis(retention),
            idle_timeout_ms: millis(idle_timeout),
            timeout,
            scripts: Arc::new(Scripts {
                snapshot: lua(SNAPSHOT_LUA),
                commit: lua(COMMIT_LUA),
                activity: lua(ACTIVITY_LUA),
                claim: lua(CLAIM_LUA),
                forget_gateway: lua(FORGET_GATEWAY_LUA),
            }),
        })
    }

    /// Runs one Redis call with the store's timeout.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(StoreError::Unavailable("redis call timed out".into())),
        }
    }

    /// The concrete operations of a plan, as the commit script reads them; `now` is when a
    /// gateway first seen holding a session enters the gateway schedule.
    fn plan_body(&self, plan: &Plan, now: i64) -> PlanBody {
        let guards = plan
            .guards
            .iter()
            .map(|g| match g {
                Guard::Version {
                    session_id,
                    version,
                } => GuardOp::Version {
                    k: self.keys.session(session_id),
                    v: version.map(|v| v.to_string()).unwrap_or_default(),
                },
                Guard::ActivePointer {
                    device_id,
                    session_id,
                } => GuardOp::Pointer {
                    k: self.keys.active(device_id),
                    v: session_id.clone().unwrap_or_default(),
                },
                Guard::DeadlineDue { session_id, now } => GuardOp::Due {
                    k: self.keys.session(session_id),
                    now: now.to_string(),
                },
                Guard::Request {
                    device_id,
                    request_id,
                    session_id,
                } => GuardOp::Pointer {
                    k: self.keys.request(device_id, request_id),
                    v: session_id.clone().unwrap_or_default(),
                },
            })
            .collect();
        let mut ops = Vec::new();
        for w in &plan.writes {
            match w {
                Write::Put(s) => self.put_ops(s, now, &mut ops),
                Write::SetActive {
                    device_id,
                    session_id,
                } => ops.push(Op::Set {
                    k: self.keys.active(device_id),
                    v: session_id.clone(),
                }),
                Write::ClearActive {
                    device_id,
                    session_id,
                } => ops.push(Op::Delif {
                    k: self.keys.active(device_id),
                    v: session_id.clone(),
                }),
                Write::RememberRequest {
                    device_id,
                    request_id,
                    session_id,
                } => ops.push(Op::Setpx {
                    k: self.keys.request(device_id, request_id),
                    v: session_id.clone(),
                    ms: REQUEST_MEMORY_MS.to_string(),
                }),
                Write::Schedule {
                    session_id,
                    deadline,
                } => ops.push(Op::Zadd {
                    k: self.keys.deadlines(),
                    s: deadline.to_string(),
                    m: session_id.clone(),
                }),
                Write::Unschedule { session_id } => ops.push(Op::Zrem {
                    k: self.keys.deadlines(),
                    m: session_id.clone(),
                }),
            }
        }
        PlanBody { guards, ops }
    }

    fn put_ops(&self, s: &Session, now: i64, ops: &mut Vec<Op>) {
        let key = self.keys.session(&s.session_id);
        let held_by = match &s.phase {
            Phase::Active { owner } if !owner.is_empty() => s.gateway.as_str(),
            _ => "",
        };
        let set_key = self.keys.gateway_sessions(GATEWAY_MARK);
        let (set_prefix, set_suffix) = set_key.split_once(GATEWAY_MARK).unwrap_or((&set_key, ""));
        ops.push(Op::Gwidx {
            k: key.clone(),
            m: s.session_id.clone(),
            g: held_by.to_owned(),
            p: set_prefix.to_owned(),
            s: set_suffix.to_owned(),
            z: self.keys.gateways(),
            now: now.to_string(),
        });
        let (state, owner, ended) = match &s.phase {
            Phase::Active { owner } => (SessionState::Active, owner.as_str(), None),
            Phase::Detached => (SessionState::Active, "", None),
            Phase::Ended { reason, ended_at } => {
                (SessionState::Ended, "", Some((*reason, *ended_at)))
            }
        };
        let mut fields: Vec<String> = [
            (field::DEVICE_ID, s.device_id.clone()),
            (field::STATE, state.as_str().to_string()),
            (field::STARTED_AT, s.started_at.to_string()),
            (field::DATA_COUNT, s.data_count.to_string()),
            (field::OWNER, owner.to_string()),
            (field::GATEWAY, s.gateway.clone()),
            (field::PENDING_REASON, s.pending_reason.as_str().to_string()),
            (field::DEADLINE, s.deadline.to_string()),
            (field::VERSION, s.version.to_string()),
        ]
        .into_iter()
        .flat_map(|(f, v)| [f.to_string(), v])
        .collect();
        for (connection, accepted) in &s.accepted {
            fields.extend([field::accepted(connection), accepted.to_string()]);
        }
        let mut absent = Vec::new();
        match &s.replaced_session_id {
            Some(r) => fields.extend([field::REPLACED.to_string(), r.clone()]),
            None => absent.push(field::REPLACED),
        }
        match ended {
            Some((reason, ended_at)) => fields.extend([
                field::REASON.to_string(),
                reason.as_str().to_string(),
                field::ENDED_AT.to_string(),
                ended_at.to_string(),
            ]),
            None => absent.extend([field::REASON, field::ENDED_AT]),
        }
        ops.push(Op::Hset {
            k: key.clone(),
            f: fields,
        });
        if !absent.is_empty() {
            ops.push(Op::Hdel {
                k: key.clone(),
                f: absent,
            });
        }
        if ended.is_some() {
            ops.push(Op::Zrem {
                k: self.keys.deadlines(),
                m: s.session_id.clone(),
            });
            ops.push(Op::Pexpire {
                k: key,
                ms: self.retention_ms.to_string(),
            });
        } else {
            ops.push(Op::Zadd {
                k: self.keys.deadlines(),
                s: s.deadline.to_string(),
                m: s.session_id.clone(),
            });
            ops.push(Op::Persist { k: key });
        }
        let started = s.started_at.to_string();
        for index in [
            self.keys.all_sessions(),
            self.keys.device_sessions(&s.device_id),
        ] {
            ops.push(Op::Zadd {
                k: index,
                s: started.clone(),
                m: s.session_id.clone(),
            });
        }
    }

    /// Forgets index entries whose record expired.
    async fn trim(&self, index: &str, session_ids: &[String]) -> Result<(), StoreError> {
        if session_ids.is_empty() {
            return Ok(());
        }
        let all = self.keys.all_sessions();
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM").arg(index).arg(session_ids).ignore();
        if index != all {
            pipe.cmd("ZREM").arg(&all).arg(session_ids).ignore();
        }
        let mut conn = self.conn.clone();
        self.bounded(pipe.query_async::<()>(&mut conn)).await
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A session row from its hash fields.
pub fn parse_session(session_id: &str, h: &HashMap<String, String>) -> Result<Session, StoreError> {
    let get = |f: &str| {
        h.get(f)
            .ok_or_else(|| StoreError::Corrupt(format!("session {session_id}: no field {f}")))
    };
    let int = |f: &str| -> Result<i64, StoreError> {
        get(f)?
            .parse::<i64>()
            .map_err(|_| StoreError::Corrupt(format!("session {session_id}: bad {f}")))
    };
    let reason = |f: &str| -> Result<EndReason, StoreError> {
        EndReason::parse(get(f)?)
            .ok_or_else(|| StoreError::Corrupt(format!("session {session_id}: bad {f}")))
    };
    let state = SessionState::parse(get(field::STATE)?)
        .ok_or_else(|| StoreError::Corrupt(format!("session {session_id}: bad state")))?;
    let owner = h.get(field::OWNER).cloned().unwrap_or_default();
    let phase = match state {
        SessionState::Active if owner.is_empty() => Phase::Detached,
        SessionState::Active => Phase::Active { owner },
        SessionState::Ended => Phase::Ended {
            reason: reason(field::REASON)?,
            ended_at: int(field::ENDED_AT)?,
        },
    };
    Ok(Session {
        session_id: session_id.to_string(),
        device_id: get(field::DEVICE_ID)?.clone(),
        phase,
        started_at: int(field::STARTED_AT)?,
        data_count: u64::try_from(int(field::DATA_COUNT)?).unwrap_or(0),
        gateway: h.get(field::GATEWAY).cloned().unwrap_or_default(),
        replaced_session_id: h.get(field::REPLACED).cloned().filter(|r| !r.is_empty()),
        pending_reason: reason(field::PENDING_REASON).unwrap_or(EndReason::IdleTimeout),
        deadline: int(field::DEADLINE).unwrap_or(0),
        version: u64::try_from(int(field::VERSION)?).unwrap_or(0),
        accepted: h
            .iter()
            .filter_map(|(k, v)| {
                let connection = k.strip_prefix(field::ACCEPTED_PREFIX)?;
                Some((connection.to_string(), v.parse::<u64>().ok()?))
            })
            .collect(),
    })
}

fn pairs_to_map(flat: Vec<String>) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        map.insert(k, v);
    }
    map
}

#[derive(Deserialize)]
struct RawSnapshot {
    active: Option<String>,
    request: Option<String>,
    #[serde(default)]
    rows: HashMap<String, Vec<String>>,
}

/// A listing position: the index score and member of the last entry examined.
pub(crate) fn parse_cursor(cursor: &str) -> Option<(i64, String)> {
    let (score, member) = cursor.split_once(':')?;
    let score = score.parse().ok()?;
    ids::is_valid_session_id(member).then(|| (score, member.to_string()))
}

// Request-path calls get a child span of the request's `session_op` span; the sweeper's
// periodic calls do not (a trace per tick would drown the useful ones).
impl SessionStore for RedisStore {
    #[tracing::instrument(name = "redis.snapshot", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    async fn snapshot(&self, query: &SnapshotQuery) -> Result<Snapshot, StoreError> {
        let active_key = query
            .device_id
            .as_deref()
            .map(|d| self.keys.active(d))
            .unwrap_or_default();
        let request_key = match (&query.device_id, &query.request_id) {
            (Some(d), Some(r)) => self.keys.request(d, r),
            _ => String::new(),
        };
        let mut conn = self.conn.clone();
        let mut call = self.scripts.snapshot.prepare_invoke();
        call.arg(self.keys.session(""))
            .arg(active_key)
            .arg(request_key);
        for id in &query.session_ids {
            call.arg(id);
        }
        let raw: String = self.bounded(call.invoke_async(&mut conn)).await?;
        let raw: RawSnapshot =
            serde_json::from_str(&raw).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let sessions = raw
            .rows
            .into_iter()
            .map(|(id, flat)| parse_session(&id, &pairs_to_map(flat)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Snapshot {
            active: raw.active,
            by_request: raw.request,
            sessions,
        })
    }

    #[tracing::instrument(name = "redis.commit", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    async fn commit(&self, plan: &Plan) -> Result<CommitOutcome, StoreError> {
        let body = serde_json::to_string(&self.plan_body(plan, amr_proto::now_ms()))
            .map_err(|e| StoreError::Corrupt(format!("cannot encode the plan: {e}")))?;
        let mut conn = self.conn.clone();
        let applied: i64 = self
            .bounded(self.scripts.commit.arg(body).invoke_async(&mut conn))
            .await?;
        Ok(if applied == 1 {
            CommitOutcome::Committed
        } else {
            CommitOutcome::Conflict
        })
    }

    #[tracing::instrument(name = "redis.activity", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    async fn activity(&self, req: &ActivityRequest, now: i64) -> Result<Vec<String>, StoreError> {
        // Ids that cannot name a session never become keys: they are simply inactive.
        let (valid, mut inactive): (Vec<_>, Vec<_>) = req
            .reports
            .iter()
            .partition(|r| ids::is_valid_session_id(&r.session_id));
        let mut inactive: Vec<String> = inactive.drain(..).map(|r| r.session_id.clone()).collect();
        if valid.is_empty() {
            return Ok(inactive);
        }
        let mut conn = self.conn.clone();
        let mut call = self.scripts.activity.key(self.keys.deadlines());
        call.arg(self.keys.session(""))
            .arg(&req.device_id)
            .arg(&req.owner)
            .arg(field::accepted(&req.owner))
            .arg(now.saturating_add(self.idle_timeout_ms));
        // Lua numbers are doubles: counts stay exact up to 2^53.
        for r in valid {
            call.arg(&r.session_id).arg(r.accepted.min(1 << 53));
        }
        let mut more: Vec<String> = self.bounded(call.invoke_async(&mut conn)).await?;
        inactive.append(&mut more);
        Ok(inactive)
    }

    async fn due(&self, now: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("ZRANGEBYSCORE");
        cmd.arg(self.keys.deadlines())
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(limit);
        self.bounded(cmd.query_async(&mut conn)).await
    }

    async fn claim_due(
        &self,
        session_id: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let claimed: i64 = self
            .bounded(
                self.scripts
                    .claim
                    .key(self.keys.deadlines())
                    .arg(session_id)
                    .arg(now)
                    .arg(now.saturating_add(lease_ms))
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(claimed == 1)
    }

    #[tracing::instrument(name = "redis.heartbeat", level = "debug", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    async fn heartbeat(&self, gateway_id: &str, now: i64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(self.keys.gateways()).arg(now).arg(gateway_id);
        self.bounded(cmd.query_async::<()>(&mut conn)).await
    }

    async fn silent_gateways(
        &self,
        silent_since: i64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("ZRANGEBYSCORE");
        cmd.arg(self.keys.gateways())
            .arg("-inf")
            .arg(silent_since)
            .arg("LIMIT")
            .arg(0)
            .arg(limit);
        self.bounded(cmd.query_async(&mut conn)).await
    }

    async fn claim_gateway(
        &self,
        gateway_id: &str,
        silent_since: i64,
        claimed: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let done: i64 = self
            .bounded(
                self.scripts
                    .claim
                    .key(self.keys.gateways())
                    .arg(gateway_id)
                    .arg(silent_since)
                    .arg(claimed)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(done == 1)
    }

    async fn gateway_sessions(&self, gateway_id: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(self.keys.gateway_sessions(gateway_id));
        let mut ids: Vec<String> = self.bounded(cmd.query_async(&mut conn)).await?;
        ids.sort();
        Ok(ids)
    }

    async fn forget_gateway(&self, gateway_id: &str, claimed: i64) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let done: i64 = self
            .bounded(
                self.scripts
                    .forget_gateway
                    .key(self.keys.gateways())
                    .key(self.keys.gateway_sessions(gateway_id))
                    .arg(gateway_id)
                    .arg(claimed)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(done == 1)
    }

    async fn get(&self, session_id: &str) -> Result<Option<Session>, StoreError> {
        if !ids::is_valid_session_id(session_id) {
            return Ok(None);
        }
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.keys.session(session_id));
        let h: HashMap<String, String> = self.bounded(cmd.query_async(&mut conn)).await?;
        if h.is_empty() {
            return Ok(None);
        }
        parse_session(session_id, &h).map(Some)
    }

    async fn list(&self, query: &ListQuery) -> Result<SessionPage, StoreError> {
        let index = match &query.device_id {
            Some(d) => self.keys.device_sessions(d),
            None => self.keys.all_sessions(),
        };
        let mut pos = match &query.cursor {
            Some(c) => Some(parse_cursor(c).ok_or(StoreError::InvalidCursor)?),
            None => None,
        };
        let mut offset = 0usize;
        let mut found: Vec<(i64, Session)> = Vec::new();
        let mut exhausted = false;
        let mut conn = self.conn.clone();
        'batches: for _ in 0..LIST_MAX_BATCHES {
            let max = pos
                .as_ref()
                .map_or_else(|| "+inf".to_string(), |(s, _)| s.to_string());
            let mut cmd = redis::cmd("ZREVRANGEBYSCORE");
            cmd.arg(&index)
                .arg(max)
                .arg("-inf")
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(offset)
                .arg(LIST_BATCH);
            let batch: Vec<(String, f64)> = self.bounded(cmd.query_async(&mut conn)).await?;
            let full = batch.len() == LIST_BATCH;
            // Entries at the cursor's score that sort at or after its member were seen already.
            let fresh: Vec<(String, i64)> = batch
                .into_iter()
                .map(|(m, s)| (m, s as i64))
                .filter(|(m, s)| match &pos {
                    Some((ps, pm)) => !(s == ps && m >= pm),
                    None => true,
                })
                .collect();
            if fresh.is_empty() {
                if full {
                    // A run of equal scores longer than a batch: step over it.
                    offset += LIST_BATCH;
                    continue;
                }
                exhausted = true;
                break;
            }
            offset = 0;
            let mut pipe = redis::pipe();
            for (m, _) in &fresh {
                pipe.cmd("HGETALL").arg(self.keys.session(m));
            }
            let rows: Vec<HashMap<String, String>> =
                self.bounded(pipe.query_async(&mut conn)).await?;
            let mut gone = Vec::new();
            for ((m, s), h) in fresh.into_iter().zip(rows) {
                pos = Some((s, m.clone()));
                if h.is_empty() || !ids::is_valid_session_id(&m) {
                    gone.push(m);
                    continue;
                }
                let session = parse_session(&m, &h)?;
                let state = session.record().state;
                if query.state.is_none_or(|want| want == state) {
                    found.push((s, session));
                    if found.len() > query.limit {
                        self.trim(&index, &gone).await?;
                        break 'batches;
                    }
                }
            }
            self.trim(&index, &gone).await?;
            if !full {
                exhausted = true;
                break;
            }
        }
        let next_cursor = if found.len() > query.limit {
            found.truncate(query.limit);
            found
                .last()
                .map(|(s, session)| format!("{s}:{}", session.session_id))
        } else if exhausted {
            None
        } else {
            // Gave up scanning for this page: resume where it stopped.
            pos.map(|(s, m)| format!("{s}:{m}"))
        };
        Ok(SessionPage {
            sessions: found.into_iter().map(|(_, s)| s.record()).collect(),
            next_cursor,
        })
    }

    async fn active_count(&self) -> Option<u64> {
        let mut conn = self.conn.clone();
        // Every active session has exactly one deadline entry.
        self.bounded(
            redis::cmd("ZCARD")
                .arg(self.keys.deadlines())
                .query_async(&mut conn),
        )
        .await
        .ok()
    }

    async fn ping(&self) -> bool {
        let mut conn = self.conn.clone();
        let pong: Result<String, _> = self
            .bounded(redis::cmd("PING").query_async(&mut conn))
            .await;
        pong.is_ok()
    }
}

#[cfg(test)]
mod tests;
