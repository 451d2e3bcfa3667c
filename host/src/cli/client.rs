//! `wasmwiz deploy`, `deployments`, `promote`, `rollout`, `rollback` and
//! `delete`: clients of the REST API, for tenant developers.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::router::{Grant, RoutePattern};

/// Where the API is and which key to use.
#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    /// Base URL of a WasmWiz server.
    #[arg(long, env = "WASMWIZ_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API key (`ww_...`).
    #[arg(long, env = "WASMWIZ_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// Arguments of `wasmwiz deploy`.
#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    /// The component (`.wasm`) to upload and deploy.
    pub file: PathBuf,
    /// Route in Spin syntax: `/path` or `/path/...`.
    #[arg(long)]
    pub route: String,
    /// Serve the route only for this `Host`.
    #[arg(long)]
    pub host: Option<String>,
    /// Name of the component (default: the file's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Configuration the component reads, `NAME=VALUE` (repeatable).
    #[arg(long = "config", value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub config: Vec<(String, String)>,
    /// Secret configuration, `NAME=VALUE` (repeatable; never shown again).
    #[arg(long = "secret", value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub secrets: Vec<(String, String)>,
    /// A host the component may call over HTTP (repeatable).
    #[arg(long = "allow-outbound", value_name = "HOST")]
    pub allowed_outbound_hosts: Vec<String>,
    /// Requests one instance may serve. 1 (the default): a fresh instance
    /// for every request. More: faster, but a request sees what earlier
    /// requests of this deployment left in the component's memory.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub max_instance_reuse: u32,
    /// WASIp3 components only: requests one instance may serve at once. 1
    /// (the default): one at a time. More: requests that wait share an
    /// instance (its memory too, and a trap ends all of them); needs
    /// `--max-instance-reuse` of at least as many.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub max_instance_concurrency: u32,
    /// Roll the new version out as a canary: it gets this share of the
    /// route's requests (0 to 99) while the live version serves the rest,
    /// until `wasmwiz promote` or `wasmwiz rollback`.
    #[arg(long, value_name = "PERCENT", conflicts_with = "steps")]
    pub canary: Option<u32>,
    /// Roll the new version out in steps (e.g. `10,50,100`), one every
    /// `--interval` seconds while it stays healthy; 100 promotes it.
    #[arg(long, value_name = "P,P,...", value_delimiter = ',', requires = "interval")]
    pub steps: Option<Vec<u32>>,
    /// Seconds between two of `--steps`.
    #[arg(long, value_name = "SECONDS")]
    pub interval: Option<u64>,
    /// Keep each client on one side of the rollout by this request
    /// header's value (e.g. a session id), instead of splitting per
    /// request.
    #[arg(long, value_name = "HEADER")]
    pub sticky_header: Option<String>,
    /// Canary requests a node sees before judging it (default 50).
    #[arg(long, value_name = "N")]
    pub min_requests: Option<u32>,
    /// Percentage points of error rate the canary may have over the live
    /// version before it is stopped by itself (default 5).
    #[arg(long, value_name = "POINTS")]
    pub max_error_increase: Option<u32>,
    /// Let requests pick a served version (the live one, or a rollout's
    /// canary) with the header `wasmwiz-version: N`.
    #[arg(long)]
    pub version_pinning: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl DeployArgs {
    /// The `rollout` object of the deploy request, if a rollout is asked.
    fn rollout(&self) -> Option<Value> {
        if self.canary.is_none() && self.steps.is_none() {
            return None;
        }
        let mut rollout = serde_json::Map::new();
        if let Some(percent) = self.canary {
            rollout.insert("percent".into(), percent.into());
        }
        if let Some(steps) = &self.steps {
            rollout.insert("steps".into(), steps.clone().into());
        }
        if let Some(interval) = self.interval {
            rollout.insert("interval_s".into(), interval.into());
        }
        if let Some(header) = &self.sticky_header {
            rollout.insert("sticky_header".into(), header.clone().into());
        }
        if let Some(n) = self.min_requests {
            rollout.insert("min_requests".into(), n.into());
        }
        if let Some(n) = self.max_error_increase {
            rollout.insert("max_error_increase".into(), n.into());
        }
        Some(Value::Object(rollout))
    }
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{text}` is not NAME=VALUE"))
}

/// Which deployment a command means: its id, or its route.
#[derive(clap::Args, Debug)]
pub struct Target {
    /// The deployment's id (`dep_...`) or its route (`/hello/...`).
    #[arg(value_name = "ID|ROUTE")]
    pub deployment: String,
    /// The host of the route, when the same route is deployed on several.
    #[arg(long)]
    pub host: Option<String>,
}

/// Arguments of `wasmwiz rollback`.
#[derive(clap::Args, Debug)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub target: Target,
    /// Switch to this version instead of the one live before the current.
    #[arg(long, value_name = "VERSION")]
    pub to: Option<i64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Arguments of `wasmwiz promote` and `wasmwiz rollout status`.
#[derive(clap::Args, Debug)]
pub struct TargetArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `wasmwiz rollout`.
#[derive(clap::Args, Debug)]
pub struct RolloutArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: RolloutCommand,
}

/// What `wasmwiz rollout` does.
#[derive(clap::Subcommand, Debug)]
pub enum RolloutCommand {
    /// The rollout under way (its split, its steps, what the answering node
    /// sent each side) and the ones before it.
    Status(TargetArgs),
}

/// Arguments of `wasmwiz delete`.
#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Arguments of `wasmwiz deployments`.
#[derive(clap::Args, Debug)]
pub struct DeploymentsArgs {
    /// Show the versions of one deployment (id or route) and when each was
    /// live, instead of the list.
    #[arg(long, value_name = "ID|ROUTE")]
    pub history: Option<String>,
    /// The host of `--history`'s route, when it is deployed on several.
    #[arg(long, requires = "history")]
    pub host: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A client of the REST API with a key.
pub(super) struct Api {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Api {
    pub(super) fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let Some(key) = args.api_key.clone() else {
            bail!("no API key: set WASMWIZ_API_KEY or pass --api-key");
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        Ok(Self { base: args.url.trim_end_matches('/').to_string(), key, http })
    }

    /// Why a request did not get through, and how to point the command
    /// elsewhere.
    pub(super) fn unreachable(&self) -> String {
        format!(
            "cannot reach the WasmWiz server at {} (is `wasmwiz serve` running there? \
             point to another with WASMWIZ_URL or --url)",
            self.base
        )
    }

    pub(super) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.key)
    }

    /// Sends and turns any error answer into a sentence.
    pub(super) async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request.send().await.with_context(|| self.unreachable())?;
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        if status.is_success() {
            if body.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&body).context("the server answered with invalid JSON");
        }
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        bail!("{message} (HTTP {})", status.as_u16())
    }
}

#[expect(clippy::print_stdout, reason = "client commands answer on stdout")]
fn say(line: &str) {
    println!("{line}");
}

/// Uploads a component and deploys it on a route.
pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    // A route the server would refuse is refused before the upload: its
    // syntax here, the tenant's grants by asking the server (a Python
    // component is 18 MB and seconds of compiling to lose).
    let pattern = RoutePattern::parse(&args.route, args.host.as_deref(), &[])
        .with_context(|| format!("--route `{}`", args.route))?;
    // So is a rollout the server would refuse: the same rules, here.
    if let Some(rollout) = args.rollout() {
        serde_json::from_value::<crate::rollout::RolloutSpec>(rollout)?
            .check()
            .map_err(|why| anyhow::anyhow!("{why}. Nothing was uploaded."))?;
    }
    let api = Api::new(&args.client)?;
    check_granted(&api, &pattern).await?;
    let bytes = tokio::fs::read(&args.file)
        .await
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let name = args.name.clone().unwrap_or_else(|| {
        args.file.file_stem().map_or("component".into(), |s| s.to_string_lossy().into_owned())
    });

    // Large components (Python and JavaScript ones are 13 to 20 MB) go
    // gzipped: a third to a quarter of the bytes on the wire.
    let size = bytes.len();
    let (sent, encoding) = if size > GZIP_ABOVE {
        let compressed = tokio::task::spawn_blocking(move || gzip(&bytes)).await??;
        (compressed, Some("gzip"))
    } else {
        (bytes, None)
    };
    let bar = ProgressBar::new(sent.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {bytes}/{total_bytes}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message("uploading");
    let length = sent.len();
    let chunks: Vec<bytes::Bytes> =
        sent.chunks(64 << 10).map(bytes::Bytes::copy_from_slice).collect();
    let progress = bar.clone();
    let stream = futures::stream::iter(chunks).map(move |chunk| {
        progress.inc(chunk.len() as u64);
        if progress.position() >= progress.length().unwrap_or(0) {
            // The server validates and compiles before it answers: seconds
            // for a Python or JavaScript component.
            progress.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .expect("a valid template"),
            );
            progress.set_message(format!("compiling {size} bytes"));
            progress.enable_steady_tick(Duration::from_millis(100));
        }
        Ok::<_, std::io::Error>(chunk)
    });
    let mut upload = api
        .request(reqwest::Method::POST, "/api/v1/components")
        .query(&[("name", name.as_str())])
        .header("content-type", "application/wasm")
        .header("content-length", length);
    if let Some(encoding) = encoding {
        upload = upload.header("content-encoding", encoding);
    }
    let upload = upload.body(reqwest::Body::wrap_stream(stream));
    let component = api.send(upload).await;
    let took = bar.elapsed();
    bar.finish_and_clear();
    let component = component?;
    let digest = component["digest"].as_str().context("the server did not say the digest")?;
    say(&format!(
        "uploaded {} ({} bytes, {}, compiled in {} ms; {:.1} s in all)",
        digest,
        component["size"],
        component["world"].as_str().unwrap_or("world unknown"),
        component["compile_ms"],
        took.as_secs_f64()
    ));

    let body = serde_json::json!({
        "route": args.route,
        "component": digest,
        "host": args.host,
        "config": args.config.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "secrets": args.secrets.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "allowed_outbound_hosts": args.allowed_outbound_hosts,
        "max_instance_reuse": args.max_instance_reuse,
        "max_instance_concurrency": args.max_instance_concurrency,
        "rollout": args.rollout(),
        "version_pinning": args.version_pinning,
    });
    let deployment =
        api.send(api.request(reqwest::Method::POST, "/api/v1/deployments").json(&body)).await?;
    let route = deployment["route"].as_str().unwrap_or(&args.route);
    let id = deployment["id"].as_str().unwrap_or("?");
    match deployment.get("rollout").filter(|r| r.is_object()) {
        Some(canary) => say(&format!(
            "deployed {route} version {} as a canary ({id}): {}% of requests, version {} the \
             rest{}",
            canary["version"],
            canary["percent"],
            deployment["version"],
            match canary["next_step_at"].as_str() {
                Some(at) => format!("; next step at {at}"),
                None => "; `wasmwiz promote` makes it live".into(),
            }
        )),
        None => say(&format!("deployed {route} version {} ({id})", deployment["version"])),
    }
    say(&format!("invoke: {}", invoke_url(&api.base, &args.route, args.host.as_deref())));
    Ok(())
}

/// Refuses, before anything is uploaded, a route outside the tenant's
/// grants, naming them as the server would. The server decides in the
/// end: when the grants cannot be read (a key without the `read` scope, a
/// server that does not list them) this says nothing.
async fn check_granted(api: &Api, route: &RoutePattern) -> anyhow::Result<()> {
    let Ok(me) = api.send(api.request(reqwest::Method::GET, "/api/v1/me")).await else {
        return Ok(());
    };
    let Some(tenant) = me["tenant"].as_str() else { return Ok(()) };
    let path = format!("/api/v1/tenants/{tenant}/grants");
    let Ok(listed) = api.send(api.request(reqwest::Method::GET, &path)).await else {
        return Ok(());
    };
    let grants: Vec<Grant> = ["defaults", "grants"]
        .iter()
        .flat_map(|list| listed[*list].as_array().cloned().unwrap_or_default())
        .filter_map(|g| match (g["route"].as_str(), g["host"].as_str()) {
            (Some(route), _) => Grant::path(route, &[]).ok(),
            (None, Some(host)) => Grant::host(host).ok(),
            (None, None) => None,
        })
        .collect();
    if grants.is_empty() || grants.iter().any(|g| g.covers(route)) {
        return Ok(());
    }
    bail!("{}. Nothing was uploaded.", crate::router::not_granted(tenant, &grants, route))
}

/// Components larger than this are sent gzipped.
const GZIP_ABOVE: usize = 256 << 10;

/// `bytes`, gzipped quickly (most of the gain, a fraction of the time).
fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes)?;
    encoder.finish()
}

/// The URL that reaches `route` on the server at `base`.
fn invoke_url(base: &str, route: &str, host: Option<&str>) -> String {
    let path = route.strip_suffix("/...").unwrap_or(route);
    let path = if path.is_empty() { "/" } else { path };
    match (host, base.split_once("://")) {
        (Some(host), Some((scheme, rest))) => {
            let port = rest.split('/').next().and_then(|a| a.rsplit_once(':')).map(|(_, p)| p);
            match port {
                Some(port) => format!("{scheme}://{host}:{port}{path}"),
                None => format!("{scheme}://{host}{path}"),
            }
        }
        _ => format!("{base}{path}"),
    }
}

/// The id of the deployment `target` names: an id as it is, a route
/// looked up among the tenant's deployments.
pub(super) async fn resolve(api: &Api, target: &Target) -> anyhow::Result<String> {
    if !target.deployment.starts_with('/') {
        return Ok(target.deployment.clone());
    }
    let wanted = RoutePattern::parse_stored(&target.deployment, target.host.as_deref())
        .with_context(|| format!("`{}`", target.deployment))?;
    let list = api.send(api.request(reqwest::Method::GET, "/api/v1/deployments")).await?;
    let matches: Vec<&Value> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| {
            d["route"].as_str() == Some(wanted.to_string().as_str())
                && (target.host.is_none() || d["host"].as_str() == wanted.host())
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok(one["id"].as_str().unwrap_or_default().to_string()),
        [] => bail!("you have no deployment on {wanted} (wasmwiz deployments lists them)"),
        several => {
            let hosts: Vec<&str> =
                several.iter().map(|d| d["host"].as_str().unwrap_or("(any host)")).collect();
            bail!("{wanted} is deployed on several hosts ({}): add --host", hosts.join(", "))
        }
    }
}

/// Names of the tenant's components, by digest.
async fn component_names(api: &Api) -> std::collections::HashMap<String, String> {
    let list = api.send(api.request(reqwest::Method::GET, "/api/v1/components")).await;
    list.ok()
        .and_then(|l| l.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| Some((c["digest"].as_str()?.to_string(), c["name"].as_str()?.to_string())))
        .collect()
}

/// A component as a person reads it: its name and a short digest.
fn component_label(digest: &str, names: &std::collections::HashMap<String, String>) -> String {
    let short = digest.strip_prefix("sha256:").unwrap_or(digest).get(..12).unwrap_or(digest);
    match names.get(digest) {
        Some(name) => format!("{name} ({short})"),
        None => short.to_string(),
    }
}

/// Rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| if i == last { c } else { format!("{c:<w$}", w = widths[i]) })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    std::iter::once(line(header.iter().map(|h| h.to_string()).collect()))
        .chain(rows.iter().map(|r| line(r.clone())))
        .collect()
}

/// Lists the tenant's live deployments, or one deployment's versions.
pub async fn deployments(args: DeploymentsArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    if let Some(deployment) = args.history {
        let target = Target { deployment, host: args.host };
        return history(&api, &target).await;
    }
    let list = api.send(api.request(reqwest::Method::GET, "/api/v1/deployments")).await?;
    let list = list.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        say("no deployments");
        return Ok(());
    }
    let names = component_names(&api).await;
    let mut rows = Vec::new();
    let mut settings = Vec::new();
    for d in &list {
        let route = match d["host"].as_str() {
            Some(host) => format!("{host}{}", d["route"].as_str().unwrap_or("")),
            None => d["route"].as_str().unwrap_or("").to_string(),
        };
        let status = match d["status"]["state"].as_str() {
            Some("serving") | None => String::new(),
            Some(state) => format!(" ({state})"),
        };
        let canary = match d.get("rollout").filter(|r| r.is_object()) {
            Some(r) => format!(", canary {} at {}%", r["version"], r["percent"]),
            None => String::new(),
        };
        rows.push(vec![
            d["id"].as_str().unwrap_or("").to_string(),
            route,
            format!("{}{status}{canary}", d["version"]),
            component_label(d["component"].as_str().unwrap_or(""), &names),
        ]);
        let config = d["config"].as_object().map(|c| {
            c.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>()
        });
        let secrets = d["secrets"].as_array().map(|s| {
            s.iter().map(|k| format!("{}=<secret>", k.as_str().unwrap_or(""))).collect::<Vec<_>>()
        });
        settings.push(
            config.into_iter().flatten().chain(secrets.into_iter().flatten()).collect::<Vec<_>>(),
        );
    }
    let lines = table(&["ID", "ROUTE", "VERSION", "COMPONENT"], &rows);
    say(&lines[0]);
    let indent = rows.iter().map(|r| r[0].len()).max().unwrap_or(0).max(2);
    for (line, settings) in lines[1..].iter().zip(settings) {
        say(line);
        if !settings.is_empty() {
            say(&format!("{:indent$}  config: {}", "", settings.join(" ")));
        }
    }
    Ok(())
}

/// Prints one deployment's versions, newest first, and when each was live.
async fn history(api: &Api, target: &Target) -> anyhow::Result<()> {
    let id = resolve(api, target).await?;
    let path = format!("/api/v1/deployments/{id}/versions");
    let versions = api.send(api.request(reqwest::Method::GET, &path)).await?;
    let names = component_names(api).await;
    let rows: Vec<Vec<String>> = versions
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|v| {
            let periods: Vec<String> = v["live_periods"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    let from = p["from"].as_str().unwrap_or("");
                    let until = p["until"].as_str().unwrap_or("now");
                    format!("{from} to {until} ({})", p["reason"].as_str().unwrap_or(""))
                })
                .collect();
            vec![
                format!("{}{}", v["version"], if v["live"] == true { " *" } else { "" }),
                component_label(v["component"].as_str().unwrap_or(""), &names),
                v["created_at"].as_str().unwrap_or("").to_string(),
                if periods.is_empty() { "never".to_string() } else { periods.join("; ") },
            ]
        })
        .collect();
    for line in table(&["VERSION", "COMPONENT", "DEPLOYED", "LIVE"], &rows) {
        say(&line);
    }
    Ok(())
}

/// Switches a deployment back to the version live before the current one,
/// or to `--to VERSION`.
pub async fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    let id = resolve(&api, &args.target).await?;
    let path = format!("/api/v1/deployments/{id}/rollback");
    let mut request = api.request(reqwest::Method::POST, &path);
    if let Some(version) = args.to {
        request = request.json(&serde_json::json!({ "version": version }));
    }
    let d = api.send(request).await?;
    let names = component_names(&api).await;
    say(&format!(
        "{} is on version {} ({})",
        d["route"].as_str().unwrap_or(&id),
        d["version"],
        component_label(d["component"].as_str().unwrap_or(""), &names)
    ));
    Ok(())
}

/// Makes a running rollout's canary the live version.
pub async fn promote(args: TargetArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    let id = resolve(&api, &args.target).await?;
    let path = format!("/api/v1/deployments/{id}/promote");
    let d = api.send(api.request(reqwest::Method::POST, &path)).await?;
    say(&format!(
        "{} is on version {}: the canary is promoted",
        d["route"].as_str().unwrap_or(&id),
        d["version"]
    ));
    Ok(())
}

/// `wasmwiz rollout ...`.
pub async fn rollout(args: RolloutArgs) -> anyhow::Result<()> {
    match args.command {
        RolloutCommand::Status(args) => rollout_status(args).await,
    }
}

/// Prints the rollout under way and the ones before it.
async fn rollout_status(args: TargetArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    let id = resolve(&api, &args.target).await?;
    let list = api.send(api.request(reqwest::Method::GET, "/api/v1/deployments")).await?;
    let deployment = list
        .as_array()
        .and_then(|l| l.iter().find(|d| d["id"] == id.as_str()))
        .cloned()
        .unwrap_or_default();
    match deployment.get("rollout").filter(|r| r.is_object()) {
        Some(c) => {
            say(&format!(
                "version {} (canary) gets {}% of requests, version {} (live) the rest{}",
                c["version"],
                c["percent"],
                deployment["version"],
                match c["sticky_header"].as_str() {
                    Some(h) => format!(", each client kept on one side by its {h} header"),
                    None => String::new(),
                }
            ));
            if let Some(at) = c["next_step_at"].as_str() {
                say(&format!("next step at {at}"));
            }
            say(&format!(
                "stopped by itself when its error rate exceeds the live version's by more than \
                 {} points after {} of its requests on a node",
                c["max_error_increase"], c["min_requests"]
            ));
            let node = &c["on_this_node"];
            if node.is_object() {
                let side = |s: &Value| {
                    format!(
                        "{} requests, {} errors ({}%)",
                        s["requests"], s["errors"], s["error_rate_percent"]
                    )
                };
                say(&format!(
                    "on the node that answered: canary {}; live {}{}",
                    side(&node["canary"]),
                    side(&node["stable"]),
                    if node["stopped"] == true { " (stopped here)" } else { "" }
                ));
            }
        }
        None => say("no rollout is under way"),
    }
    let path = format!("/api/v1/deployments/{id}/rollouts");
    let rollouts = api.send(api.request(reqwest::Method::GET, &path)).await?;
    let rows: Vec<Vec<String>> = rollouts
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let steps: Vec<String> = r["steps"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|s| s.to_string())
                .collect();
            vec![
                r["version"].to_string(),
                r["stable_version"].to_string(),
                r["state"].as_str().unwrap_or("").to_string(),
                format!("{}%", r["percent"]),
                steps.join(","),
                r["started_at"].as_str().unwrap_or("").to_string(),
                r["reason"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        for line in
            table(&["CANARY", "LIVE", "STATE", "SHARE", "STEPS", "STARTED", "REASON"], &rows)
        {
            say(&line);
        }
    }
    Ok(())
}

/// Deletes a deployment: its route answers 404 from then on.
pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    let id = resolve(&api, &args.target).await?;
    api.send(api.request(reqwest::Method::DELETE, &format!("/api/v1/deployments/{id}"))).await?;
    say(&format!("deleted {id} ({})", args.target.deployment));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_every_column_to_its_widest_cell() {
        let rows = vec![
            vec!["dep_a".to_string(), "/hello/...".to_string(), "12".to_string(), "x".to_string()],
            vec![
                "dep_bb".to_string(),
                "/h".to_string(),
                "3 (compiling)".to_string(),
                "y".to_string(),
            ],
        ];
        let lines = table(&["ID", "ROUTE", "VERSION", "COMPONENT"], &rows);
        assert_eq!(lines[0], "ID      ROUTE       VERSION        COMPONENT");
        assert_eq!(lines[1], "dep_a   /hello/...  12             x");
        assert_eq!(lines[2], "dep_bb  /h          3 (compiling)  y");
    }

    #[test]
    fn invoke_urls_strip_the_wildcard_and_keep_the_port() {
        assert_eq!(
            invoke_url("http://127.0.0.1:8080", "/hello/...", None),
            "http://127.0.0.1:8080/hello"
        );
        assert_eq!(invoke_url("http://127.0.0.1:8080", "/...", None), "http://127.0.0.1:8080/");
        assert_eq!(
            invoke_url("http://127.0.0.1:8080", "/x", Some("api.example.com")),
            "http://api.example.com:8080/x"
        );
        assert_eq!(
            invoke_url("https://edge.example.com", "/x", Some("a.example.com")),
            "https://a.example.com/x"
        );
    }
}
