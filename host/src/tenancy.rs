//! The tenancy vocabulary: tenants, tiers and their limits, with every
//! default and every accepted range written once.
//!
//! A leaf: it imports nothing of the crate, so the modules that speak of
//! tenants and limits (`config`, `store`, `kv`, `quota`, `runtime`,
//! `usage`) need not import each other to do it.

use serde::{Deserialize, Serialize};

/// Primary key of a tenant.
pub type TenantId = i64;

/// Default linear memory an instance may grow to (`MEMORY_LIMIT`).
pub const DEFAULT_MEMORY_LIMIT_BYTES: u64 = 128 << 20;
/// Smallest memory limit a tier may set.
pub const MIN_MEMORY_LIMIT_BYTES: u64 = 1 << 20;
/// Largest linear memory WebAssembly 32-bit can address.
pub const MAX_MEMORY_LIMIT_BYTES: u64 = 4 << 30;

/// Default wall-clock time of one invocation (`EXECUTION_TIMEOUT`).
pub const DEFAULT_EXECUTION_TIMEOUT_MS: u64 = 5_000;
/// Longest execution timeout a tier may set: one hour.
pub const MAX_EXECUTION_TIMEOUT_MS: u64 = 3_600_000;

/// Default request body per invocation (`MAX_INPUT_SIZE`).
pub const DEFAULT_MAX_INPUT_BYTES: u64 = 1 << 20;
/// Largest request body a tier may allow.
pub const MAX_MAX_INPUT_BYTES: u64 = 1 << 30;

/// Default size of an uploaded component (`MAX_WASM_SIZE`).
pub const DEFAULT_MAX_COMPONENT_BYTES: u64 = 10 << 20;
/// Default component size of the basic tier (`BASIC_TIER_MAX_WASM_SIZE`):
/// room for a JavaScript (13 MB) or Python (18 MB) component.
pub const DEFAULT_BASIC_MAX_COMPONENT_BYTES: u64 = 32 << 20;
/// Default component size of the pro tier (`PRO_TIER_MAX_WASM_SIZE`): room
/// for a Python component with its libraries.
pub const DEFAULT_PRO_MAX_COMPONENT_BYTES: u64 = 64 << 20;
/// Largest component a tier may allow.
pub const MAX_MAX_COMPONENT_BYTES: u64 = 1 << 30;

/// Default longest key-value key.
pub const DEFAULT_KV_MAX_KEY_BYTES: u64 = 256;
/// Longest key-value key a tier may allow.
pub const MAX_KV_MAX_KEY_BYTES: u64 = 64 << 10;
/// Default longest key-value value.
pub const DEFAULT_KV_MAX_VALUE_BYTES: u64 = 1 << 20;
/// Longest key-value value a tier may allow.
pub const MAX_KV_MAX_VALUE_BYTES: u64 = 64 << 20;
/// Default key-value keys per tenant.
pub const DEFAULT_KV_MAX_KEYS: u64 = 10_000;
/// Default key-value bytes (keys plus values) per tenant.
pub const DEFAULT_KV_MAX_TOTAL_BYTES: u64 = 64 << 20;

/// The most requests one instance may serve (`max_instance_reuse`), and
/// the default cap of every tier.
pub const MAX_INSTANCE_REUSE: u32 = 10_000;

/// The most requests one WASIp3 instance may serve at once
/// (`max_instance_concurrency`).
pub const MAX_INSTANCE_CONCURRENCY: u32 = 1_000;
/// The default cap of every tier on `max_instance_concurrency`.
pub const DEFAULT_MAX_INSTANCE_CONCURRENCY: u32 = 100;

/// Default instances (one per request, or one per shared WASIp3 instance)
/// one tenant may run at once on one node
/// (`MAX_CONCURRENCY`): a tenth of the default instance pool, so that ten
/// busy tenants fit in it together.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 100;
/// Largest per-tenant concurrency cap a tier may set.
pub const MAX_MAX_CONCURRENCY: u32 = 1_000_000;

/// The default tiers' rates (`FREE_TIER_RATE_MINUTE` ... `PRO_TIER_RATE_DAY`):
/// name, requests per minute, requests per day.
pub const DEFAULT_TIER_RATES: [(&str, u64, u64); 3] =
    [("free", 10, 500), ("basic", 100, 10_000), ("pro", 500, 50_000)];

/// Default components one tenant may keep stored.
pub const DEFAULT_MAX_COMPONENTS: u64 = 100;
/// Default bytes of components one tenant may keep stored.
pub const DEFAULT_MAX_COMPONENT_STORAGE_BYTES: u64 = 1 << 30;
/// Default versions kept per deployment: older ones are pruned.
pub const DEFAULT_MAX_VERSIONS_PER_DEPLOYMENT: u64 = 20;
/// Default uploads one tenant may have in flight on one node.
pub const DEFAULT_MAX_UPLOADS_IN_FLIGHT: u64 = 2;
/// Default key-value writes one tenant may make per second on one node.
pub const DEFAULT_KV_WRITES_PER_SECOND: u64 = 1_000;

/// How a limit is written and what it may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    /// A byte count (`1MiB` on the command line).
    Bytes,
    /// A plain count.
    Count,
    /// Milliseconds (`5s`, `500ms` on the command line).
    Millis,
    /// A count, or `null` (`unlimited` on the command line) for no limit.
    Unlimited,
}

impl LimitKind {
    /// Whether `null` (no limit) is allowed.
    pub fn nullable(self) -> bool {
        self == LimitKind::Unlimited
    }
}

/// One limit of a tier, described once: its name (the field of the API,
/// the column of the store), how it is written, its range, the flag of
/// `wasmwiz admin tier set`, and what it means. The API's shape, the
/// command line, the store's columns and the console's tier editor are
/// derived from [`LIMITS`]; a test checks the API document against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LimitSpec {
    /// The field's name.
    pub name: &'static str,
    /// How it is written.
    #[serde(skip)]
    pub kind: LimitKind,
    /// Smallest value.
    pub min: u64,
    /// Largest value.
    pub max: u64,
    /// The flag of `wasmwiz admin tier set` (without `--`).
    #[serde(skip)]
    pub flag: &'static str,
    /// What it limits, in words.
    pub help: &'static str,
}

impl LimitSpec {
    /// The unit the API counts in, for people: `bytes`, `ms`, or empty.
    pub fn unit(&self) -> &'static str {
        match self.kind {
            LimitKind::Bytes => "bytes",
            LimitKind::Millis => "ms",
            LimitKind::Count | LimitKind::Unlimited => "",
        }
    }

    /// Whether `null` (no limit) is allowed.
    pub fn nullable(&self) -> bool {
        self.kind.nullable()
    }
}

/// Declares every limit of a tier once: the [`TierLimits`] struct, its
/// defaults, and [`LIMITS`].
macro_rules! tier_limits {
    ($(
        $(#[doc = $doc:literal])+
        $name:ident: $ty:ty = $default:expr,
            $kind:ident $min:literal..=$max:expr, flag $flag:literal;
    )+) => {
        /// The limits of a tier. A field missing from a stored or sent
        /// tier takes its default; an unknown one is refused.
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct TierLimits {
            $( $(#[doc = $doc])+ pub $name: $ty, )+
        }

        impl Default for TierLimits {
            /// The built-in defaults, unlimited rates.
            fn default() -> Self {
                Self { $( $name: $default, )+ }
            }
        }

        /// Every limit of a tier, in the order the API and the command
        /// line show them.
        pub const LIMITS: &[LimitSpec] = &[$(
            LimitSpec {
                name: stringify!($name),
                kind: LimitKind::$kind,
                min: $min,
                max: $max as u64,
                flag: $flag,
                help: concat!($($doc),+),
            },
        )+];
    };
}

tier_limits! {
    /// Invocations per UTC minute (null: unlimited).
    requests_per_minute: Option<u64> = None, Unlimited 0..=u64::MAX, flag "per-minute";
    /// Invocations per UTC day (null: unlimited).
    requests_per_day: Option<u64> = None, Unlimited 0..=u64::MAX, flag "per-day";
    /// Linear memory one instance may grow to.
    memory_limit_bytes: u64 = DEFAULT_MEMORY_LIMIT_BYTES,
        Bytes 1048576..=MAX_MEMORY_LIMIT_BYTES, flag "memory";
    /// Wall-clock time of one invocation, computing or waiting.
    execution_timeout_ms: u64 = DEFAULT_EXECUTION_TIMEOUT_MS,
        Millis 1..=MAX_EXECUTION_TIMEOUT_MS, flag "timeout";
    /// Largest request body one invocation receives.
    max_input_bytes: u64 = DEFAULT_MAX_INPUT_BYTES, Bytes 0..=MAX_MAX_INPUT_BYTES, flag "max-input";
    /// Largest component the tenant may upload.
    max_component_bytes: u64 = DEFAULT_MAX_COMPONENT_BYTES,
        Bytes 1..=MAX_MAX_COMPONENT_BYTES, flag "max-component";
    /// Components the tenant may keep stored.
    max_components: u64 = DEFAULT_MAX_COMPONENTS, Count 1..=1_000_000, flag "max-components";
    /// Bytes of components the tenant may keep stored, all together.
    max_component_storage_bytes: u64 = DEFAULT_MAX_COMPONENT_STORAGE_BYTES,
        Bytes 1..=i64::MAX, flag "max-component-storage";
    /// Uploads the tenant may have in flight at once on one node (each is
    /// held in memory until compiled).
    max_uploads_in_flight: u64 = DEFAULT_MAX_UPLOADS_IN_FLIGHT,
        Count 1..=1_000, flag "max-uploads-in-flight";
    /// Versions kept per deployment: older ones are pruned (never the live
    /// one).
    max_versions_per_deployment: u64 = DEFAULT_MAX_VERSIONS_PER_DEPLOYMENT,
        Count 1..=10_000, flag "max-versions";
    /// Longest key-value key.
    kv_max_key_bytes: u64 = DEFAULT_KV_MAX_KEY_BYTES,
        Bytes 1..=MAX_KV_MAX_KEY_BYTES, flag "kv-max-key";
    /// Longest key-value value.
    kv_max_value_bytes: u64 = DEFAULT_KV_MAX_VALUE_BYTES,
        Bytes 0..=MAX_KV_MAX_VALUE_BYTES, flag "kv-max-value";
    /// Key-value keys the tenant may keep.
    kv_max_keys: u64 = DEFAULT_KV_MAX_KEYS, Count 0..=i64::MAX, flag "kv-max-keys";
    /// Key-value bytes (keys plus values) the tenant may keep.
    kv_max_total_bytes: u64 = DEFAULT_KV_MAX_TOTAL_BYTES, Bytes 0..=i64::MAX, flag "kv-max-total";
    /// Key-value writes (sets, deletes, increments) the tenant may make per
    /// second on one node; past it a write gets an error value.
    kv_writes_per_second: u64 = DEFAULT_KV_WRITES_PER_SECOND,
        Count 1..=1_000_000_000, flag "kv-writes-per-second";
    /// The most `max_instance_reuse` a deployment of the tier may ask for
    /// (1: every request on a fresh instance).
    max_instance_reuse: u32 = MAX_INSTANCE_REUSE,
        Count 1..=MAX_INSTANCE_REUSE, flag "max-instance-reuse";
    /// The most `max_instance_concurrency` a WASIp3 deployment of the tier
    /// may ask for (1: one request at a time per instance).
    max_instance_concurrency: u32 = DEFAULT_MAX_INSTANCE_CONCURRENCY,
        Count 1..=MAX_INSTANCE_CONCURRENCY, flag "max-instance-concurrency";
    /// Instances one tenant may run at once on one node (null: no cap
    /// beyond the instance pool's fair share).
    max_concurrency: Option<u32> = Some(DEFAULT_MAX_CONCURRENCY),
        Unlimited 1..=MAX_MAX_CONCURRENCY, flag "max-concurrency";
    /// Schedules the tenant may keep.
    max_schedules: u64 = 20, Count 0..=100_000, flag "max-schedules";
    /// Shortest interval between two firings of a schedule, in seconds.
    min_schedule_interval_s: u64 = 10, Count 1..=86_400, flag "min-schedule-interval";
    /// Queues the tenant may keep.
    max_queues: u64 = 10, Count 0..=10_000, flag "max-queues";
    /// Largest queue message.
    max_message_bytes: u64 = 256 << 10, Bytes 1..=MAX_MAX_INPUT_BYTES, flag "max-message";
    /// Messages the tenant may publish per second on one node (through the
    /// API or from its components).
    max_publishes_per_second: u64 = 1_000, Count 1..=1_000_000_000, flag "max-publishes-per-second";
    /// Messages one queue may hold waiting (ready, retrying or dead);
    /// past it a publish gets 429.
    max_queue_backlog: u64 = 100_000, Count 1..=1_000_000_000, flag "max-queue-backlog";
}

impl TierLimits {
    /// Checks every limit is within its range; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        let value = serde_json::to_value(self).map_err(|e| e.to_string())?;
        for spec in LIMITS {
            match &value[spec.name] {
                serde_json::Value::Null if spec.nullable() => {}
                serde_json::Value::Number(n)
                    if n.as_u64().is_some_and(|n| (spec.min..=spec.max).contains(&n)) => {}
                _ => {
                    let null = if spec.nullable() { ", or null for no limit" } else { "" };
                    return Err(format!(
                        "{} must be between {} and {}{null}",
                        spec.name, spec.min, spec.max
                    ));
                }
            }
        }
        Ok(())
    }

    /// This tier's limits as a JSON object (field by field, as [`LIMITS`]
    /// names them).
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => unreachable!("a struct of numbers is a JSON object"),
        }
    }

    /// Limits from a JSON object: missing fields take their defaults,
    /// unknown ones and wrong types are refused (the message names them).
    pub fn from_json(map: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| e.to_string())
    }
}

/// A change to a tier's limits: each field given replaces the current
/// value; `null` on a limit that allows it removes the limit. What
/// `PUT /api/v1/tiers/{name}` and `wasmwiz admin tier set` both send.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TierPatch(pub serde_json::Map<String, serde_json::Value>);

impl TierPatch {
    /// `base` with this patch's fields applied; an unknown field or a value
    /// of the wrong kind is refused, naming it.
    pub fn apply(&self, base: &TierLimits) -> Result<TierLimits, String> {
        let mut limits = base.to_json();
        for (name, value) in &self.0 {
            let Some(spec) = LIMITS.iter().find(|spec| spec.name == name) else {
                let names: Vec<&str> = LIMITS.iter().map(|spec| spec.name).collect();
                return Err(format!("unknown limit `{name}` (limits: {})", names.join(", ")));
            };
            // `null` where a limit cannot be lifted is the same as leaving
            // it out: the base's value stays.
            if value.is_null() && !spec.nullable() {
                continue;
            }
            limits.insert(name.clone(), value.clone());
        }
        TierLimits::from_json(limits)
    }

    /// Sets `name` to `value`.
    pub fn set(&mut self, name: &str, value: serde_json::Value) {
        self.0.insert(name.to_string(), value);
    }
}

/// A named tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tier {
    /// Its name (`free`, `basic`, `pro`, or one an operator added).
    pub name: String,
    /// Its limits.
    pub limits: TierLimits,
}

/// Whether `name` can name a tenant or a tier: lower-case letters, digits,
/// `-` and `_`, starting with a letter or digit, at most 63 characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// What a name that [`valid_name`] refuses should look like, for messages.
pub const NAME_RULE: &str = "1 to 63 lower-case letters, digits, `-` or `_`";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_within_their_ranges() {
        assert_eq!(TierLimits::default().check(), Ok(()));
    }

    #[test]
    fn a_patch_replaces_only_what_it_names() {
        let base = TierLimits { requests_per_minute: Some(10), ..TierLimits::default() };
        let mut patch = TierPatch::default();
        patch.set("requests_per_day", serde_json::Value::Null);
        patch.set("max_concurrency", serde_json::json!(5));
        let limits = patch.apply(&base).unwrap();
        assert_eq!(limits.requests_per_minute, Some(10));
        assert_eq!(limits.requests_per_day, None);
        assert_eq!(limits.max_concurrency, Some(5));
        assert_eq!(limits.memory_limit_bytes, base.memory_limit_bytes);
        patch.set("memory_limit_bytes", serde_json::Value::Null);
        assert_eq!(patch.apply(&base).unwrap().memory_limit_bytes, base.memory_limit_bytes);
        patch.set("memory_limit_bytes", serde_json::json!("big"));
        assert!(patch.apply(&base).unwrap_err().contains("invalid type"));
        let mut unknown = TierPatch::default();
        unknown.set("nope", serde_json::json!(1));
        assert!(unknown.apply(&base).unwrap_err().contains("unknown limit `nope`"));
    }

    #[test]
    fn every_limit_is_described_once_and_its_default_is_in_range() {
        let json = TierLimits::default().to_json();
        let names: Vec<&str> = LIMITS.iter().map(|spec| spec.name).collect();
        assert_eq!(
            json.keys().map(String::as_str).collect::<std::collections::BTreeSet<_>>(),
            names.iter().copied().collect()
        );
        let flags: std::collections::BTreeSet<_> = LIMITS.iter().map(|spec| spec.flag).collect();
        assert_eq!(flags.len(), LIMITS.len(), "flags are distinct");
        // A stored tier written before a limit existed takes its default.
        let old: TierLimits = serde_json::from_str(r#"{"memory_limit_bytes": 2097152}"#).unwrap();
        assert_eq!(old.max_components, DEFAULT_MAX_COMPONENTS);
        assert_eq!(old.memory_limit_bytes, 2 << 20);
    }

    #[test]
    fn a_concurrency_cap_of_zero_is_refused_and_none_is_no_cap() {
        let zero = TierLimits { max_concurrency: Some(0), ..TierLimits::default() };
        assert!(zero.check().unwrap_err().contains("max_concurrency"));
        let none = TierLimits { max_concurrency: None, ..TierLimits::default() };
        assert_eq!(none.check(), Ok(()));
    }

    #[test]
    fn names_are_lower_case_words() {
        assert!(valid_name("acme-2"));
        assert!(!valid_name("Acme"));
        assert!(!valid_name("-acme"));
        assert!(!valid_name(""));
    }
}
