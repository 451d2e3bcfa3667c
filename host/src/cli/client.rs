//! `wasmwiz deploy`, `wasmwiz deployments`, `wasmwiz rollback`: clients of
//! the REST API, for tenant developers.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

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
    #[command(flatten)]
    pub client: ClientArgs,
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{text}` is not NAME=VALUE"))
}

/// Arguments of `wasmwiz rollback`.
#[derive(clap::Args, Debug)]
pub struct RollbackArgs {
    /// The deployment's id (`dep_...`).
    pub id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

struct Api {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Api {
    fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let Some(key) = args.api_key.clone() else {
            bail!("no API key: set WASMWIZ_API_KEY or pass --api-key");
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        Ok(Self { base: args.url.trim_end_matches('/').to_string(), key, http })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.key)
    }

    /// Sends and turns any error answer into a sentence.
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the WasmWiz server at {}", self.base))?;
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
    let api = Api::new(&args.client)?;
    let bytes = tokio::fs::read(&args.file)
        .await
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let name = args.name.clone().unwrap_or_else(|| {
        args.file.file_stem().map_or("component".into(), |s| s.to_string_lossy().into_owned())
    });

    let bar = ProgressBar::new(bytes.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {bytes}/{total_bytes}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message("uploading");
    let chunks: Vec<bytes::Bytes> =
        bytes.chunks(64 << 10).map(bytes::Bytes::copy_from_slice).collect();
    let progress = bar.clone();
    let stream = futures::stream::iter(chunks).map(move |chunk| {
        progress.inc(chunk.len() as u64);
        if progress.position() >= progress.length().unwrap_or(0) {
            progress.set_style(
                ProgressStyle::with_template("{spinner} {msg}").expect("a valid template"),
            );
            progress.set_message("compiling");
            progress.enable_steady_tick(Duration::from_millis(100));
        }
        Ok::<_, std::io::Error>(chunk)
    });
    let upload = api
        .request(reqwest::Method::POST, "/api/v1/components")
        .query(&[("name", name.as_str())])
        .header("content-type", "application/wasm")
        .header("content-length", bytes.len())
        .body(reqwest::Body::wrap_stream(stream));
    let component = api.send(upload).await;
    bar.finish_and_clear();
    let component = component?;
    let digest = component["digest"].as_str().context("the server did not say the digest")?;
    say(&format!(
        "uploaded {} ({} bytes, compiled in {} ms)",
        digest, component["size"], component["compile_ms"]
    ));

    let body = serde_json::json!({
        "route": args.route,
        "component": digest,
        "host": args.host,
        "config": args.config.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "secrets": args.secrets.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "allowed_outbound_hosts": args.allowed_outbound_hosts,
        "max_instance_reuse": args.max_instance_reuse,
    });
    let deployment =
        api.send(api.request(reqwest::Method::POST, "/api/v1/deployments").json(&body)).await?;
    say(&format!(
        "deployed {} version {} ({})",
        deployment["route"].as_str().unwrap_or(&args.route),
        deployment["version"],
        deployment["id"].as_str().unwrap_or("?")
    ));
    say(&format!("invoke: {}", invoke_url(&api.base, &args.route, args.host.as_deref())));
    Ok(())
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

/// Lists the tenant's live deployments.
pub async fn deployments(args: ClientArgs) -> anyhow::Result<()> {
    let api = Api::new(&args)?;
    let list = api.send(api.request(reqwest::Method::GET, "/api/v1/deployments")).await?;
    let list = list.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        say("no deployments");
        return Ok(());
    }
    say(&format!("{:<26} {:<30} {:>7}  {}", "ID", "ROUTE", "VERSION", "COMPONENT"));
    for d in list {
        let route = match d["host"].as_str() {
            Some(host) => format!("{host}{}", d["route"].as_str().unwrap_or("")),
            None => d["route"].as_str().unwrap_or("").to_string(),
        };
        say(&format!(
            "{:<26} {:<30} {:>7}  {}",
            d["id"].as_str().unwrap_or(""),
            route,
            d["version"],
            d["component"].as_str().unwrap_or("")
        ));
        let config = d["config"].as_object().map(|c| {
            c.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>()
        });
        let secrets = d["secrets"].as_array().map(|s| {
            s.iter().map(|k| format!("{}=<secret>", k.as_str().unwrap_or(""))).collect::<Vec<_>>()
        });
        let settings: Vec<String> =
            config.into_iter().flatten().chain(secrets.into_iter().flatten()).collect();
        if !settings.is_empty() {
            say(&format!("{:<26} config: {}", "", settings.join(" ")));
        }
    }
    Ok(())
}

/// Switches a deployment back to its previous version.
pub async fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    let path = format!("/api/v1/deployments/{}/rollback", args.id);
    let d = api.send(api.request(reqwest::Method::POST, &path)).await?;
    say(&format!(
        "{} is back on version {} ({})",
        d["route"].as_str().unwrap_or(&args.id),
        d["version"],
        d["component"].as_str().unwrap_or("")
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
