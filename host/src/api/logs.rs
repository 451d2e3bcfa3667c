//! `GET /api/v1/logs`: the caller's log stream, one event per invocation of
//! its deployments with the guest's output; recent events as JSON, or with
//! `follow=true` new ones as Server-Sent Events until the client leaves.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{ApiError, ApiState, require};
use crate::auth::{Principal, Scope};
use crate::logs::{Cursor, Filter, LogBackend, LogEvent, TICK, now_ms};
use crate::tenancy::TenantId;

/// Most events one answer (or one read of a follower) holds.
const MAX_LIMIT: usize = 1000;
/// Events an answer holds unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;
/// A follower gets a comment line this often when nothing happens, so
/// proxies and clients know the stream is alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Batches a follower may have unread before it is cut off.
const FOLLOWER_BACKLOG: usize = 16;
/// What `outcome` may filter on (an invocation's `outcome`).
const OUTCOMES: &[&str] =
    &["ok", "trap", "timeout", "oom", "stack_overflow", "no_response", "guest_error"];

/// The query of `GET /api/v1/logs` (all text: parsed here, so a bad value
/// gets a JSON error naming it).
#[derive(Debug, Default, Deserialize)]
pub struct LogQuery {
    deployment: Option<String>,
    since: Option<String>,
    limit: Option<String>,
    outcome: Option<String>,
    follow: Option<String>,
    tenant: Option<String>,
}

/// `since`: a duration back from now (1 to 6 digits and `s`, `m`, `h` or
/// `d`: `90s`, `10m`, `2h`, `7d`) or an RFC 3339 UTC time, as milliseconds
/// since the epoch.
fn since_ms(text: &str) -> Result<u64, ApiError> {
    if utc_time_shape(text)
        && let Ok(time) = humantime::parse_rfc3339(text)
    {
        let ms = time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        return Ok(ms);
    }
    let (number, unit_ms) = match text.char_indices().last() {
        Some((at, 's')) => (&text[..at], 1_000),
        Some((at, 'm')) => (&text[..at], 60_000),
        Some((at, 'h')) => (&text[..at], 3_600_000),
        Some((at, 'd')) => (&text[..at], 86_400_000),
        _ => (text, 0),
    };
    let digits = (1..=6).contains(&number.len()) && number.bytes().all(|b| b.is_ascii_digit());
    if unit_ms == 0 || !digits {
        return Err(ApiError::bad_request(format!(
            "since: `{text}` is neither a duration (90s, 10m, 2h, 7d) nor an RFC 3339 UTC time \
             (2026-11-30T12:00:00Z)"
        )));
    }
    let back: u64 = number.parse::<u64>().expect("1 to 6 digits") * unit_ms;
    Ok(now_ms().saturating_sub(back))
}

/// Whether `text` is spelled `YYYY-MM-DDTHH:MM:SS`, optional fractional
/// seconds, then `Z` or `+00:00`: the times the API document describes.
/// humantime also reads a few other spellings (`...:00.Z`, `...:00ZabcZ`),
/// which it must not take unchecked.
fn utc_time_shape(text: &str) -> bool {
    let Some(rest) = text.strip_suffix('Z').or_else(|| text.strip_suffix("+00:00")) else {
        return false;
    };
    let b = rest.as_bytes();
    if b.len() < 19 {
        return false;
    }
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18];
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    let fraction = match &b[19..] {
        [] => true,
        [b'.', decimals @ ..] => !decimals.is_empty() && decimals.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    digits.iter().all(|&i| b[i].is_ascii_digit())
        && separators.iter().all(|&(i, c)| b[i] == c)
        && fraction
}

/// `GET /api/v1/logs`.
pub async fn logs(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    headers: HeaderMap,
    super::ApiQuery(query): super::ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    require(&principal, Scope::Read)?;
    let Some(hub) = state.node.plane().logs().cloned() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "logs_off",
            "tenant log streams are off on this node (TENANT_LOGS=false)",
        ));
    };
    let tenant = match &query.tenant {
        Some(name) if name != &principal.tenant => {
            if !principal.is_admin() || !crate::tenancy::valid_name(name) {
                // Another tenant's stream is as absent as its objects.
                return Err(ApiError::not_found("tenant"));
            }
            state.node.store().tenant(name).await?.ok_or_else(|| ApiError::not_found("tenant"))?.id
        }
        _ => principal.tenant_id,
    };
    let limit = match &query.limit {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit: `{text}` is not a number from 1 to {MAX_LIMIT}"
                )));
            }
        },
    };
    let follow = match query.follow.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("follow: `{other}` is not true or false")));
        }
    };
    let since = query.since.as_deref().map(since_ms).transpose()?;
    if let Some(outcome) = &query.outcome
        && !OUTCOMES.contains(&outcome.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "outcome: `{outcome}` is not one of {}",
            OUTCOMES.join(", ")
        )));
    }
    let filter = Filter { deployment: query.deployment, outcome: query.outcome };
    let backend = hub.backend().clone();

    if !follow {
        let after = since.map_or(Cursor::START, Cursor::before_ms);
        // Filtered from what is kept, newest `limit` kept.
        let read = if filter.deployment.is_none() && filter.outcome.is_none() {
            limit
        } else {
            MAX_LIMIT * 2
        };
        let events = backend.newest(tenant, after, read).await.map_err(|e| unavailable(&e))?;
        let mut events: Vec<LogEvent> = events.into_iter().filter(|e| filter.matches(e)).collect();
        let skip = events.len().saturating_sub(limit);
        events.drain(..skip);
        return Ok(Json(serde_json::json!({ "events": events })).into_response());
    }

    let Some(place) = hub.follow(tenant) else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_followers",
            format!(
                "this tenant already follows its stream {} times on this node",
                crate::logs::MAX_FOLLOWERS_PER_TENANT
            ),
        ));
    };
    // Where to start: after the last event the client saw (a reconnect),
    // at `since`, or at the end (only new events).
    let last_seen =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(Cursor::parse);
    let start = match (last_seen, since) {
        // Never past the end: an id from the future would hide what comes.
        (Some(cursor), _) => cursor.min(backend.last(tenant).await.map_err(|e| unavailable(&e))?),
        (None, Some(ms)) => Cursor::before_ms(ms),
        (None, None) => backend.last(tenant).await.map_err(|e| unavailable(&e))?,
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(FOLLOWER_BACKLOG);
    let closing = hub.closing();
    let key = KeyCheck {
        state: state.clone(),
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    tokio::spawn(async move {
        let _place = place;
        // Ends with the node's drain: the client reconnects to another
        // node, or to this one restarted, from its last event. Ends too
        // when its key is revoked (through any node): a revoked key reads
        // nothing more, and no longer holds a place among the tenant's
        // followers.
        tokio::select! {
            () = follow_stream(backend, tenant, start, filter, tx.clone()) => {}
            () = key.revoked() => {
                let _ = tx.try_send(Ok(Bytes::from_static(b": the key was revoked\n\n")));
            }
            () = closing.cancelled() => {}
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
            // nginx would otherwise hold the events back in its buffer.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response())
}

/// The key a follower streams with, checked again whenever keys may have
/// changed anywhere (every node hears of a change within a second).
struct KeyCheck {
    state: Arc<ApiState>,
    authorization: Option<String>,
}

impl KeyCheck {
    /// Resolves once the key is no longer valid (revoked, or its tenant
    /// gone); a store that cannot be asked leaves the stream as it is.
    async fn revoked(&self) {
        let mut seen = self.state.auth.generation();
        loop {
            tokio::time::sleep(TICK).await;
            let now = self.state.auth.generation();
            if now == seen {
                continue;
            }
            seen = now;
            match self.state.auth.authenticate(self.authorization.as_deref()).await {
                Ok(_) | Err(crate::auth::AuthError::Store(_)) => {}
                Err(_) => return,
            }
        }
    }
}

fn unavailable(error: &anyhow::Error) -> ApiError {
    tracing::warn!(error = %format!("{error:#}"), "tenant log stream unreadable");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "logs_unavailable",
        "the log stream cannot be read now (its backend does not answer); try again",
    )
}

/// Sends the tenant's events after `cursor` to `tx` as they come, until the
/// client leaves, or falls [`FOLLOWER_BACKLOG`] batches behind (cut off).
/// A backend that stops answering (Redis restarting) is read again at each
/// tick; the follower stays.
async fn follow_stream(
    backend: Arc<dyn LogBackend>,
    tenant: TenantId,
    mut cursor: Cursor,
    filter: Filter,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
) {
    // The stream starts with a comment: the client sees the head at once.
    if tx.send(Ok(Bytes::from_static(b": following\n\n"))).await.is_err() {
        return;
    }
    let mut quiet = Duration::ZERO;
    loop {
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(TICK) => {}
        }
        let events = match backend.after(tenant, cursor, MAX_LIMIT).await {
            Ok(events) => events,
            Err(error) => {
                tracing::debug!(error = %format!("{error:#}"), "follower: stream unreadable");
                Vec::new()
            }
        };
        let mut batch = String::new();
        for event in events {
            cursor = event.position();
            if filter.matches(&event) {
                batch.push_str(&sse(&event));
            }
        }
        quiet += TICK;
        if batch.is_empty() {
            if quiet < KEEP_ALIVE {
                continue;
            }
            batch.push_str(": keep-alive\n\n");
        }
        quiet = Duration::ZERO;
        match tx.try_send(Ok(Bytes::from(batch))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::info!(tenant, "log follower cut off: it reads too slowly");
                return;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// One event as a Server-Sent Event: its id (for `Last-Event-ID`), its
/// kind, and its JSON.
fn sse(event: &LogEvent) -> String {
    let json = serde_json::to_string(event).unwrap_or_default();
    format!("id: {}\nevent: {}\ndata: {json}\n\n", event.id, event.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_or_a_time() {
        let now = now_ms();
        let ten_minutes = since_ms("10m").unwrap();
        assert!((now - 600_000..=now - 599_000).contains(&ten_minutes), "{ten_minutes}");
        assert_eq!(since_ms("2026-11-30T00:00:00Z").unwrap(), 1_795_996_800_000);
        assert_eq!(since_ms("2026-11-30T00:00:00.5+00:00").unwrap(), 1_795_996_800_500);
        assert!(since_ms("yesterday").is_err());
        // Spellings humantime reads and the API document does not describe.
        for odd in ["2026-11-30T00:00:00.Z", "2026-11-30T00:00:00ZabcZ"] {
            assert!(since_ms(odd).is_err(), "{odd}");
        }
        assert!(since_ms("2026-11-30T00:00:00.1+abcdZ").is_err());
    }

    #[test]
    fn an_event_is_one_server_sent_event_with_its_id() {
        let event = LogEvent {
            id: "17-0".into(),
            kind: "invocation".into(),
            stdout: "two\nlines".into(),
            ..LogEvent::default()
        };
        let text = sse(&event);
        assert!(text.starts_with("id: 17-0\nevent: invocation\ndata: {"), "{text}");
        assert_eq!(text.matches('\n').count(), 4, "newlines inside stay escaped: {text}");
    }
}
