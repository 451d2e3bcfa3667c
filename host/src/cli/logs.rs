//! `wasmwiz logs`: the tenant's invocations with their guest output, read
//! from `GET /api/v1/logs`; with `--follow`, as they happen, reconnecting by
//! itself (from the last event it printed) when the server goes away.

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::bail;
use futures::StreamExt as _;
use serde_json::Value;

use super::client::{Api, ClientArgs, Target, resolve};

/// Arguments of `wasmwiz logs`.
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// Keep printing events as they happen (Ctrl-C to stop).
    #[arg(long, short)]
    pub follow: bool,
    /// Only this deployment's events: its id (`dep_...`) or its route
    /// (`/acme/hello/...`).
    #[arg(long, value_name = "ID|ROUTE")]
    pub deployment: Option<String>,
    /// The host of `--deployment`'s route, when it is deployed on several.
    #[arg(long, requires = "deployment")]
    pub host: Option<String>,
    /// Events from this long ago (`10m`, `2h`) or since this time (RFC 3339).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only events with this outcome (`ok`, `trap`, `timeout`, `oom`,
    /// `stack_overflow`, `no_response`, `guest_error`).
    #[arg(long)]
    pub outcome: Option<String>,
    /// Most events printed (without `--follow`).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// One JSON object per line, as the API gives them.
    #[arg(long)]
    pub json: bool,
    /// Another tenant's stream (admin keys only).
    #[arg(long)]
    pub tenant: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Pause before reconnecting a follower.
const RECONNECT: Duration = Duration::from_secs(1);
/// Longest silence before a follower takes its connection for dead (the
/// server sends a keep-alive every 15 s).
const SILENCE: Duration = Duration::from_secs(45);

/// Prints the tenant's recent events, or follows its stream.
pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    let style = Style {
        json: args.json,
        color: !args.json
            && std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none(),
    };
    // A route becomes its deployment's id, and an id none of the tenant's
    // deployments has is refused: a filter that matches nothing would
    // print nothing, which reads as "no events yet".
    let deployment = match (&args.deployment, &args.tenant) {
        (Some(wanted), None) => Some(known_deployment(&api, wanted, args.host.as_deref()).await?),
        (wanted, _) => wanted.clone(),
    };
    let mut query: Vec<(&str, String)> = Vec::new();
    for (name, value) in [
        ("deployment", &deployment),
        ("since", &args.since),
        ("outcome", &args.outcome),
        ("tenant", &args.tenant),
    ] {
        if let Some(value) = value {
            query.push((name, value.clone()));
        }
    }
    if !args.follow {
        query.push(("limit", args.limit.to_string()));
        let answer =
            api.send(api.request(reqwest::Method::GET, "/api/v1/logs").query(&query)).await?;
        for event in answer["events"].as_array().into_iter().flatten() {
            print_event(event, style);
        }
        return Ok(());
    }

    query.push(("follow", "true".into()));
    let mut last_id: Option<String> = None;
    let mut reconnecting = false;
    // Until an event is printed, a reconnect asks for what happened since
    // the first connection (the stream is read from its end otherwise).
    let first_connect = crate::logs::now_rfc3339();
    loop {
        let mut request = api.request(reqwest::Method::GET, "/api/v1/logs").query(&query);
        match &last_id {
            Some(id) => request = request.header("last-event-id", id),
            None if reconnecting && args.since.is_none() => {
                request = request.query(&[("since", first_connect.as_str())]);
            }
            None => {}
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                if !reconnecting {
                    eprintln!("wasmwiz logs: lost the server ({error}); reconnecting");
                    reconnecting = true;
                }
                tokio::time::sleep(RECONNECT).await;
                continue;
            }
        };
        let status = response.status();
        if !status.is_success() {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let message = body["error"]["message"].as_str().unwrap_or("no message").to_string();
            // Still starting, its stream's backend away, or the old
            // connection's place not yet given back: wait; anything else (a
            // bad key, a bad filter) will not change by waiting.
            if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
                reconnecting = true;
                tokio::time::sleep(RECONNECT * 2).await;
                continue;
            }
            bail!("{message} (HTTP {})", status.as_u16());
        }
        if reconnecting {
            eprintln!("wasmwiz logs: reconnected");
            reconnecting = false;
        }
        let mut body = response.bytes_stream();
        // Bytes, split into messages before decoding: a character may
        // straddle two chunks.
        let mut pending: Vec<u8> = Vec::new();
        while let Ok(Some(Ok(chunk))) = tokio::time::timeout(SILENCE, body.next()).await {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                let message: Vec<u8> = pending.drain(..end + 2).collect();
                if let Some((id, event)) = parse_sse(&String::from_utf8_lossy(&message)) {
                    print_event(&event, style);
                    last_id = Some(id);
                }
            }
        }
        if !reconnecting {
            eprintln!("wasmwiz logs: the stream ended; reconnecting");
            reconnecting = true;
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// The id and JSON of one Server-Sent Event (comments give none).
fn parse_sse(message: &str) -> Option<(String, Value)> {
    let mut id = None;
    let mut data = String::new();
    for line in message.lines() {
        if let Some(rest) = line.strip_prefix("id:") {
            id = Some(rest.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("data:") {
            data.push_str(rest.trim_start());
        }
    }
    Some((id?, serde_json::from_str(&data).ok()?))
}

/// The id of the tenant's deployment `wanted` names (an id or a route).
async fn known_deployment(api: &Api, wanted: &str, host: Option<&str>) -> anyhow::Result<String> {
    if wanted.starts_with('/') {
        // Looked up among the tenant's deployments, or refused.
        let target = Target { deployment: wanted.to_string(), host: host.map(str::to_string) };
        return resolve(api, &target).await;
    }
    let id = wanted.to_string();
    let list = api.send(api.request(reqwest::Method::GET, "/api/v1/deployments")).await?;
    let known = list.as_array().into_iter().flatten().any(|d| d["id"].as_str() == Some(&id));
    if !known {
        bail!("you have no deployment {id} (wasmwiz deployments lists them)");
    }
    Ok(id)
}

#[derive(Clone, Copy)]
struct Style {
    json: bool,
    color: bool,
}

#[expect(clippy::print_stdout, reason = "the events are the command's output")]
fn print_event(event: &Value, style: Style) {
    if style.json {
        println!("{event}");
        return;
    }
    for line in render(event, style.color) {
        println!("{line}");
    }
}

/// An event as a person reads it: one line, then the guest's output under
/// it (`|` stdout, `!` stderr).
fn render(event: &Value, color: bool) -> Vec<String> {
    let text = |key: &str| harmless(event[key].as_str().unwrap_or("-"));
    // 2026-11-30T05:12:01.123Z -> 05:12:01.123
    let time = text("time");
    let time = time.get(11..23).unwrap_or(&time).to_string();
    if event["kind"] == "dropped" {
        return vec![format!("{time}  -- {}", text("message"))];
    }
    let status = event["status"].as_u64().unwrap_or(0);
    let painted = if color {
        let code = match status {
            200..=299 => "32",
            300..=399 => "36",
            400..=499 => "33",
            _ => "31",
        };
        format!("\x1b[{code}m{status}\x1b[0m")
    } else {
        status.to_string()
    };
    // Every line names its outcome, `ok` too: a column that is blank
    // for the common case reads as a missing value.
    let outcome = text("outcome");
    let mut lines = vec![format!(
        "{time}  {painted} {outcome}  {} {}  {} v{}  {:.1} ms  {}  {}",
        text("method"),
        text("path"),
        text("deployment"),
        event["version"].as_i64().unwrap_or(0),
        event["duration_ms"].as_f64().unwrap_or(0.0),
        text("node"),
        text("request_id"),
    )];
    for (stream, mark) in [("stdout", '|'), ("stderr", '!')] {
        if let Some(output) = event[stream].as_str() {
            lines.extend(output.trim_end().lines().map(|l| format!("    {mark} {}", harmless(l))));
        }
    }
    if let Some(cut) = event["output_dropped_bytes"].as_u64().filter(|&n| n > 0) {
        lines.push(format!("    ({cut} more bytes of output not kept)"));
    }
    lines
}

/// `text` with control characters shown as `\u{..}` escapes: a guest's
/// output (or a path) must not drive the reader's terminal.
fn harmless(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\t' { c.escape_unicode().to_string() } else { c.to_string() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_reads_as_one_line_and_its_output_beneath() {
        let event = serde_json::json!({
            "time": "2026-11-30T05:12:01.123Z", "kind": "invocation", "node": "a:8080",
            "request_id": "r1", "deployment": "dep_1", "version": 3, "method": "GET",
            "path": "/acme/x", "status": 500, "outcome": "trap", "duration_ms": 1.25,
            "stderr": "panicked at src/lib.rs:9\nnote: run with RUST_BACKTRACE=1\n",
            "output_dropped_bytes": 10
        });
        let lines = render(&event, false);
        assert_eq!(lines[0], "05:12:01.123  500 trap  GET /acme/x  dep_1 v3  1.2 ms  a:8080  r1");
        assert_eq!(lines[1], "    ! panicked at src/lib.rs:9");
        assert_eq!(lines[3], "    (10 more bytes of output not kept)");
        assert!(render(&event, true)[0].contains("\x1b[31m500\x1b[0m"));
        let ok = serde_json::json!({"kind": "invocation", "status": 200, "outcome": "ok"});
        assert!(render(&ok, false)[0].contains(" 200 ok  "), "ok is named, not left blank");
        let hostile = serde_json::json!({"kind": "invocation", "stdout": "\x1b]52;c;aGk=\x07o\rk"});
        let lines = render(&hostile, true);
        assert_eq!(
            lines[1], "    | \\u{1b}]52;c;aGk=\\u{7}o\\u{d}k",
            "no escape reaches the terminal"
        );
    }

    #[test]
    fn server_sent_events_give_their_id_and_json_and_comments_nothing() {
        let (id, event) = parse_sse("id: 5-1\nevent: invocation\ndata: {\"a\":1}\n\n").unwrap();
        assert_eq!((id.as_str(), event["a"].as_i64()), ("5-1", Some(1)));
        assert!(parse_sse(": keep-alive\n\n").is_none());
    }
}
