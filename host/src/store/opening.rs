//! Opening the store every command that touches it shares (`serve`,
//! `admin`, `migrate`): migrations, seeded tiers, the key salt, the key
//! deployments' secrets are sealed with (and the sealing of any stored
//! before sealing existed), and the grants of routes served before grants
//! existed.

use std::sync::Arc;

use anyhow::{Context as _, bail};

use crate::config::{MIN_SALT_LEN, StoreArgs, TierDefaultArgs};
use crate::secrets::{KEY_LEN, Keyring, Place};
use crate::store::{self, Store};

/// A store, opened and settled.
pub struct Opened {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The salt API keys are hashed with.
    pub salt: Vec<u8>,
    /// The keys deployments' secrets are sealed with.
    pub secrets: Arc<Keyring>,
}

/// Name of the file beside the embedded store that holds the generated
/// secrets key (development, without SECRETS_KEY).
pub const SECRETS_KEY_FILE: &str = "secrets.key";

/// Opens the configured store (applying migrations), seeds the default
/// tiers, settles the key salt and the secrets key, and seals any secret
/// still stored in plain text: what every command that touches the store
/// does first.
pub async fn open_store(
    store_args: &StoreArgs,
    tiers: &TierDefaultArgs,
    production: bool,
) -> anyhow::Result<Opened> {
    let previous = store_args
        .secrets_key_previous
        .iter()
        .filter(|k| !k.trim().is_empty())
        .map(|k| Keyring::parse_key(k))
        .collect::<Result<Vec<_>, _>>()
        .context("SECRETS_KEY_PREVIOUS")?;
    let explicit = store_args
        .secrets_key
        .as_deref()
        .map(Keyring::parse_key)
        .transpose()
        .context("SECRETS_KEY")?;
    if production && store_args.api_salt.as_deref().is_none_or(|s| s.len() < MIN_SALT_LEN) {
        bail!(
            "API_SALT must be set to at least {MIN_SALT_LEN} characters when ENVIRONMENT=production \
             (scripts/generate_secrets.sh makes one)"
        );
    }
    if production && store_args.secrets_key.is_none() {
        bail!(
            "SECRETS_KEY must be set when ENVIRONMENT=production: deployments' secrets are sealed \
             with it at rest (`wasmwiz admin secrets generate-key`, or \
             scripts/generate_secrets.sh, makes one)"
        );
    }
    let store = store::open(store_args.database_url.as_deref(), &store_args.data_dir).await?;
    store.seed_tiers(&tiers.default_tiers()).await.context("seeding the default tiers")?;
    store::backfill_grants(store.as_ref()).await.context("granting the routes already served")?;
    warn_about_changed_rates(store.as_ref(), tiers).await;
    let salt = match &store_args.api_salt {
        Some(salt) => {
            if salt.len() < MIN_SALT_LEN {
                tracing::warn!(
                    "API_SALT is shorter than {MIN_SALT_LEN} characters: acceptable for development only"
                );
            }
            salt.as_bytes().to_vec()
        }
        None => {
            // Development without API_SALT: a random salt kept in the store,
            // so every node and every restart hash keys the same way.
            let fresh = hex::encode(rand::random::<[u8; 32]>());
            let salt = store
                .setting_or_insert("development_api_salt", &fresh)
                .await
                .context("storing the development API salt")?;
            tracing::warn!(
                "API_SALT is not set: using a generated salt kept in the store (development only)"
            );
            salt.into_bytes()
        }
    };
    let key = match explicit {
        Some(key) => key,
        None => development_secrets_key(store.as_ref(), store_args).await?,
    };
    let secrets = Arc::new(Keyring::new(&key, &previous));
    seal_plain_secrets(store.as_ref(), &secrets).await?;
    Ok(Opened { store, salt, secrets })
}

/// The secrets key of a development installation without SECRETS_KEY:
/// generated once and kept beside the embedded store (so that a copy of
/// the database alone holds only ciphertext), or, on PostgreSQL, where
/// every node finds it: in the store's settings.
async fn development_secrets_key(
    store: &dyn Store,
    args: &StoreArgs,
) -> anyhow::Result<[u8; KEY_LEN]> {
    let text = if args.database_url.is_none() {
        let path = args.data_dir.join(SECRETS_KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Keyring::generate_key();
                write_private(&path, &key).with_context(|| {
                    format!("cannot keep the generated secrets key in {}", path.display())
                })?;
                tracing::warn!(path = %path.display(),
                               "SECRETS_KEY is not set: generated one and kept it beside the \
                                embedded store (development only; back it up with the data)");
                key
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", path.display()));
            }
        }
    } else {
        tracing::warn!(
            "SECRETS_KEY is not set: using a generated key kept in the store itself (development \
             only: a dump of the database then holds what opens its secrets)"
        );
        store
            .setting_or_insert("development_secrets_key", &Keyring::generate_key())
            .await
            .context("storing the development secrets key")?
    };
    Keyring::parse_key(&text).context("the generated secrets key")
}

/// Writes `text` to a new file only its owner may read.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Seals the secrets stored in plain text (by a version from before
/// sealing existed). Values sealed under a previous key are left for
/// `wasmwiz admin secrets rotate`: a node still holding only that key must
/// go on opening them meanwhile.
async fn seal_plain_secrets(store: &dyn Store, keys: &Keyring) -> anyhow::Result<()> {
    let mut sealed = 0;
    for deployment in store.deployments(None).await.context("reading deployments")? {
        if !deployment.secrets.values().any(|v| !Keyring::is_sealed(v)) {
            continue;
        }
        let place = Place {
            tenant: deployment.tenant_id,
            host: deployment.host.as_deref(),
            route: &deployment.route,
        };
        let values = keys
            .seal_all(place, &deployment.secrets)
            .with_context(|| format!("sealing the secrets of {}", deployment.id))?;
        store.put_secrets(&deployment.id, &values).await.context("storing sealed secrets")?;
        sealed += 1;
    }
    if sealed > 0 {
        tracing::info!(deployments = sealed, "secrets stored in plain text are sealed now");
    }
    Ok(())
}

/// Tiers are seeded once; later changes to the *_TIER_RATE_* variables do
/// not overwrite what an operator set. Say so when they differ.
async fn warn_about_changed_rates(store: &dyn Store, tiers: &TierDefaultArgs) {
    let Ok(stored) = store.tiers().await else {
        return;
    };
    for wanted in tiers.default_tiers() {
        if let Some(have) = stored.iter().find(|t| t.name == wanted.name) {
            let (w, h) = (&wanted.limits, &have.limits);
            if w.requests_per_minute != h.requests_per_minute
                || w.requests_per_day != h.requests_per_day
            {
                tracing::warn!(
                    tier = %wanted.name,
                    stored_per_minute = ?h.requests_per_minute,
                    stored_per_day = ?h.requests_per_day,
                    "the stored tier's rates differ from the *_TIER_RATE_* variables, which only seed \
                     new stores; change it with `wasmwiz admin tier set`"
                );
            }
        }
    }
}
