//! One invocation taken apart into its phases and timed, for the benchmark
//! harness (`host/benches/invocation.rs`). The steps are those of
//! [`Runtime::invoke`], run inline on the caller's task so each can be
//! timed on its own; the server never calls this.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use tokio::sync::oneshot;
use wasmtime_wasi_http::WasiHttpView as _;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperIncomingBody;

use super::{App, Capabilities, OutboundPolicy, Runtime};

/// Where the time of one invocation went.
#[derive(Clone, Copy, Debug, Default)]
pub struct Phases {
    /// The sandbox: WASI and HTTP contexts, resource table, `Store`.
    pub context: Duration,
    /// A pool slot and a new instance from the pre-instantiated template.
    pub instantiate: Duration,
    /// The guest's handler, host calls included, until it returns.
    pub guest: Duration,
    /// Reading the response body the guest wrote.
    pub response: Duration,
    /// Dropping the store: the slot reset for the next instance.
    pub teardown: Duration,
}

impl Phases {
    /// The sum of the phases.
    pub fn total(&self) -> Duration {
        self.context + self.instantiate + self.guest + self.response + self.teardown
    }
}

impl Runtime {
    /// Runs `request` through a fresh instance of `app` with the default
    /// limits and no capabilities, timing each phase.
    #[doc(hidden)]
    pub async fn invoke_phased(
        &self,
        app: &App,
        request: Request<HyperIncomingBody>,
        memory_limit: u64,
        outbound: OutboundPolicy,
    ) -> anyhow::Result<(Phases, StatusCode, Bytes)> {
        let t0 = Instant::now();
        let mut store = self.new_store(memory_limit, outbound, Arc::new(Capabilities::default()));
        let t1 = Instant::now();
        let proxy = app.p2()?.instantiate_async(&mut store).await?;
        let t2 = Instant::now();
        let request = store.data_mut().http().new_incoming_request(Scheme::Http, request)?;
        let (head_tx, head_rx) = oneshot::channel();
        let out = store.data_mut().http().new_response_outparam_from_callback(move |head| {
            let _ = head_tx.send(head);
        })?;
        proxy.wasi_http_incoming_handler().call_handle(&mut store, request, out).await?;
        let t3 = Instant::now();
        let response = head_rx.await?.map_err(|code| anyhow::anyhow!("error code {code:?}"))?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let t4 = Instant::now();
        drop(store);
        let t5 = Instant::now();
        let phases = Phases {
            context: t1 - t0,
            instantiate: t2 - t1,
            guest: t3 - t2,
            response: t4 - t3,
            teardown: t5 - t4,
        };
        Ok((phases, status, body))
    }
}
