//! `wasmwiz admin ...` and `wasmwiz migrate`: bootstrap and maintain a store
//! without the API, against the same configuration as `serve`.

use clap::Subcommand;

use crate::auth::{Scope, Scopes};
use crate::config::{LogArgs, StoreArgs, TierDefaultArgs};
use crate::control::{Actor, ControlPlane, ControlSettings, GrantSpec, TierBase};
use crate::metrics::Metrics;
use crate::store::opening::open_store;
use crate::tenancy::{LIMITS, LimitKind, LimitSpec, TierLimits, TierPatch};

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
    /// The key deployments' secrets are sealed with at rest.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
}

/// `admin secrets ...`
#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Prints a new random key for SECRETS_KEY (base64), alone on a line.
    GenerateKey,
    /// Seals every deployment's secrets again under SECRETS_KEY, opening
    /// them with it or any of SECRETS_KEY_PREVIOUS: run it once every node
    /// holds the new key (and the old ones as previous), then drop the old.
    Rotate,
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

/// The limit flags of `admin tier set`: one per limit of
/// [`LIMITS`](crate::tenancy::LIMITS), named and parsed as it says.
#[derive(Clone, Debug, Default)]
pub struct LimitFlags(TierPatch);

/// Parses one limit's flag value into its API value: a byte count
/// (`64MiB`), a duration (`5s`, in ms), a count, or `unlimited` (null).
fn limit_value(spec: &'static LimitSpec, text: &str) -> Result<serde_json::Value, String> {
    let flag = spec.flag;
    let number = |n: Option<u64>, example: &str| match n {
        Some(n) if (spec.min..=spec.max).contains(&n) => Ok(serde_json::Value::from(n)),
        Some(_) => Err(format!("--{flag}: must be between {} and {}", spec.min, spec.max)),
        None => Err(format!("--{flag}: `{text}` is not {example}")),
    };
    match spec.kind {
        LimitKind::Unlimited if text.eq_ignore_ascii_case("unlimited") => {
            Ok(serde_json::Value::Null)
        }
        LimitKind::Unlimited => number(text.parse().ok(), "a number or `unlimited`"),
        LimitKind::Count => number(text.parse().ok(), "a number"),
        LimitKind::Bytes => {
            number(crate::config::parse_bytes(text), "a byte count (1048576, 512KiB, 64MiB)")
        }
        LimitKind::Millis => number(
            crate::config::parse_duration(text)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            "a duration (5 for seconds, 500ms, 2s)",
        ),
    }
}

impl clap::Args for LimitFlags {
    fn augment_args(command: clap::Command) -> clap::Command {
        LIMITS.iter().fold(command, |command, spec| {
            let value_name = match spec.kind {
                LimitKind::Bytes => "BYTES",
                LimitKind::Millis => "DURATION",
                LimitKind::Count => "N",
                LimitKind::Unlimited => "N|unlimited",
            };
            command.arg(
                clap::Arg::new(spec.name)
                    .long(spec.flag)
                    .value_name(value_name)
                    .help(spec.help.trim())
                    .value_parser(clap::builder::ValueParser::new(move |text: &str| {
                        limit_value(spec, text)
                    })),
            )
        })
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

impl clap::FromArgMatches for LimitFlags {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Self::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        for spec in LIMITS {
            if let Some(value) = matches.get_one::<serde_json::Value>(spec.name) {
                self.0.set(spec.name, value.clone());
            }
        }
        Ok(())
    }
}

/// `admin tier ...`
#[derive(Subcommand, Debug)]
pub enum TierCommand {
    /// Creates or changes a tier; options left out keep their current value
    /// (or the default, for a new tier).
    Set {
        /// The tier's name.
        name: String,
        /// The limits to change (see `--help`): each one given replaces
        /// the current value.
        #[command(flatten)]
        limits: LimitFlags,
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
    let opened = open_store(&args.store, &args.tiers, args.log.is_production()).await?;
    say(&format!("migrations applied ({} store)", opened.store.backend()));
    Ok(())
}

/// Runs an admin command.
pub async fn execute(args: AdminArgs) -> anyhow::Result<()> {
    args.tiers.validate()?;
    if let AdminCommand::Secrets { command: SecretsCommand::GenerateKey } = args.command {
        say(&crate::secrets::Keyring::generate_key());
        return Ok(());
    }
    // An embedded store that is not there yet is made on the spot: say so,
    // for an operator in the wrong folder (WASMWIZ_DATA_DIR is relative)
    // is otherwise told only that a tenant does not exist.
    let created = args.store.database_url.is_none()
        && !args.store.data_dir.join(crate::store::sqlite::DATABASE_FILE).exists();
    let opened = open_store(&args.store, &args.tiers, args.log.is_production()).await?;
    let (store, salt, secrets) = (opened.store, opened.salt, opened.secrets);
    // A key made against one store fails against another: say which this is.
    let location = store.location();
    tell(&format!("store: {location} ({})", store.backend()));
    if created {
        tell(&format!(
            "note: there was no store at {location}: this command made a new, empty one. \
             WASMWIZ_DATA_DIR (default `.wasmwiz`, in the current folder) must name the folder \
             `wasmwiz serve` uses."
        ));
    }
    let tenant = command_tenant(&args.command).map(str::to_string);
    run(args, store, &salt, secrets).await.map_err(|error| {
        match (error.downcast_ref::<crate::control::ControlError>(), &tenant) {
            (Some(crate::control::ControlError::NotFound("tenant")), Some(name)) => {
                let hint = if created { "" } else { " (wasmwiz admin tenant list shows them)" };
                anyhow::anyhow!(
                    "there is no tenant named `{name}` in the store at {location}{hint}"
                )
            }
            _ => error,
        }
    })
}

/// The tenant an admin command names, if any.
fn command_tenant(command: &AdminCommand) -> Option<&str> {
    match command {
        AdminCommand::Tenant { command } => match command {
            TenantCommand::Create { name, .. }
            | TenantCommand::SetTier { name, .. }
            | TenantCommand::Grant { name, .. }
            | TenantCommand::Revoke { name, .. }
            | TenantCommand::Grants { name } => Some(name),
            TenantCommand::List => None,
        },
        AdminCommand::Key { command: KeyCommand::Create { tenant, .. } } => Some(tenant),
        _ => None,
    }
}

/// An admin command against the opened store.
async fn run(
    args: AdminArgs,
    store: std::sync::Arc<dyn crate::store::Store>,
    salt: &[u8],
    secrets: std::sync::Arc<crate::secrets::Keyring>,
) -> anyhow::Result<()> {
    let control = ControlPlane::new(
        store,
        salt,
        ControlSettings {
            tier_defaults: args.tiers.defaults_for_new_tiers(),
            reserved: Vec::new(),
            base_domain: args.store.base_domain.clone(),
            secrets: secrets.clone(),
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
            let issued = control.create_key(Actor::Operator, Some(&tenant), Some(scopes)).await?;
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
        AdminCommand::Tier { command: TierCommand::Set { name, limits: LimitFlags(patch) } } => {
            let (tier, _) = control.put_tier(&name, &patch, TierBase::Current).await?;
            say(&format!("tier {name}: {}", describe(&tier.limits)));
        }
        AdminCommand::Secrets { command: SecretsCommand::GenerateKey } => {
            unreachable!("answered before the store is opened")
        }
        AdminCommand::Secrets { command: SecretsCommand::Rotate } => {
            let resealed = control.reseal_secrets().await?;
            say(&format!(
                "secrets of {resealed} deployments sealed under key {}",
                secrets.current_id()
            ));
        }
        AdminCommand::Tier { command: TierCommand::List } => {
            for tier in control.tiers().await? {
                say(&format!("{}: {}", tier.name, describe(&tier.limits)));
            }
        }
    }
    Ok(())
}

/// A tier's limits in one line: `name value` for each, `unlimited` for none.
fn describe(limits: &TierLimits) -> String {
    let json = limits.to_json();
    LIMITS
        .iter()
        .map(|spec| match &json[spec.name] {
            serde_json::Value::Null => format!("{} unlimited", spec.name),
            value => format!("{} {value}", spec.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
