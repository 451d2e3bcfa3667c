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

/// The limits of a tier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierLimits {
    /// Invocations per UTC minute; `None` is unlimited.
    pub requests_per_minute: Option<u64>,
    /// Invocations per UTC day; `None` is unlimited.
    pub requests_per_day: Option<u64>,
    /// Linear memory per instance.
    pub memory_limit_bytes: u64,
    /// Wall-clock time per invocation.
    pub execution_timeout_ms: u64,
    /// Request body per invocation.
    pub max_input_bytes: u64,
    /// Size of an uploaded component.
    pub max_component_bytes: u64,
    /// Longest key-value key.
    pub kv_max_key_bytes: u64,
    /// Longest key-value value.
    pub kv_max_value_bytes: u64,
    /// Key-value keys per tenant.
    pub kv_max_keys: u64,
    /// Key-value bytes (keys plus values) per tenant.
    pub kv_max_total_bytes: u64,
    /// The most `max_instance_reuse` a deployment of this tier may ask for
    /// (1: every request on a fresh instance, whatever the deployment asks).
    pub max_instance_reuse: u32,
    /// The most `max_instance_concurrency` a WASIp3 deployment of this tier
    /// may ask for (1: one request at a time per instance).
    pub max_instance_concurrency: u32,
    /// Invocations one tenant of this tier may run at once on one node;
    /// `None`: no cap beyond the instance pool's fair share.
    pub max_concurrency: Option<u32>,
}

impl Default for TierLimits {
    /// The built-in defaults, unlimited rates.
    fn default() -> Self {
        Self {
            requests_per_minute: None,
            requests_per_day: None,
            memory_limit_bytes: DEFAULT_MEMORY_LIMIT_BYTES,
            execution_timeout_ms: DEFAULT_EXECUTION_TIMEOUT_MS,
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
            max_component_bytes: DEFAULT_MAX_COMPONENT_BYTES,
            kv_max_key_bytes: DEFAULT_KV_MAX_KEY_BYTES,
            kv_max_value_bytes: DEFAULT_KV_MAX_VALUE_BYTES,
            kv_max_keys: DEFAULT_KV_MAX_KEYS,
            kv_max_total_bytes: DEFAULT_KV_MAX_TOTAL_BYTES,
            max_instance_reuse: MAX_INSTANCE_REUSE,
            max_instance_concurrency: DEFAULT_MAX_INSTANCE_CONCURRENCY,
            max_concurrency: Some(DEFAULT_MAX_CONCURRENCY),
        }
    }
}

impl TierLimits {
    /// Checks every limit is within its range; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        if !(MIN_MEMORY_LIMIT_BYTES..=MAX_MEMORY_LIMIT_BYTES).contains(&self.memory_limit_bytes) {
            return Err("memory_limit_bytes must be between 1 MiB and 4 GiB".into());
        }
        if !(1..=MAX_EXECUTION_TIMEOUT_MS).contains(&self.execution_timeout_ms) {
            return Err(format!(
                "execution_timeout_ms must be between 1 and {MAX_EXECUTION_TIMEOUT_MS}"
            ));
        }
        if self.max_input_bytes > MAX_MAX_INPUT_BYTES {
            return Err("max_input_bytes must be at most 1 GiB".into());
        }
        if !(1..=MAX_MAX_COMPONENT_BYTES).contains(&self.max_component_bytes) {
            return Err("max_component_bytes must be between 1 byte and 1 GiB".into());
        }
        if !(1..=MAX_KV_MAX_KEY_BYTES).contains(&self.kv_max_key_bytes) {
            return Err("kv_max_key_bytes must be between 1 byte and 64 KiB".into());
        }
        if self.kv_max_value_bytes > MAX_KV_MAX_VALUE_BYTES {
            return Err("kv_max_value_bytes must be at most 64 MiB".into());
        }
        if self.kv_max_keys > i64::MAX as u64 || self.kv_max_total_bytes > i64::MAX as u64 {
            return Err("kv_max_keys and kv_max_total_bytes must fit in 63 bits".into());
        }
        if !(1..=MAX_INSTANCE_REUSE).contains(&self.max_instance_reuse) {
            return Err(format!("max_instance_reuse must be between 1 and {MAX_INSTANCE_REUSE}"));
        }
        if !(1..=MAX_INSTANCE_CONCURRENCY).contains(&self.max_instance_concurrency) {
            return Err(format!(
                "max_instance_concurrency must be between 1 and {MAX_INSTANCE_CONCURRENCY}"
            ));
        }
        if let Some(cap) = self.max_concurrency
            && !(1..=MAX_MAX_CONCURRENCY).contains(&cap)
        {
            return Err(format!(
                "max_concurrency must be between 1 and {MAX_MAX_CONCURRENCY}, or null for no cap"
            ));
        }
        Ok(())
    }
}

/// A change to a tier's limits: each field given replaces the current
/// value; `Some(None)` on a rate or the concurrency cap removes the limit.
/// What `PUT /api/v1/tiers/{name}` and `wasmwiz admin tier set` both send.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TierPatch {
    /// Requests per minute (`Some(None)`: unlimited).
    pub requests_per_minute: Option<Option<u64>>,
    /// Requests per day (`Some(None)`: unlimited).
    pub requests_per_day: Option<Option<u64>>,
    /// Linear memory per instance.
    pub memory_limit_bytes: Option<u64>,
    /// Time per invocation.
    pub execution_timeout_ms: Option<u64>,
    /// Request body per invocation.
    pub max_input_bytes: Option<u64>,
    /// Component size.
    pub max_component_bytes: Option<u64>,
    /// Longest key-value key.
    pub kv_max_key_bytes: Option<u64>,
    /// Longest key-value value.
    pub kv_max_value_bytes: Option<u64>,
    /// Key-value keys per tenant.
    pub kv_max_keys: Option<u64>,
    /// Key-value bytes per tenant.
    pub kv_max_total_bytes: Option<u64>,
    /// Cap on `max_instance_reuse`.
    pub max_instance_reuse: Option<u32>,
    /// Cap on `max_instance_concurrency`.
    pub max_instance_concurrency: Option<u32>,
    /// Concurrent invocations per tenant and node (`Some(None)`: no cap).
    pub max_concurrency: Option<Option<u32>>,
}

impl TierPatch {
    /// `base` with this patch's fields applied.
    pub fn apply(&self, base: &TierLimits) -> TierLimits {
        TierLimits {
            requests_per_minute: self.requests_per_minute.unwrap_or(base.requests_per_minute),
            requests_per_day: self.requests_per_day.unwrap_or(base.requests_per_day),
            memory_limit_bytes: self.memory_limit_bytes.unwrap_or(base.memory_limit_bytes),
            execution_timeout_ms: self.execution_timeout_ms.unwrap_or(base.execution_timeout_ms),
            max_input_bytes: self.max_input_bytes.unwrap_or(base.max_input_bytes),
            max_component_bytes: self.max_component_bytes.unwrap_or(base.max_component_bytes),
            kv_max_key_bytes: self.kv_max_key_bytes.unwrap_or(base.kv_max_key_bytes),
            kv_max_value_bytes: self.kv_max_value_bytes.unwrap_or(base.kv_max_value_bytes),
            kv_max_keys: self.kv_max_keys.unwrap_or(base.kv_max_keys),
            kv_max_total_bytes: self.kv_max_total_bytes.unwrap_or(base.kv_max_total_bytes),
            max_instance_reuse: self.max_instance_reuse.unwrap_or(base.max_instance_reuse),
            max_instance_concurrency: self
                .max_instance_concurrency
                .unwrap_or(base.max_instance_concurrency),
            max_concurrency: self.max_concurrency.unwrap_or(base.max_concurrency),
        }
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
        let patch = TierPatch {
            requests_per_day: Some(None),
            max_concurrency: Some(Some(5)),
            ..TierPatch::default()
        };
        let limits = patch.apply(&base);
        assert_eq!(limits.requests_per_minute, Some(10));
        assert_eq!(limits.requests_per_day, None);
        assert_eq!(limits.max_concurrency, Some(5));
        assert_eq!(limits.memory_limit_bytes, base.memory_limit_bytes);
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
