//! `wasmwiz admin ...` and `wasmwiz migrate`: bootstrap and maintain a store
//! without the API, against the same configuration as `serve`.

use anyhow::{Context as _, bail};
use clap::Subcommand;

use super::serve::open_store;
use crate::auth::{self, Scope, Scopes};
use crate::config::{LogArgs, StoreArgs, TierDefaultArgs, bytes_for, duration_for};
use crate::store::{StoreError, Tier, valid_name};

/// Arguments shared by every admin command.
#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// What to administer.
    #[command(subcommand)]
    pub command: AdminCommand,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub tiers: TierDefaultArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Arguments of `wasmwiz migrate`.
#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub tiers: TierDefaultArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Admin commands.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Tiers.
    Tier {
        #[command(subcommand)]
        command: TierCommand,
    },
}

/// `admin tenant ...`
#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Creates a tenant.
    Create {
        /// The tenant's name (lower-case letters, digits, `-`, `_`).
        name: String,
        /// Its tier.
        #[arg(long, default_value = "free")]
        tier: String,
    },
    /// Moves a tenant to another tier.
    SetTier {
        /// The tenant's name.
        name: String,
        /// The new tier.
        tier: String,
    },
}

/// `admin key ...`
#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Creates a key for a tenant and prints it, alone on a line, once.
    Create {
        /// The tenant the key belongs to.
        tenant: String,
        /// Give the key the admin scope too.
        #[arg(long)]
        admin: bool,
        /// Scopes, comma-separated (default: deploy,read).
        #[arg(long, value_name = "SCOPES")]
        scopes: Option<String>,
    },
    /// Revokes a key by id.
    Revoke {
        /// The key's id (`key_...`).
        id: String,
    },
}

/// A rate: a number or `unlimited`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate(Option<u64>);

fn parse_rate(text: &str) -> Result<Rate, String> {
    if text.eq_ignore_ascii_case("unlimited") {
        return Ok(Rate(None));
    }
    text.parse::<u64>()
        .map(|n| Rate(Some(n)))
        .map_err(|_| format!("`{text}` is neither a number nor `unlimited`"))
}

/// `admin tier ...`
#[derive(Subcommand, Debug)]
pub enum TierCommand {
    /// Creates or changes a tier; options left out keep their current value
    /// (or the default, for a new tier).
    Set {
        /// The tier's name.
        name: String,
        /// Requests per minute, or `unlimited`.
        #[arg(long, value_parser = parse_rate)]
        per_minute: Option<Rate>,
        /// Requests per day, or `unlimited`.
        #[arg(long, value_parser = parse_rate)]
        per_day: Option<Rate>,
        /// Linear memory per instance (bytes, or 128MiB).
        #[arg(long, value_parser = bytes_for("--memory"))]
        memory: Option<u64>,
        /// Time per invocation (5, 500ms).
        #[arg(long, value_parser = duration_for("--timeout"))]
        timeout: Option<std::time::Duration>,
        /// Request body per invocation (bytes, or 1MiB).
        #[arg(long, value_parser = bytes_for("--max-input"))]
        max_input: Option<u64>,
        /// Component size (bytes, or 10MiB).
        #[arg(long, value_parser = bytes_for("--max-component"))]
        max_component: Option<u64>,
        /// Longest key-value value (bytes, or 1MiB).
        #[arg(long, value_parser = bytes_for("--kv-max-value"))]
        kv_max_value: Option<u64>,
        /// Key-value keys per tenant.
        #[arg(long)]
        kv_max_keys: Option<u64>,
        /// Key-value bytes (keys plus values) per tenant (bytes, or 64MiB).
        #[arg(long, value_parser = bytes_for("--kv-max-total"))]
        kv_max_total: Option<u64>,
        /// The most requests per instance a deployment of the tier may ask
        /// for with `max_instance_reuse` (1: always a fresh instance).
        #[arg(long, value_name = "N")]
        max_instance_reuse: Option<u32>,
    },
    /// Lists the tiers.
    List,
}

/// Prints to stdout: the output of admin commands is meant for scripts.
#[expect(clippy::print_stdout, reason = "admin commands answer on stdout")]
fn say(line: &str) {
    println!("{line}");
}

/// Runs `wasmwiz migrate`.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let (store, _) = open_store(&args.store, &args.tiers, args.log.is_production()).await?;
    say(&format!("migrations applied ({} store)", store.backend()));
    Ok(())
}

/// Runs an admin command.
pub async fn execute(args: AdminArgs) -> anyhow::Result<()> {
    args.tiers.validate()?;
    let (store, salt) = open_store(&args.store, &args.tiers, args.log.is_production()).await?;
    match args.command {
        AdminCommand::Tenant { command: TenantCommand::Create { name, tier } } => {
            if !valid_name(&name) {
                bail!("a tenant name is 1 to 63 lower-case letters, digits, `-` or `_`");
            }
            let tenant = store.create_tenant(&name, &tier).await.map_err(sentence)?;
            say(&format!("tenant {} created on tier {}", tenant.name, tenant.tier));
        }
        AdminCommand::Tenant { command: TenantCommand::SetTier { name, tier } } => {
            let tenant = store.set_tenant_tier(&name, &tier).await.map_err(sentence)?;
            say(&format!("tenant {} is now on tier {}", tenant.name, tenant.tier));
        }
        AdminCommand::Key { command: KeyCommand::Create { tenant, admin, scopes } } => {
            let tenant = store.tenant(&tenant).await?.with_context(|| {
                format!("there is no tenant named `{tenant}` (wasmwiz admin tenant create)")
            })?;
            let mut scopes = match scopes {
                Some(text) => Scopes::parse(&text).map_err(anyhow::Error::msg)?,
                None => Scopes::TENANT_DEFAULT,
            };
            if admin {
                scopes = scopes.with(Scope::Admin);
            }
            let (key, _) = auth::issue_key(store.as_ref(), &salt, tenant.id, scopes).await?;
            // The key alone on its line, so `KEY=$(wasmwiz admin key create t)` works.
            say(&key);
        }
        AdminCommand::Key { command: KeyCommand::Revoke { id } } => {
            if !store.revoke_key(&id, None).await? {
                bail!("there is no key with id `{id}`");
            }
            say(&format!("key {id} revoked"));
        }
        AdminCommand::Tier {
            command:
                TierCommand::Set {
                    name,
                    per_minute,
                    per_day,
                    memory,
                    timeout,
                    max_input,
                    max_component,
                    kv_max_value,
                    kv_max_keys,
                    kv_max_total,
                    max_instance_reuse,
                },
        } => {
            if !valid_name(&name) {
                bail!("a tier name is 1 to 63 lower-case letters, digits, `-` or `_`");
            }
            let current = store.tiers().await?.into_iter().find(|t| t.name == name);
            let mut limits =
                current.map_or_else(|| args.tiers.defaults_for_new_tiers(), |t| t.limits);
            if let Some(Rate(rate)) = per_minute {
                limits.requests_per_minute = rate;
            }
            if let Some(Rate(rate)) = per_day {
                limits.requests_per_day = rate;
            }
            if let Some(memory) = memory {
                limits.memory_limit_bytes = memory;
            }
            if let Some(timeout) = timeout {
                limits.execution_timeout_ms =
                    u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            }
            if let Some(max_input) = max_input {
                limits.max_input_bytes = max_input;
            }
            if let Some(max_component) = max_component {
                limits.max_component_bytes = max_component;
            }
            if let Some(n) = kv_max_value {
                limits.kv_max_value_bytes = n;
            }
            if let Some(n) = kv_max_keys {
                limits.kv_max_keys = n;
            }
            if let Some(n) = kv_max_total {
                limits.kv_max_total_bytes = n;
            }
            if let Some(n) = max_instance_reuse {
                limits.max_instance_reuse = n;
            }
            limits.check().map_err(anyhow::Error::msg)?;
            store.put_tier(&Tier { name: name.clone(), limits: limits.clone() }).await?;
            say(&format!("tier {name}: {}", describe(&limits)));
        }
        AdminCommand::Tier { command: TierCommand::List } => {
            for tier in store.tiers().await? {
                say(&format!("{}: {}", tier.name, describe(&tier.limits)));
            }
        }
    }
    Ok(())
}

fn describe(limits: &crate::store::TierLimits) -> String {
    let rate = |r: Option<u64>| r.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
    format!(
        "{}/minute, {}/day, memory {} bytes, timeout {} ms, input {} bytes, component {} bytes, \
         key-value {} keys / {} bytes, values up to {} bytes, instance reuse up to {}",
        rate(limits.requests_per_minute),
        rate(limits.requests_per_day),
        limits.memory_limit_bytes,
        limits.execution_timeout_ms,
        limits.max_input_bytes,
        limits.max_component_bytes,
        limits.kv_max_keys,
        limits.kv_max_total_bytes,
        limits.kv_max_value_bytes,
        limits.max_instance_reuse
    )
}

fn sentence(error: StoreError) -> anyhow::Error {
    match error {
        StoreError::NotFound => anyhow::anyhow!("no such tenant"),
        other => anyhow::Error::new(other),
    }
}
