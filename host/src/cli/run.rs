//! `wasmwiz run`: serve components straight from files.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};

use crate::config::{HttpArgs, LimitArgs, ListenArgs, LogArgs, OutboundArgs, RuntimeArgs};
use crate::dataplane::{DataPlane, DataPlaneSettings, LiveRoute, RouteTarget, Routes};
use crate::kv::memory::MemoryKv;
use crate::kv::{KvBackend, KvLimits};
use crate::metrics::Metrics;
use crate::router::RoutePattern;
use crate::runtime::{Capabilities, KvAccess, Limits, OutboundPolicy, Runtime, compile};
use crate::server::{self, HttpOptions, tls};
use crate::tenancy::MAX_INSTANCE_REUSE;

/// Arguments of `wasmwiz run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Components to serve: `FILE` (on `/...`) or `ROUTE=FILE`, where ROUTE
    /// is `/path` (exactly) or `/path/...` (and everything below).
    #[arg(required = true, value_name = "[ROUTE=]FILE")]
    pub components: Vec<String>,

    /// A host every component may send HTTP requests to (repeatable;
    /// `[scheme://]host[:port]`, `*.` for subdomains). Default: none.
    #[arg(long = "allow-outbound", value_name = "HOST",
          value_parser = |s: &str| crate::runtime::OutboundPolicy::check_pattern(s).map(|()| s.to_string()))]
    pub allow_outbound: Vec<String>,

    /// A configuration value every component reads through
    /// `wasi:config/store` (repeatable).
    #[arg(long = "config", value_name = "NAME=VALUE", value_parser = parse_config)]
    pub config: Vec<(String, String)>,

    /// Requests one instance may serve. 1 (the default): a fresh instance
    /// for every request. More: an instance whose request ended well serves
    /// later requests of its route (faster; they see what earlier requests
    /// left in its memory).
    #[arg(long, env = "MAX_INSTANCE_REUSE", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_INSTANCE_REUSE)))]
    pub max_instance_reuse: u32,

    /// WASIp3 components only: requests one instance serves at once (with
    /// `--max-instance-reuse` of at least as many).
    #[arg(long, env = "MAX_INSTANCE_CONCURRENCY", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::tenancy::MAX_INSTANCE_CONCURRENCY)))]
    pub max_instance_concurrency: u32,

    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub outbound: OutboundArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// One `[ROUTE=]FILE` argument.
#[derive(Debug, PartialEq)]
struct Mount {
    route: RoutePattern,
    file: PathBuf,
}

fn parse_config(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("`{arg}`: expected NAME=VALUE")),
    }
}

fn parse_mount(arg: &str) -> anyhow::Result<Mount> {
    // A file name may contain `=`: only a leading `/...=` is a route.
    let (route, file) = match arg.split_once('=') {
        Some((route, file)) if route.starts_with('/') => (route, file),
        _ => ("/...", arg),
    };
    let route = RoutePattern::parse_unreserved(route, None)
        .with_context(|| format!("`{arg}`: invalid route"))?;
    Ok(Mount { route, file: PathBuf::from(file) })
}

/// Loads every component, binds, prints `listening on ...`, serves until
/// SIGINT or SIGTERM.
pub async fn execute(args: RunArgs) -> anyhow::Result<()> {
    args.limits.validate()?;
    args.http.validate()?;
    let addr = args.listen.socket_addr()?;
    let mounts =
        args.components.iter().map(|a| parse_mount(a)).collect::<anyhow::Result<Vec<_>>>()?;
    for (i, mount) in mounts.iter().enumerate() {
        if mounts[..i].iter().any(|m| m.route == mount.route) {
            bail!("route `{}` is given twice", mount.route);
        }
    }
    let tls = match (&args.http.tls_cert_path, &args.http.tls_key_path) {
        (Some(cert), Some(key)) => Some(tls::ReloadingCert::load(cert, key)?),
        _ => None,
    };

    let runtime = Arc::new(Runtime::new(&args.runtime.runtime_config())?);
    let limits = Limits {
        memory_bytes: args.limits.memory_limit,
        timeout: args.limits.execution_timeout(),
        max_input_bytes: args.limits.max_input_size,
    };
    let outbound = OutboundPolicy::new(&args.allow_outbound, Arc::new(args.outbound.settings()));
    let metrics = Metrics::new();
    // Key-value data lives in this process while it runs: one store for
    // every route, each route's `default` bucket its own.
    let kv: Arc<dyn KvBackend> = Arc::new(MemoryKv::new());
    let config: BTreeMap<String, String> = args.config.iter().cloned().collect();
    let mut routes = Routes::new();
    for mount in mounts {
        let bytes = tokio::fs::read(&mount.file)
            .await
            .with_context(|| format!("cannot read {}", mount.file.display()))?;
        let engine = runtime.engine().clone();
        let compiled = tokio::task::spawn_blocking(move || compile(&engine, &bytes))
            .await?
            .with_context(|| format!("{}", mount.file.display()))?;
        let app = runtime
            .prepare(&compiled.component)
            .with_context(|| format!("{}", mount.file.display()))?;
        tracing::info!(route = %mount.route, file = %mount.file.display(),
                       compile_ms = compiled.compile_time.as_millis() as u64, "component loaded");
        let label = mount.route.to_string();
        let capabilities = Arc::new(Capabilities {
            kv: Some(KvAccess {
                backend: kv.clone(),
                tenant: 0,
                deployment: label.clone(),
                limits: KvLimits::default(),
                usage: None,
            }),
            config: config.clone(),
            // `wasmwiz run` has no queues: the internal host answers 404.
            queues: None,
        });
        let reuse = args.max_instance_reuse;
        let instances = runtime.instances(&app, &label, reuse, args.max_instance_concurrency);
        let route = Arc::new(LiveRoute {
            capabilities,
            metrics: Arc::new(metrics.route(&label, "-")),
            pattern: mount.route,
            app,
            limits,
            label,
            outbound: outbound.clone(),
            owner: None,
            instances,
            rollout: None,
        });
        routes.insert(&route.pattern, RouteTarget::Live(route.clone()));
    }
    let plane = Arc::new(DataPlane::new(
        runtime,
        DataPlaneSettings {
            quota: None,
            body_read_timeout: args.http.body_read_timeout,
            // Every route is compiled before `run` listens.
            compile_wait: std::time::Duration::ZERO,
            metrics: metrics.clone(),
            server_timing: false,
            logs: None,
            max_buffered_input: args.http.max_buffered_input,
        },
    ));
    plane.publish(routes);

    let options = HttpOptions::from(&args.http);
    let listener =
        server::bind(addr, &options).with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr();
    let acceptor = match tls {
        Some(cert) => {
            // Reloads until the process ends.
            tokio::spawn(cert.clone().watch());
            Some(tls::acceptor(cert)?)
        }
        None => None,
    };
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    eprintln!("listening on {scheme}://{local}");
    server::serve(
        listener,
        acceptor,
        Arc::new(RunHandler(plane)),
        options,
        server::shutdown_signal(),
    )
    .await
}

/// `run` answers every request from its routes.
struct RunHandler(Arc<DataPlane>);

impl server::Handler for RunHandler {
    async fn handle(
        &self,
        request: http::Request<hyper::body::Incoming>,
        conn: server::ConnInfo,
    ) -> http::Response<crate::response::ResponseBody> {
        self.0.handle(request, conn).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_file_serves_everything() {
        let m = parse_mount("hello.wasm").unwrap();
        assert_eq!(m.route.to_string(), "/...");
        assert_eq!(m.file, PathBuf::from("hello.wasm"));
    }

    #[test]
    fn a_route_prefix_maps_the_file() {
        let m = parse_mount("/hello/...=dir/hello.wasm").unwrap();
        assert_eq!(m.route.to_string(), "/hello/...");
        assert_eq!(m.file, PathBuf::from("dir/hello.wasm"));
    }

    #[test]
    fn an_equals_sign_in_a_file_name_is_not_a_route() {
        let m = parse_mount("a=b.wasm").unwrap();
        assert_eq!(m.route.to_string(), "/...");
        assert_eq!(m.file, PathBuf::from("a=b.wasm"));
    }

    #[test]
    fn a_bad_route_is_refused() {
        assert!(parse_mount("/a/.../b=x.wasm").is_err());
    }
}
