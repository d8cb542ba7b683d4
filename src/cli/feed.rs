//! `cairn feed <table>`: follows a table's change feed and prints each change
//! and each resolved checkpoint as it arrives, one line each (with `--json`,
//! one JSON object per line), flushed at once so that it can be piped.
//!
//! A consumer that records the last `resolved` line it processed resumes with
//! `--from` that version and misses nothing (changes above it may come again).

use super::client::{code_name, fmt_version, parse_version, put_bytes, rpc_error, show_bytes, Client, Out};
use cairn_proto::kv;
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;

/// `feed <table>`
#[derive(clap::Args, Debug)]
pub struct FeedArgs {
    /// Table name.
    table: String,
    /// Only keys starting with P.
    #[arg(long, value_name = "P")]
    prefix: Option<String>,
    /// Send the changes above this version (a `resolved` checkpoint printed
    /// earlier, as wall_ns.logical.node_id); default: from now.
    #[arg(long, value_name = "VERSION", value_parser = parse_version)]
    from: Option<kv::Version>,
    /// Also print each change's previous value.
    #[arg(long)]
    with_prev: bool,
    /// How often an idle table's resolved checkpoint is sent, in ms (0: the server's default).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    resolved_interval_ms: u32,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long, value_name = "S")]
    seconds: Option<f64>,
}

pub(super) async fn follow(client: &mut Client, out: &mut Out, json: bool, args: FeedArgs) -> anyhow::Result<()> {
    let req = kv::SubscribeRequest {
        table: args.table.clone(),
        prefix: args.prefix.map(String::into_bytes).unwrap_or_default(),
        from_version: args.from,
        with_prev_value: args.with_prev,
        resolved_interval_ms: args.resolved_interval_ms,
    };
    let mut stream = client.subscribe(req).await.map_err(rpc_error)?.into_inner();
    let stop = async {
        match args.seconds {
            Some(s) => tokio::time::sleep(Duration::from_secs_f64(s.max(0.0))).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = &mut stop => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            Err(status) => {
                if json {
                    let line = json!({"type": "error", "code": code_name(status.code()), "message": status.message()});
                    writeln!(out, "{line}")?;
                    out.flush()?;
                }
                return Err(rpc_error(status));
            }
        };
        for e in &msg.events {
            print_event(out, json, e)?;
        }
        if let Some(v) = &msg.resolved {
            if json {
                writeln!(out, "{}", json!({"type": "resolved", "version": fmt_version(v)}))?;
            } else {
                writeln!(out, "resolved {}", fmt_version(v))?;
            }
        }
        out.flush()?;
    }
}

fn print_event(out: &mut Out, json: bool, e: &kv::ChangeEvent) -> anyhow::Result<()> {
    let version = e.version.as_ref().map(fmt_version).unwrap_or_default();
    if json {
        let mut obj = serde_json::Map::new();
        obj.insert("type".into(), Value::String(if e.deleted { "delete" } else { "put" }.into()));
        put_bytes(&mut obj, "key", &e.key);
        if !e.deleted {
            put_bytes(&mut obj, "value", &e.value);
        }
        obj.insert("version".into(), Value::String(version));
        if e.expires_at_ms != 0 {
            obj.insert("expires_at_ms".into(), json!(e.expires_at_ms));
        }
        if e.has_prev {
            put_bytes(&mut obj, "prev", &e.prev_value);
        }
        writeln!(out, "{}", Value::Object(obj))?;
        return Ok(());
    }
    let prev = if e.has_prev { format!(" (was {})", show_bytes(&e.prev_value)) } else { String::new() };
    if e.deleted {
        writeln!(out, "delete {} @{version}{prev}", show_bytes(&e.key))?;
    } else {
        writeln!(out, "put {} = {} @{version}{prev}", show_bytes(&e.key), show_bytes(&e.value))?;
    }
    Ok(())
}
