//! `wasmwiz admin ...` and `wasmwiz migrate`: bootstrap and maintain a store
//! without the API, against the same configuration as `serve`.

use clap::Subcommand;

use super::store::open_store;
use crate::auth::{Scope, Scopes};
use crate::config::{Cap, LogArgs, StoreArgs, TierDefaultArgs, bytes_for, cap_for, duration_for};
use crate::control::{Actor, ControlPlane, ControlSettings, GrantSpec, TierBase};
use crate::metrics::Metrics;
use crate::tenancy::{TierLimits, TierPatch};

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
    /// Lists the tenants.
    List,
    /// Grants a tenant a route prefix (`--route '/shop/...'`: every route at
    /// or below it) or a host (`--host shop.example.com`: every route on
    /// it), beside its default `/<tenant>/...`.
    Grant {
        /// The tenant's name.
        name: String,
        /// A route in Spin syntax: `/path/...` or an exact `/path`.
        #[arg(long, conflicts_with = "host", required_unless_present = "host")]
        route: Option<String>,
        /// A host name.
        #[arg(long)]
        host: Option<String>,
    },
    /// Revokes a grant (by id, from `grants`); refused while one of the
    /// tenant's deployments needs it.
    Revoke {
        /// The tenant's name.
        name: String,
        /// The grant's id (`grt_...`).
        id: String,
    },
    /// Lists what a tenant may deploy inside.
    Grants {
        /// The tenant's name.
        name: String,
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
        /// The most requests at once per instance a WASIp3 deployment of
        /// the tier may ask for with `max_instance_concurrency`.
        #[arg(long, value_name = "N")]
        max_instance_concurrency: Option<u32>,
        /// Invocations one tenant may run at once on one node, or
        /// `unlimited` (then only the instance pool's fair share limits it).
        #[arg(long, value_name = "N", value_parser = cap_for("--max-concurrency"))]
        max_concurrency: Option<Cap>,
    },
    /// Lists the tiers.
    List,
}

/// Prints to stderr: what a person reads, beside the output for scripts.
fn tell(line: &str) {
    eprintln!("{line}");
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
    // A key made against one store fails against another: say which this is.
    tell(&format!("store: {} ({})", store.location(), store.backend()));
    let control = ControlPlane::new(
        store,
        &salt,
        ControlSettings {
            tier_defaults: args.tiers.defaults_for_new_tiers(),
            reserved: Vec::new(),
            base_domain: args.store.base_domain.clone(),
        },
        Metrics::new(),
    );
    match args.command {
        AdminCommand::Tenant { command: TenantCommand::Create { name, tier } } => {
            let tenant = control.create_tenant(&name, &tier).await?;
            say(&format!("tenant {} created on tier {}", tenant.name, tenant.tier));
        }
        AdminCommand::Tenant { command: TenantCommand::SetTier { name, tier } } => {
            let tenant = control.set_tenant_tier(&name, &tier).await?;
            say(&format!("tenant {} is now on tier {}", tenant.name, tenant.tier));
        }
        AdminCommand::Tenant { command: TenantCommand::List } => {
            for tenant in control.tenants().await? {
                say(&format!("{}\t{}", tenant.name, tenant.tier));
            }
        }
        AdminCommand::Tenant { command: TenantCommand::Grant { name, route, host } } => {
            let spec = match (route, host) {
                (Some(route), None) => GrantSpec::Route(route),
                (None, Some(host)) => GrantSpec::Host(host),
                _ => unreachable!("clap requires exactly one of --route and --host"),
            };
            let record = control.grant(&name, &spec).await?;
            say(&format!("granted {} to tenant {} ({})", record.grant, record.tenant, record.id));
        }
        AdminCommand::Tenant { command: TenantCommand::Revoke { name, id } } => {
            control.revoke_grant(&name, &id).await?;
            say(&format!("grant {id} of tenant {name} revoked"));
        }
        AdminCommand::Tenant { command: TenantCommand::Grants { name } } => {
            let (defaults, grants) = control.grants(&name).await?;
            for grant in defaults {
                say(&format!("default\t{grant}"));
            }
            for record in grants {
                say(&format!("{}\t{}", record.id, record.grant));
            }
        }
        AdminCommand::Key { command: KeyCommand::Create { tenant, admin, scopes } } => {
            let mut scopes = match scopes {
                Some(text) => Scopes::parse(&text).map_err(anyhow::Error::msg)?,
                None => Scopes::TENANT_DEFAULT,
            };
            if admin {
                scopes = scopes.with(Scope::Admin);
            }
            let issued = control
                .create_key(Actor::Operator, Some(&tenant), Some(scopes))
                .await
                .map_err(|e| match e {
                    crate::control::ControlError::NotFound(_) => anyhow::anyhow!(
                        "there is no tenant named `{tenant}` (wasmwiz admin tenant create)"
                    ),
                    other => other.into(),
                })?;
            // The key alone on its line, so `KEY=$(wasmwiz admin key create t)` works.
            say(&issued.key);
        }
        AdminCommand::Key { command: KeyCommand::Revoke { id } } => {
            control.revoke_key(Actor::Operator, &id).await.map_err(|e| match e {
                crate::control::ControlError::NotFound(_) => {
                    anyhow::anyhow!("there is no key with id `{id}`")
                }
                other => other.into(),
            })?;
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
                    max_instance_concurrency,
                    max_concurrency,
                },
        } => {
            let patch = TierPatch {
                requests_per_minute: per_minute.map(|Rate(rate)| rate),
                requests_per_day: per_day.map(|Rate(rate)| rate),
                memory_limit_bytes: memory,
                execution_timeout_ms: timeout
                    .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
                max_input_bytes: max_input,
                max_component_bytes: max_component,
                kv_max_value_bytes: kv_max_value,
                kv_max_keys,
                kv_max_total_bytes: kv_max_total,
                max_instance_reuse,
                max_instance_concurrency,
                max_concurrency: max_concurrency.map(|Cap(cap)| cap),
                ..TierPatch::default()
            };
            let (tier, _) = control.put_tier(&name, &patch, TierBase::Current).await?;
            say(&format!("tier {name}: {}", describe(&tier.limits)));
        }
        AdminCommand::Tier { command: TierCommand::List } => {
            for tier in control.tiers().await? {
                say(&format!("{}: {}", tier.name, describe(&tier.limits)));
            }
        }
    }
    Ok(())
}

fn describe(limits: &TierLimits) -> String {
    let rate = |r: Option<u64>| r.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
    format!(
        "{}/minute, {}/day, memory {} bytes, timeout {} ms, input {} bytes, component {} bytes, \
         key-value {} keys / {} bytes, values up to {} bytes, instance reuse up to {}, \
         up to {} at once per WASIp3 instance, {} concurrent invocations per node",
        rate(limits.requests_per_minute),
        rate(limits.requests_per_day),
        limits.memory_limit_bytes,
        limits.execution_timeout_ms,
        limits.max_input_bytes,
        limits.max_component_bytes,
        limits.kv_max_keys,
        limits.kv_max_total_bytes,
        limits.kv_max_value_bytes,
        limits.max_instance_reuse,
        limits.max_instance_concurrency,
        Cap(limits.max_concurrency)
    )
}
