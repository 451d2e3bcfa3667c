//! Opening the store every command that touches it shares (`serve`,
//! `admin`, `migrate`): migrations, seeded tiers, the key salt, and the
//! grants of routes served before grants existed.

use std::sync::Arc;

use anyhow::{Context as _, bail};

use crate::auth::MIN_SALT_LEN;
use crate::config::{StoreArgs, TierDefaultArgs};
use crate::store::{self, Store};

/// Opens the configured store (applying migrations), seeds the default
/// tiers and settles the key salt: what every command that touches the
/// store does first.
pub async fn open_store(
    store_args: &StoreArgs,
    tiers: &TierDefaultArgs,
    production: bool,
) -> anyhow::Result<(Arc<dyn Store>, Vec<u8>)> {
    if production && store_args.api_salt.as_deref().is_none_or(|s| s.len() < MIN_SALT_LEN) {
        bail!(
            "API_SALT must be set to at least {MIN_SALT_LEN} characters when ENVIRONMENT=production \
             (scripts/generate_secrets.sh makes one)"
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
    Ok((store, salt))
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
