//! `wasmwiz schedule` and `wasmwiz queue`: clients of the REST API for a
//! tenant's schedules and queues.

use anyhow::Context as _;
use serde_json::{Value, json};

use super::client::{Api, ClientArgs, Target, resolve};

/// Arguments of `wasmwiz schedule`.
#[derive(clap::Args, Debug)]
pub struct ScheduleArgs {
    #[command(subcommand)]
    pub command: ScheduleCommand,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What `wasmwiz schedule` does.
#[derive(clap::Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Invoke a deployment on a schedule: `wasmwiz schedule add /acme/...
    /// '*/5 * * * *' --path /acme/jobs/cleanup`.
    Add {
        #[command(flatten)]
        target: Target,
        /// Five cron fields in UTC (`*/5 * * * *`: every five minutes) or
        /// `@every <duration>` (`@every 30s`).
        #[arg(value_name = "CRON")]
        cron: String,
        /// The path (and query) to request, inside the deployment's route.
        #[arg(long)]
        path: String,
        /// The request's method.
        #[arg(long, default_value = "POST")]
        method: String,
        /// The request's body.
        #[arg(long, default_value = "")]
        body: String,
    },
    /// Your schedules and when each is next due.
    List,
    /// Delete a schedule: it never fires again.
    Rm {
        /// The schedule's id (`sch_...`).
        id: String,
    },
    /// A schedule's recent firings, newest first.
    Runs {
        /// The schedule's id (`sch_...`).
        id: String,
    },
}

/// Arguments of `wasmwiz queue`.
#[derive(clap::Args, Debug)]
pub struct QueueArgs {
    #[command(subcommand)]
    pub command: QueueCommand,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What `wasmwiz queue` does.
#[derive(clap::Subcommand, Debug)]
pub enum QueueCommand {
    /// Create a queue whose messages are `POST`ed to a deployment:
    /// `wasmwiz queue create orders /acme/... --path /acme/orders/consume`.
    Create {
        /// The queue's name (lower-case letters, digits and `-`).
        name: String,
        #[command(flatten)]
        target: Target,
        /// The path messages are `POST`ed to, inside the deployment's route.
        #[arg(long)]
        path: String,
        /// Deliveries before a message goes to the dead letters.
        #[arg(long, default_value_t = 5)]
        max_attempts: u32,
        /// Seconds a delivery may take before the message is delivered
        /// again (default 30, or the tier's execution timeout if longer).
        #[arg(long, value_name = "SECONDS")]
        visibility_timeout: Option<u32>,
    },
    /// Your queues and how many messages each holds.
    List,
    /// Delete a queue and every message it holds.
    Rm {
        /// The queue's name.
        name: String,
    },
    /// Publish a message: the text given, or a file's bytes (`@file`).
    Publish {
        /// The queue's name.
        name: String,
        /// The message: text, or `@path` for a file's bytes.
        message: String,
        /// The message's `Content-Type`.
        #[arg(long, default_value = "text/plain")]
        content_type: String,
    },
    /// The messages that failed every delivery.
    Dead {
        /// The queue's name.
        name: String,
    },
    /// Put every dead message back in the queue, its attempts from zero.
    Redrive {
        /// The queue's name.
        name: String,
    },
}

#[expect(clippy::print_stdout, reason = "client commands answer on stdout")]
fn say(line: &str) {
    println!("{line}");
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Runs `wasmwiz schedule ...`.
pub async fn schedule(args: ScheduleArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    match args.command {
        ScheduleCommand::Add { target, cron, path, method, body } => {
            let deployment = resolve(&api, &target).await?;
            let made = api
                .send(api.request(reqwest::Method::POST, "/api/v1/schedules").json(&json!({
                    "deployment": deployment, "cron": cron, "path": path,
                    "method": method, "body": body,
                })))
                .await?;
            say(&format!("schedule {} created; next due (UTC):", text(&made["id"])));
            for at in made["next_runs"].as_array().into_iter().flatten() {
                say(&format!("  {}", text(at)));
            }
        }
        ScheduleCommand::List => {
            let list = api.send(api.request(reqwest::Method::GET, "/api/v1/schedules")).await?;
            let list = list.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                say("no schedules");
                return Ok(());
            }
            say(&format!("{:<30} {:<16} {:<7} {:<32} NEXT", "ID", "CRON", "METHOD", "PATH"));
            for s in list {
                say(&format!(
                    "{:<30} {:<16} {:<7} {:<32} {}",
                    text(&s["id"]),
                    text(&s["cron"]),
                    text(&s["method"]),
                    text(&s["path"]),
                    text(&s["next_runs"][0])
                ));
            }
        }
        ScheduleCommand::Rm { id } => {
            api.send(api.request(reqwest::Method::DELETE, &format!("/api/v1/schedules/{id}")))
                .await?;
            say(&format!("schedule {id} deleted"));
        }
        ScheduleCommand::Runs { id } => {
            let runs = api
                .send(api.request(reqwest::Method::GET, &format!("/api/v1/schedules/{id}/runs")))
                .await?;
            let runs = runs.as_array().cloned().unwrap_or_default();
            if runs.is_empty() {
                say("no firings yet");
                return Ok(());
            }
            say(&format!(
                "{:<26} {:<26} {:<8} {:<6} {:<16} NODE",
                "DUE", "FIRED", "STATUS", "HTTP", "OUTCOME"
            ));
            for r in runs {
                say(&format!(
                    "{:<26} {:<26} {:<8} {:<6} {:<16} {}",
                    text(&r["due_at"]),
                    text(&r["fired_at"]),
                    text(&r["status"]),
                    text(&r["http_status"]),
                    text(&r["outcome"]),
                    text(&r["node"])
                ));
            }
        }
    }
    Ok(())
}

/// Runs `wasmwiz queue ...`.
pub async fn queue(args: QueueArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    match args.command {
        QueueCommand::Create { name, target, path, max_attempts, visibility_timeout } => {
            let deployment = resolve(&api, &target).await?;
            let mut body = json!({
                "name": name, "deployment": deployment, "path": path,
                "max_attempts": max_attempts,
            });
            if let Some(v) = visibility_timeout {
                body["visibility_timeout_s"] = json!(v);
            }
            let made =
                api.send(api.request(reqwest::Method::POST, "/api/v1/queues").json(&body)).await?;
            say(&format!(
                "queue {} created: messages go to POST {} ({} attempts, visibility {} s)",
                text(&made["name"]),
                text(&made["path"]),
                made["max_attempts"],
                made["visibility_timeout_s"]
            ));
        }
        QueueCommand::List => {
            let list = api.send(api.request(reqwest::Method::GET, "/api/v1/queues")).await?;
            let list = list.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                say("no queues");
                return Ok(());
            }
            say(&format!(
                "{:<20} {:<32} {:>8} {:>6} DEPLOYMENT",
                "NAME", "PATH", "WAITING", "DEAD"
            ));
            for q in list {
                say(&format!(
                    "{:<20} {:<32} {:>8} {:>6} {}",
                    text(&q["name"]),
                    text(&q["path"]),
                    text(&q["waiting"]),
                    text(&q["dead"]),
                    text(&q["deployment"])
                ));
            }
        }
        QueueCommand::Rm { name } => {
            api.send(api.request(reqwest::Method::DELETE, &format!("/api/v1/queues/{name}")))
                .await?;
            say(&format!("queue {name} deleted"));
        }
        QueueCommand::Publish { name, message, content_type } => {
            let body = match message.strip_prefix('@') {
                Some(file) => {
                    tokio::fs::read(file).await.with_context(|| format!("cannot read {file}"))?
                }
                None => message.into_bytes(),
            };
            let published = api
                .send(
                    api.request(reqwest::Method::POST, &format!("/api/v1/queues/{name}/messages"))
                        .header("content-type", content_type)
                        .body(body),
                )
                .await?;
            say(&format!("published {}", text(&published["id"])));
        }
        QueueCommand::Dead { name } => {
            let dead = api
                .send(api.request(reqwest::Method::GET, &format!("/api/v1/queues/{name}/dead")))
                .await?;
            let dead = dead.as_array().cloned().unwrap_or_default();
            if dead.is_empty() {
                say("no dead letters");
                return Ok(());
            }
            say(&format!("{:<30} {:>8} {:<26} LAST ERROR", "ID", "ATTEMPTS", "PUBLISHED"));
            for d in dead {
                say(&format!(
                    "{:<30} {:>8} {:<26} {}",
                    text(&d["id"]),
                    text(&d["attempts"]),
                    text(&d["published_at"]),
                    text(&d["last_error"])
                ));
            }
        }
        QueueCommand::Redrive { name } => {
            let moved =
                api.send(api.request(
                    reqwest::Method::POST,
                    &format!("/api/v1/queues/{name}/dead/redrive"),
                ))
                .await?;
            say(&format!("{} dead letters back in queue {name}", text(&moved["redriven"])));
        }
    }
    Ok(())
}
