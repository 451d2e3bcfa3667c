//! API keys: format, hashing, scopes, and the cache that keeps the store off
//! the path of every authenticated request.
//!
//! A key is `ww_` + 32 base62 characters (190 random bits) + a 6-character
//! base62 CRC32 of the random part, like GitHub's and Stripe's tokens: a
//! malformed or mistyped key is refused without a store lookup, and secret
//! scanners can recognise leaked ones. Only HMAC-SHA256(`API_SALT`, key) is
//! stored, and the stored hash is compared in constant time.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac as _};
use rand::Rng as _;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use crate::store::{ApiKeyRecord, Store, StoreError};
use crate::tenancy::TenantId;

/// Every key starts with this.
pub const KEY_PREFIX: &str = "ww_";
const RANDOM_LEN: usize = 32;
const CHECKSUM_LEN: usize = 6;
/// Total length of a key.
pub const KEY_LEN: usize = KEY_PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN;
/// Characters of a key kept (and shown) to recognise it.
pub const DISPLAY_PREFIX_LEN: usize = KEY_PREFIX.len() + 8;
pub use crate::config::MIN_SALT_LEN;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// How long a cached key is trusted at most. Revocations reach every node
/// much sooner: a change clears every node's cache (see `Node`).
const CACHE_TTL: Duration = Duration::from_secs(30);
/// How long an unknown key is remembered as unknown (so guessing keys does
/// not become a way to load the database).
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Entries kept before the cache is emptied wholesale.
const CACHE_CAPACITY: usize = 10_000;

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Operators: tenants, tiers, every tenant's keys.
    Admin,
    /// Upload components, deploy, roll back, delete.
    Deploy,
    /// Read the tenant's objects and usage.
    Read,
}

impl Scope {
    const ALL: [Scope; 3] = [Scope::Admin, Scope::Deploy, Scope::Read];

    fn bit(self) -> u8 {
        match self {
            Scope::Admin => 1,
            Scope::Deploy => 2,
            Scope::Read => 4,
        }
    }

    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Deploy => "deploy",
            Scope::Read => "read",
        }
    }
}

/// A set of scopes.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    /// What a tenant key gets unless told otherwise.
    pub const TENANT_DEFAULT: Scopes = Scopes(2 | 4);
    /// Everything.
    pub const ALL: Scopes = Scopes(1 | 2 | 4);

    /// Parses `admin,deploy,read` (any order, any subset).
    pub fn parse(text: &str) -> Result<Scopes, String> {
        let mut scopes = Scopes::default();
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let scope = Scope::ALL
                .into_iter()
                .find(|s| s.as_str() == name)
                .ok_or_else(|| format!("unknown scope `{name}` (admin, deploy, read)"))?;
            scopes = scopes.with(scope);
        }
        Ok(scopes)
    }

    /// These scopes plus `scope`.
    pub fn with(self, scope: Scope) -> Scopes {
        Scopes(self.0 | scope.bit())
    }

    /// Whether `scope` is included.
    pub fn has(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Whether every scope of `other` is included.
    pub fn covers(self, other: Scopes) -> bool {
        self.0 & other.0 == other.0
    }

    /// Names of the scopes included.
    pub fn names(self) -> Vec<&'static str> {
        Scope::ALL.into_iter().filter(|s| self.has(*s)).map(Scope::as_str).collect()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

/// A freshly generated key: `key` is shown once and never stored.
#[derive(Clone)]
pub struct GeneratedKey {
    /// The secret, `ww_...`.
    pub key: String,
    /// Its first characters, stored and shown.
    pub prefix: String,
    /// HMAC-SHA256(salt, key), stored.
    pub hash: Vec<u8>,
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

fn checksum(random: &str) -> String {
    let mut n = crc32fast::hash(random.as_bytes()) as u64;
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out.to_vec()).expect("base62 is ASCII")
}

/// Generates a new key for `salt`.
pub fn generate(salt: &[u8]) -> GeneratedKey {
    let mut rng = rand::rng();
    let random: String =
        (0..RANDOM_LEN).map(|_| BASE62[rng.random_range(0..BASE62.len())] as char).collect();
    let key = format!("{KEY_PREFIX}{random}{}", checksum(&random));
    GeneratedKey { prefix: key[..DISPLAY_PREFIX_LEN].to_string(), hash: hash(salt, &key), key }
}

/// Generates a key with `scopes` for `tenant_id` and stores its hash;
/// returns the secret (to show once) and the stored record.
pub async fn issue_key(
    store: &dyn Store,
    salt: &[u8],
    tenant_id: TenantId,
    scopes: Scopes,
) -> Result<(String, ApiKeyRecord), StoreError> {
    let generated = generate(salt);
    let stored = store
        .create_key(&crate::store::NewApiKey {
            id: crate::store::new_id("key_"),
            tenant_id,
            prefix: generated.prefix.clone(),
            hash: generated.hash.clone(),
            scopes: scopes.to_string(),
        })
        .await?;
    Ok((generated.key, stored))
}

/// Whether `key` has the right prefix, length, alphabet and checksum.
pub fn well_formed(key: &str) -> bool {
    let Some(body) = key.strip_prefix(KEY_PREFIX) else {
        return false;
    };
    if key.len() != KEY_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let (random, check) = body.split_at(RANDOM_LEN);
    checksum(random) == check
}

/// HMAC-SHA256(salt, key).
pub fn hash(salt: &[u8], key: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(salt).expect("HMAC takes a key of any length");
    mac.update(key.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Who is calling: the key's owner and what the key may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The key's id.
    pub key_id: String,
    /// The key's first characters, as listed (`ww_` and eight more).
    pub prefix: String,
    /// The tenant the key belongs to.
    pub tenant_id: TenantId,
    /// Its name.
    pub tenant: String,
    /// Its tier's name.
    pub tier: String,
    /// The key's scopes.
    pub scopes: Scopes,
}

impl Principal {
    /// Whether the key has the admin scope.
    pub fn is_admin(&self) -> bool {
        self.scopes.has(Scope::Admin)
    }
}

/// Why a request was not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("an API key is required: send `Authorization: Bearer ww_...`")]
    Missing,
    /// Malformed, unknown or revoked.
    #[error("the API key is not valid")]
    Invalid,
    /// The store could not be asked.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
enum Cached {
    Known(Principal),
    Unknown,
}

/// Checks keys against the store, through a cache.
pub struct Authenticator {
    store: Arc<dyn Store>,
    salt: Vec<u8>,
    cache: Mutex<HashMap<Vec<u8>, (Cached, Instant, u64)>>,
    /// Moves whenever keys, tenants or tiers may have changed anywhere (the
    /// node's rebuilds): an entry cached before it moved is not used, so a
    /// revocation through another node takes effect at the next request
    /// after this node has seen it.
    changes: Arc<AtomicU64>,
    /// When each key's use was last written to the store by this node.
    touched: Mutex<HashMap<String, Instant>>,
}

/// A key's `last_used_at` is written at most this often per node.
pub const TOUCH_EVERY: Duration = Duration::from_secs(60);

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator for keys hashed with `salt`, whose cache holds
    /// until `changes` moves.
    pub fn new(store: Arc<dyn Store>, salt: Vec<u8>, changes: Arc<AtomicU64>) -> Self {
        Self {
            store,
            salt,
            cache: Mutex::new(HashMap::new()),
            changes,
            touched: Mutex::new(HashMap::new()),
        }
    }

    /// Moves whenever keys may have changed anywhere: whoever holds on to
    /// a key for long (a log follower) checks it again when this moved.
    pub fn generation(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// The salt keys are hashed with.
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// Authenticates the value of an `Authorization` header.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let key = authorization
            .and_then(|value| {
                let (scheme, rest) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .ok_or(AuthError::Missing)?;
        if !well_formed(key) {
            return Err(AuthError::Invalid);
        }
        let hashed = hash(&self.salt, key);
        if let Some(cached) = self.cached(&hashed) {
            return match cached {
                Cached::Known(principal) => {
                    self.touch(&principal.key_id);
                    Ok(principal)
                }
                Cached::Unknown => Err(AuthError::Invalid),
            };
        }
        // Read before the store: a change seen meanwhile makes this entry old.
        let generation = self.changes.load(Ordering::Acquire);
        let record = self.store.key_by_hash(&hashed).await?;
        let entry = match record {
            Some(record) if record.revoked_at.is_none() && hashes_match(&record, &hashed) => {
                Cached::Known(principal_of(&record))
            }
            _ => Cached::Unknown,
        };
        self.remember(hashed, entry.clone(), generation);
        match entry {
            Cached::Known(principal) => {
                self.touch(&principal.key_id);
                Ok(principal)
            }
            Cached::Unknown => Err(AuthError::Invalid),
        }
    }

    /// Writes that key `id` was used now, unless this node did less than
    /// [`TOUCH_EVERY`] ago; in the background, so no request waits for it.
    fn touch(&self, id: &str) {
        {
            let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            if touched.get(id).is_some_and(|at| at.elapsed() < TOUCH_EVERY) {
                return;
            }
            if touched.len() >= CACHE_CAPACITY {
                touched.clear();
            }
            touched.insert(id.to_string(), Instant::now());
        }
        let (store, id) = (self.store.clone(), id.to_string());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        tokio::spawn(async move {
            if let Err(e) = store.touch_key(&id, now).await {
                tracing::debug!(error = %e, "a key's last use was not written");
            }
        });
    }

    fn cached(&self, hashed: &[u8]) -> Option<Cached> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let (entry, at, generation) = cache.get(hashed)?;
        let ttl = match entry {
            Cached::Known(_) => CACHE_TTL,
            Cached::Unknown => NEGATIVE_TTL,
        };
        let current = *generation == self.changes.load(Ordering::Acquire);
        (current && at.elapsed() < ttl).then(|| entry.clone())
    }

    fn remember(&self, hashed: Vec<u8>, entry: Cached, generation: u64) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(hashed, (entry, Instant::now(), generation));
    }

    /// Forgets every cached key: a key revoked through this node is
    /// refused at once.
    pub fn invalidate_all(&self) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

fn hashes_match(record: &ApiKeyRecord, hashed: &[u8]) -> bool {
    record.key_hash.as_slice().ct_eq(hashed).into()
}

fn principal_of(record: &ApiKeyRecord) -> Principal {
    Principal {
        key_id: record.id.clone(),
        prefix: record.prefix.clone(),
        tenant_id: record.tenant_id,
        tenant: record.tenant.clone(),
        tier: record.tier.clone(),
        scopes: Scopes::parse(&record.scopes).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed_and_distinct() {
        let a = generate(b"salt");
        let b = generate(b"salt");
        assert!(well_formed(&a.key), "{}", a.key);
        assert_eq!(a.key.len(), KEY_LEN);
        assert!(a.key.starts_with(&a.prefix));
        assert_ne!(a.key, b.key);
        assert_eq!(a.hash, hash(b"salt", &a.key));
        assert_ne!(a.hash, hash(b"other salt", &a.key));
    }

    #[test]
    fn a_mistyped_key_fails_its_checksum() {
        let key = generate(b"salt").key;
        let mut chars: Vec<char> = key.chars().collect();
        chars[10] = if chars[10] == 'a' { 'b' } else { 'a' };
        let typo: String = chars.into_iter().collect();
        assert!(!well_formed(&typo));
        assert!(!well_formed(&key[..KEY_LEN - 1]));
        assert!(!well_formed(&format!("xx_{}", &key[3..])));
        assert!(!well_formed(""));
        assert!(!well_formed(&format!("{}é", &key[..KEY_LEN - 2])));
    }

    #[tokio::test]
    async fn a_cached_key_is_not_looked_up_again_until_something_changes() {
        use crate::store::sqlite::SqliteStore;
        use crate::tenancy::{Tier, TierLimits};
        let dir = tempfile::tempdir().unwrap();
        let sqlite = SqliteStore::open(dir.path()).await.unwrap();
        let store: Arc<dyn Store> = Arc::new(sqlite.clone());
        store.migrate().await.unwrap();
        let limits = TierLimits {
            requests_per_minute: None,
            requests_per_day: None,
            memory_limit_bytes: 1 << 20,
            execution_timeout_ms: 1000,
            max_input_bytes: 1024,
            max_component_bytes: 1024,
            ..TierLimits::default()
        };
        store.seed_tiers(&[Tier { name: "t".into(), limits }]).await.unwrap();
        let tenant = store.create_tenant("acme", "t").await.unwrap();
        let (key, _) =
            issue_key(store.as_ref(), b"salt", tenant.id, Scopes::TENANT_DEFAULT).await.unwrap();
        let changes = Arc::new(AtomicU64::new(0));
        let auth = Authenticator::new(store, b"salt".to_vec(), changes.clone());
        let header = format!("Bearer {key}");

        let principal = auth.authenticate(Some(&header)).await.unwrap();
        assert_eq!(principal.tenant, "acme");
        // Remove the key behind the authenticator's back: a store lookup
        // would now fail, so success proves the cache answered.
        sqlx::query("DELETE FROM api_keys").execute(sqlite.pool()).await.unwrap();
        assert!(auth.authenticate(Some(&header)).await.is_ok(), "not served from the cache");
        // A change seen by the node (another node revoked it) ends the entry.
        changes.fetch_add(1, Ordering::Release);
        assert!(matches!(auth.authenticate(Some(&header)).await, Err(AuthError::Invalid)));
    }

    #[test]
    fn scopes_parse_print_and_compare() {
        let s = Scopes::parse("read, deploy").unwrap();
        assert!(s.has(Scope::Read) && s.has(Scope::Deploy) && !s.has(Scope::Admin));
        assert_eq!(s.to_string(), "deploy,read");
        assert_eq!(s, Scopes::TENANT_DEFAULT);
        assert!(Scopes::ALL.covers(s));
        assert!(!s.covers(Scopes::ALL));
        assert!(Scopes::parse("root").is_err());
    }
}
