//! Secrets at rest: the values of deployments' `secrets`, sealed with a key
//! the operator holds (`SECRETS_KEY`), so that the store, its dumps and its
//! backups hold only ciphertext.
//!
//! Each value is sealed on its own with ChaCha20-Poly1305 (ring's, which
//! rustls already brings in) under a fresh random nonce, bound to where it
//! belongs (tenant, host, route and the secret's name, as associated data):
//! a sealed value copied into another deployment's row, or under another
//! name, does not open. A sealed value reads
//! `wwsec1:<key id>:<base64 of nonce and ciphertext>`, where the key id is
//! the first 8 hex digits of the key's SHA-256: a node holding the current
//! key and the previous ones (`SECRETS_KEY_PREVIOUS`) opens what any of them
//! sealed, and `wasmwiz admin secrets rotate` seals everything again under
//! the current key, after which the previous ones can be dropped.
//!
//! The values are opened only where a node builds a route's configuration;
//! the API never returns them, and nothing logs them.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};
use sha2::{Digest as _, Sha256};

/// What every sealed value starts with.
pub const SEALED_PREFIX: &str = "wwsec1:";
/// Bytes of a key.
pub const KEY_LEN: usize = 32;

/// Why a key or a sealed value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// A key that is not 32 bytes in base64 or hex.
    #[error("a secrets key is 32 bytes, written in base64 (44 characters) or hex (64)")]
    BadKey,
    /// A value sealed under a key this node does not hold.
    #[error(
        "sealed under key {0}, which this node does not hold (SECRETS_KEY, SECRETS_KEY_PREVIOUS)"
    )]
    UnknownKey(String),
    /// A value that does not open: damaged, or moved from where it was sealed.
    #[error("a sealed secret does not open: damaged, or not sealed for this deployment")]
    Damaged,
}

/// Where a secret belongs: what its seal is bound to.
#[derive(Clone, Copy, Debug)]
pub struct Place<'a> {
    /// The tenant's id.
    pub tenant: i64,
    /// The deployment's host, if bound to one.
    pub host: Option<&'a str>,
    /// The deployment's route.
    pub route: &'a str,
}

impl Place<'_> {
    fn aad(&self, name: &str) -> Vec<u8> {
        format!("{}\0{}\0{}\0{name}", self.tenant, self.host.unwrap_or(""), self.route).into_bytes()
    }
}

struct Key {
    id: String,
    key: LessSafeKey,
}

impl Key {
    fn new(bytes: &[u8; KEY_LEN]) -> Self {
        let id = hex::encode(&Sha256::digest(bytes)[..4]);
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("a 32-byte key");
        Self { id, key: LessSafeKey::new(unbound) }
    }
}

/// The keys of one node: the current one seals, every one opens.
pub struct Keyring {
    current: Key,
    previous: Vec<Key>,
    random: SystemRandom,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let previous: Vec<&str> = self.previous.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring")
            .field("current", &self.current.id)
            .field("previous", &previous)
            .finish()
    }
}

impl Keyring {
    /// A keyring sealing with `current` and opening with it and `previous`.
    pub fn new(current: &[u8; KEY_LEN], previous: &[[u8; KEY_LEN]]) -> Self {
        Self {
            current: Key::new(current),
            previous: previous.iter().map(Key::new).collect(),
            random: SystemRandom::new(),
        }
    }

    /// The id of the key that seals (for messages).
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Reads a key written in base64 or hex.
    pub fn parse_key(text: &str) -> Result<[u8; KEY_LEN], SecretError> {
        let text = text.trim();
        let bytes = if text.len() == KEY_LEN * 2 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|_| SecretError::BadKey)?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| SecretError::BadKey)?
        };
        bytes.try_into().map_err(|_| SecretError::BadKey)
    }

    /// A new random key, in base64.
    pub fn generate_key() -> String {
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new().fill(&mut key).expect("the system's random source");
        base64::engine::general_purpose::STANDARD.encode(key)
    }

    /// Whether `value` is sealed (by any key).
    pub fn is_sealed(value: &str) -> bool {
        value.starts_with(SEALED_PREFIX)
    }

    /// Seals `value`, the secret `name` of the deployment at `place`.
    pub fn seal(&self, place: Place<'_>, name: &str, value: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).expect("the system's random source");
        let mut data = value.as_bytes().to_vec();
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place.aad(name)),
                &mut data,
            )
            .expect("sealing fits in memory");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!(
            "{SEALED_PREFIX}{}:{}",
            self.current.id,
            base64::engine::general_purpose::STANDARD.encode(out)
        )
    }

    /// Opens a value sealed by [`Self::seal`] under any key of the ring.
    pub fn open(&self, place: Place<'_>, name: &str, sealed: &str) -> Result<String, SecretError> {
        let rest = sealed.strip_prefix(SEALED_PREFIX).ok_or(SecretError::Damaged)?;
        let (id, body) = rest.split_once(':').ok_or(SecretError::Damaged)?;
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
            .ok_or_else(|| SecretError::UnknownKey(id.to_string()))?;
        let mut data = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| SecretError::Damaged)?;
        if data.len() < NONCE_LEN {
            return Err(SecretError::Damaged);
        }
        let mut ciphertext = data.split_off(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = data.try_into().map_err(|_| SecretError::Damaged)?;
        let plain = key
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place.aad(name)),
                &mut ciphertext,
            )
            .map_err(|_| SecretError::Damaged)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretError::Damaged)
    }

    /// Every value of `secrets`, taken as plain text (as a client sent it,
    /// whatever it looks like), sealed.
    pub fn seal_values(
        &self,
        place: Place<'_>,
        secrets: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        secrets.iter().map(|(name, value)| (name.clone(), self.seal(place, name, value))).collect()
    }

    /// Every value of `secrets` sealed (values sealed already are sealed
    /// again under the current key).
    pub fn seal_all(
        &self,
        place: Place<'_>,
        secrets: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, SecretError> {
        secrets
            .iter()
            .map(|(name, value)| {
                let plain = if Self::is_sealed(value) {
                    self.open(place, name, value)?
                } else {
                    value.clone()
                };
                Ok((name.clone(), self.seal(place, name, &plain)))
            })
            .collect()
    }

    /// Every value of `secrets` opened.
    pub fn open_all(
        &self,
        place: Place<'_>,
        secrets: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, SecretError> {
        secrets
            .iter()
            .map(|(name, value)| Ok((name.clone(), self.open(place, name, value)?)))
            .collect()
    }

    /// Whether any value is not sealed under the current key (sealed in
    /// plain text before sealing existed, or under a previous key).
    pub fn needs_sealing(&self, secrets: &BTreeMap<String, String>) -> bool {
        let current = format!("{SEALED_PREFIX}{}:", self.current.id);
        secrets.values().any(|v| !v.starts_with(&current))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLACE: Place<'static> = Place { tenant: 7, host: None, route: "/acme/app/..." };

    #[test]
    fn a_sealed_value_opens_only_where_it_belongs() {
        let ring = Keyring::new(&[1; KEY_LEN], &[]);
        let sealed = ring.seal(PLACE, "token", "s3cret");
        assert!(sealed.starts_with(SEALED_PREFIX) && !sealed.contains("s3cret"), "{sealed}");
        assert_eq!(ring.open(PLACE, "token", &sealed).unwrap(), "s3cret");
        // Two seals of one value differ (fresh nonces).
        assert_ne!(sealed, ring.seal(PLACE, "token", "s3cret"));
        // Another name, route, host or tenant: it does not open.
        assert_eq!(ring.open(PLACE, "other", &sealed), Err(SecretError::Damaged));
        let elsewhere = Place { route: "/acme/other/...", ..PLACE };
        assert_eq!(ring.open(elsewhere, "token", &sealed), Err(SecretError::Damaged));
        let tenant = Place { tenant: 8, ..PLACE };
        assert_eq!(ring.open(tenant, "token", &sealed), Err(SecretError::Damaged));
        // A flipped byte: it does not open.
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let damaged = String::from_utf8(bytes).unwrap();
        assert_eq!(ring.open(PLACE, "token", &damaged), Err(SecretError::Damaged));
    }

    #[test]
    fn a_rotated_ring_opens_the_old_seals_and_reseals_them() {
        let old = Keyring::new(&[1; KEY_LEN], &[]);
        let sealed: BTreeMap<String, String> =
            [("a".to_string(), old.seal(PLACE, "a", "one"))].into();
        let new = Keyring::new(&[2; KEY_LEN], &[[1; KEY_LEN]]);
        assert!(new.needs_sealing(&sealed));
        let resealed = new.seal_all(PLACE, &sealed).unwrap();
        assert!(!new.needs_sealing(&resealed));
        assert_eq!(new.open_all(PLACE, &resealed).unwrap()["a"], "one");
        // Without the previous key, the old seal is named as unknown.
        let alone = Keyring::new(&[2; KEY_LEN], &[]);
        assert!(matches!(alone.open_all(PLACE, &sealed), Err(SecretError::UnknownKey(_))));
        // Plain values (stored before sealing existed) are sealed too.
        let plain: BTreeMap<String, String> = [("a".to_string(), "one".to_string())].into();
        assert!(new.needs_sealing(&plain));
        assert_eq!(new.open_all(PLACE, &new.seal_all(PLACE, &plain).unwrap()).unwrap(), plain);
    }

    #[test]
    fn keys_are_read_in_base64_or_hex() {
        let generated = Keyring::generate_key();
        assert_eq!(Keyring::parse_key(&generated).unwrap().len(), KEY_LEN);
        assert_eq!(Keyring::parse_key(&"ab".repeat(32)).unwrap(), [0xab; KEY_LEN]);
        assert_eq!(Keyring::parse_key("short"), Err(SecretError::BadKey));
        assert!(!format!("{:?}", Keyring::new(&[9; KEY_LEN], &[])).contains("9, 9"));
    }
}
