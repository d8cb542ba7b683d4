//! The CLI's client commands: everything the `cairn` binary does as a gRPC
//! *client* of a running node (tables, single-key reads and writes, scans,
//! cluster status and range administration).
//!
//! This module owns:
//! - [`ClientCommand`], the clap subcommand tree, meant to be flattened into
//!   the top-level parser (which defines the global `--addr` and `--json`);
//! - [`run`], which connects to one node and executes one command;
//! - the output formats: aligned human-readable tables, or with `--json` one
//!   compact JSON value per command on stdout, for scripts.
//!
//! Keys, values and request ids come from the command line as UTF-8 strings.
//! Bytes are printed as UTF-8 when they are valid (and, in tables, free of
//! control characters), else as `0x` + hex. Versions print as
//! `wall_ns.logical.node_id`, the same form `--if-version` accepts.
//!
//! Errors: a gRPC error is printed to stderr as `error: <CODE>: <message>` and
//! returned as a [`Reported`] error, so the caller only has to turn it into a
//! non-zero exit code (it may check `err.is::<Reported>()` to avoid printing
//! it twice). A failed write condition is printed the same way (`condition
//! failed; ...`) and also returns [`Reported`]. Any other error (bad input,
//! for instance) is returned unprinted.

use std::fmt;
use std::future::Future;
use std::io::{self, Write};
use std::time::Duration;

use anyhow::Context;
use cairn_proto::kv::{self, cairn_client::CairnClient};
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint};

/// How long to wait for a TCP/HTTP2 connection to the node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a response (for a scan: for each streamed page).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The server's limit on request ids.
const MAX_REQUEST_ID_LEN: usize = 64;
/// A scan's human output aligns its columns over this many rows, then keeps
/// those widths so that it can stream the rest without buffering it.
const SCAN_ALIGN_ROWS: usize = 1000;

// ---------------------------------------------------------------------------
// Command tree
// ---------------------------------------------------------------------------

/// Commands that talk to a running node over gRPC.
///
/// Flatten this into the top-level subcommands. (This comment is not used as
/// help text: the `command` attribute below keeps it from becoming the
/// parent's `about`.)
#[derive(clap::Subcommand, Debug)]
#[command(about = None, long_about = None)]
pub enum ClientCommand {
    /// Create, drop and list tables.
    #[command(subcommand)]
    Table(TableCommand),
    /// Write a value, optionally only if a condition holds.
    Put(PutArgs),
    /// Read one key.
    Get(GetArgs),
    /// Delete a key, optionally only if a condition holds.
    Delete(DeleteArgs),
    /// Add to an integer value (a missing key counts as 0) and print the result.
    Incr(IncrArgs),
    /// List keys (and values) in ascending key order.
    Scan(ScanArgs),
    /// Follow every change of a table as it commits (a change feed), with resolved checkpoints.
    Feed(super::feed::FeedArgs),
    /// Inspect the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Split ranges and move their replicas and leaders.
    #[command(subcommand)]
    Range(RangeCommand),
    /// List nodes; drain or decommission one.
    #[command(subcommand)]
    Node(NodeCommand),
}

/// `node ...`
#[derive(clap::Subcommand, Debug)]
pub enum NodeCommand {
    /// Show every node and its state (live, suspect, dead, draining, decommissioning, decommissioned).
    List,
    /// Move every leader off a node (before restarting it); it takes no new replica.
    Drain {
        /// Node id (see `node list`).
        id: u64,
    },
    /// Move every replica off a node; once it is decommissioned it can be stopped.
    Decommission {
        /// Node id (see `node list`).
        id: u64,
    },
    /// Undo a drain or a decommission.
    Activate {
        /// Node id (see `node list`).
        id: u64,
    },
}

/// `table ...`
#[derive(clap::Subcommand, Debug)]
pub enum TableCommand {
    /// Create a table (ordered ranges by default).
    Create {
        /// Table name.
        name: String,
        /// Hash-partition the table: keys spread over 16384 slots.
        #[arg(long)]
        hash: bool,
        /// Number of initial ranges of a hash table (implies --hash).
        #[arg(long, value_name = "N")]
        hash_ranges: Option<u32>,
        /// Pre-split an ordered table at KEY (repeatable).
        #[arg(
            long = "split-at",
            value_name = "KEY",
            num_args = 1..,
            conflicts_with_all = ["hash", "hash_ranges"]
        )]
        split_at: Vec<String>,
        /// Replicas per range: 1, 3 or 5 (default: the cluster's).
        #[arg(long)]
        replication_factor: Option<u32>,
        /// Zones for the table's range leaders, most preferred first (comma-separated).
        #[arg(long, value_delimiter = ',')]
        lease_preferences: Vec<String>,
    },
    /// Change a table's placement online; the controller moves replicas and
    /// leaders to match.
    Alter {
        /// Table name.
        name: String,
        /// Replicas per range: 1, 3 or 5.
        #[arg(long)]
        replication_factor: Option<u32>,
        /// Zones for the table's range leaders, most preferred first (comma-separated).
        #[arg(long, value_delimiter = ',', conflicts_with = "clear_lease_preferences")]
        lease_preferences: Vec<String>,
        /// Leaders anywhere again.
        #[arg(long)]
        clear_lease_preferences: bool,
    },
    /// Drop a table and all its data.
    Drop {
        /// Table name.
        name: String,
    },
    /// List tables.
    List,
}

/// A precondition for `put` and `delete`; at most one may be given.
#[derive(clap::Args, Debug, Clone, Default)]
#[group(id = "condition", multiple = false)]
pub struct ConditionArgs {
    /// Only if the key does not exist.
    #[arg(long)]
    if_absent: bool,
    /// Only if the key exists.
    #[arg(long)]
    if_present: bool,
    /// Only if the key exists at version V (wall_ns.logical.node_id).
    #[arg(long, value_name = "V", value_parser = parse_version)]
    if_version: Option<kv::Version>,
    /// Only if the key exists with value X.
    #[arg(long, value_name = "X")]
    if_value: Option<String>,
}

/// `put <table> <key> <value>`
#[derive(clap::Args, Debug)]
pub struct PutArgs {
    /// Table name.
    table: String,
    /// Key (UTF-8).
    key: String,
    /// Value (UTF-8).
    value: String,
    #[command(flatten)]
    condition: ConditionArgs,
    /// Idempotency id (up to 64 bytes): a retry with the same id returns the
    /// first attempt's result instead of writing again.
    #[arg(long, value_name = "ID", value_parser = parse_request_id)]
    request_id: Option<String>,
    /// The value expires this many milliseconds after it is written (it then reads as absent).
    #[arg(long, value_name = "MS")]
    ttl_ms: Option<u64>,
}

/// `get <table> <key>`
#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// Table name.
    table: String,
    /// Key (UTF-8).
    key: String,
    /// Allow a bounded-stale read from any replica instead of a linearizable
    /// one: it has every write acknowledged more than --max-staleness-ms ago.
    #[arg(long)]
    stale: bool,
    /// The staleness bound of --stale, in ms (0: the server's default, 10000).
    #[arg(long, default_value_t = 0, requires = "stale")]
    max_staleness_ms: u64,
}

/// `delete <table> <key>`
#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// Table name.
    table: String,
    /// Key (UTF-8).
    key: String,
    #[command(flatten)]
    condition: ConditionArgs,
    /// Idempotency id (up to 64 bytes), as for `put`.
    #[arg(long, value_name = "ID", value_parser = parse_request_id)]
    request_id: Option<String>,
}

/// `incr <table> <key> [--by N]`
#[derive(clap::Args, Debug)]
pub struct IncrArgs {
    /// Table name.
    table: String,
    /// Key (UTF-8).
    key: String,
    /// Amount to add (negative to subtract).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    by: i64,
    /// Idempotency id (up to 64 bytes), as for `put`.
    #[arg(long, value_name = "ID", value_parser = parse_request_id)]
    request_id: Option<String>,
}

/// `scan <table>`
#[derive(clap::Args, Debug)]
pub struct ScanArgs {
    /// Table name.
    table: String,
    /// Only keys starting with P.
    #[arg(long, value_name = "P", conflicts_with_all = ["start", "end"])]
    prefix: Option<String>,
    /// First key (inclusive).
    #[arg(long, value_name = "S")]
    start: Option<String>,
    /// Last key (exclusive); default: the end of the table.
    #[arg(long, value_name = "E")]
    end: Option<String>,
    /// Return at most N keys in total (0: no limit). When the limit stops
    /// the scan early, a page token to continue from is printed.
    #[arg(long, value_name = "N", default_value_t = 0)]
    limit: u32,
    /// Resume after a previous scan, from the (hex) token it printed.
    #[arg(long, value_name = "T", value_parser = parse_page_token)]
    page_token: Option<PageToken>,
    /// Keys per streamed page (0: the server's default).
    #[arg(long, value_name = "N", default_value_t = 0)]
    page_size: u32,
    /// Fetch keys (and versions) without values.
    #[arg(long)]
    keys_only: bool,
}

/// A scan's opaque continuation token, given on the command line in hex.
#[derive(Debug, Clone)]
pub struct PageToken(Vec<u8>);

/// `cluster ...`
#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// Show nodes and ranges.
    Status,
    /// Show the controller's recent decisions (replica adds, moves, removals,
    /// leader transfers, splits), newest first, with their reasons and outcomes.
    Events {
        /// How many to show (0: all that are kept).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show the hottest keys across the cluster (requests per second), noting
    /// keys too hot for their range to split around them.
    Hot {
        /// How many to show.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

/// `range ...`
#[derive(clap::Subcommand, Debug)]
pub enum RangeCommand {
    /// Split the range holding KEY so that a new range starts at KEY.
    Split {
        /// Table name.
        table: String,
        /// User key (UTF-8) at which the right-hand range starts.
        key: String,
    },
    /// Merge a range with its right-hand neighbour (same table; voters on the
    /// same nodes). The neighbour is retired and its span joins RANGE_ID.
    Merge {
        /// Range id of the left-hand range (see `cluster status`).
        range_id: u64,
    },
    /// Add a replica of a range on a node.
    AddReplica {
        /// Range id (see `cluster status`).
        range_id: u64,
        /// Node id.
        node_id: u64,
    },
    /// Remove a range's replica from a node.
    RemoveReplica {
        /// Range id (see `cluster status`).
        range_id: u64,
        /// Node id.
        node_id: u64,
    },
    /// Move a range's leadership to the replica on a node.
    TransferLeader {
        /// Range id (see `cluster status`).
        range_id: u64,
        /// Node id.
        node_id: u64,
    },
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// An error this module has already printed to stderr (a gRPC error, a
/// connection failure, or a failed condition). Its text repeats what was
/// printed, without the `error: ` prefix.
#[derive(Debug)]
pub struct Reported(String);

impl fmt::Display for Reported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Reported {}

/// Awaits a unary call, at most [`REQUEST_TIMEOUT`]; errors go through [`rpc_error`].
///
/// (The timeout is ours rather than `Endpoint::timeout`, which reports an
/// expired deadline as CANCELLED.)
pub(super) async fn call<T>(fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> anyhow::Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(rpc_error(status)),
        Err(_) => Err(rpc_error(deadline_exceeded())),
    }
}

/// Awaits a mutation like [`call`], and on failure also prints whether it may have
/// been applied (the server's `cairn-write-outcome`; a deadline that expired here,
/// or an unmarked error, is unknown) and, if so, how to retry it safely.
async fn call_write<T>(
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    request_id: &str,
) -> anyhow::Result<T> {
    let status = match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok(resp)) => return Ok(resp.into_inner()),
        Ok(Err(status)) => status,
        Err(_) => deadline_exceeded(),
    };
    let outcome = status.metadata().get(crate::outcome::HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let err = rpc_error(status);
    if crate::outcome::maybe_applied(outcome.as_deref()) {
        eprintln!(
            "the write may or may not have been applied; retrying with --request-id {request_id} applies it at most once"
        );
    } else {
        eprintln!("the write was not applied");
    }
    Err(err)
}

/// A request id for a mutation the user gave none for, so that a failure with an
/// unknown outcome can be retried safely.
fn new_request_id() -> String {
    format!("cli-{:032x}", rand::random::<u128>())
}

fn deadline_exceeded() -> tonic::Status {
    tonic::Status::deadline_exceeded(format!("no response within {}s", REQUEST_TIMEOUT.as_secs()))
}

/// Prints `error: <CODE>: <message>` and turns the status into [`Reported`].
pub(super) fn rpc_error(status: tonic::Status) -> anyhow::Error {
    let msg = format!("{}: {}", code_name(status.code()), status.message());
    eprintln!("error: {msg}");
    Reported(msg).into()
}

/// The canonical gRPC name of a status code.
pub(super) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Whether `err` is (or wraps) a closed stdout pipe, as in `cairn scan t | head`.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe))
}

// ---------------------------------------------------------------------------
// Entry point
// ---------------------------------------------------------------------------

/// Runs one client command against the node at `addr` (host:port of its gRPC listener).
pub async fn run(addr: &str, json: bool, cmd: ClientCommand) -> anyhow::Result<()> {
    let mut client = connect(addr).await?;
    let mut out = io::BufWriter::new(io::stdout());
    let result = match cmd {
        ClientCommand::Table(cmd) => table(&mut client, &mut out, json, cmd).await,
        ClientCommand::Put(args) => put(&mut client, &mut out, json, args).await,
        ClientCommand::Get(args) => get(&mut client, &mut out, json, args).await,
        ClientCommand::Delete(args) => delete(&mut client, &mut out, json, args).await,
        ClientCommand::Incr(args) => incr(&mut client, &mut out, json, args).await,
        ClientCommand::Scan(args) => scan(&mut client, &mut out, json, args).await,
        ClientCommand::Feed(args) => super::feed::follow(&mut client, &mut out, json, args).await,
        ClientCommand::Cluster(ClusterCommand::Status) => cluster_status(&mut client, &mut out, json).await,
        ClientCommand::Cluster(ClusterCommand::Events { limit }) => {
            cluster_events(&mut client, &mut out, json, limit).await
        }
        ClientCommand::Cluster(ClusterCommand::Hot { limit }) => cluster_hot(&mut client, &mut out, json, limit).await,
        ClientCommand::Range(cmd) => range(&mut client, &mut out, json, cmd).await,
        ClientCommand::Node(cmd) => node(&mut client, &mut out, json, cmd).await,
    };
    // Flush whatever was printed, also before reporting a later error.
    let flushed = out.flush().map_err(anyhow::Error::from);
    match result.and(flushed) {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

async fn connect(addr: &str) -> anyhow::Result<CairnClient<Channel>> {
    let uri = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
    let endpoint = Endpoint::from_shared(uri)
        .with_context(|| format!("invalid node address {addr:?}"))?
        .connect_timeout(CONNECT_TIMEOUT);
    match endpoint.connect().await {
        Ok(channel) => Ok(CairnClient::new(channel)),
        Err(e) => {
            let msg = format!("cannot connect to {addr}: {}", error_chain(&e));
            eprintln!("error: {msg}");
            Err(Reported(msg).into())
        }
    }
}

/// `outer: inner: ...`, skipping a cause that repeats the previous one (as
/// tonic's transport errors tend to).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause = Some(err);
    while let Some(e) = cause {
        let text = e.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cause = e.source();
    }
    parts.join(": ")
}

pub(super) type Client = CairnClient<Channel>;
pub(super) type Out = io::BufWriter<io::Stdout>;

fn print_json(out: &mut Out, value: &Value) -> anyhow::Result<()> {
    writeln!(out, "{value}")?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------

async fn table(client: &mut Client, out: &mut Out, json: bool, cmd: TableCommand) -> anyhow::Result<()> {
    match cmd {
        TableCommand::Create { name, hash, hash_ranges, split_at, replication_factor, lease_preferences } => {
            let hash = hash || hash_ranges.is_some();
            let partitioning = if hash { kv::Partitioning::Hash } else { kv::Partitioning::Range };
            let req = kv::CreateTableRequest {
                name: name.clone(),
                partitioning: partitioning as i32,
                split_keys: split_at.into_iter().map(String::into_bytes).collect(),
                hash_ranges: hash_ranges.unwrap_or(0),
                replication_factor: replication_factor.unwrap_or(0),
                lease_preferences,
            };
            let resp = call(client.create_table(req)).await?;
            match resp.table {
                Some(t) if json => print_json(out, &table_json(&t)),
                Some(t) => {
                    writeln!(out, "created table {} (id {}, {})", t.name, t.id, partitioning_name(t.partitioning))?;
                    Ok(())
                }
                None if json => print_json(out, &json!({ "name": name })),
                None => {
                    writeln!(out, "created table {name}")?;
                    Ok(())
                }
            }
        }
        TableCommand::Alter { name, replication_factor, lease_preferences, clear_lease_preferences } => {
            let req = kv::AlterTableRequest {
                name,
                replication_factor: replication_factor.unwrap_or(0),
                lease_preferences,
                clear_lease_preferences,
            };
            let t = call(client.alter_table(req)).await?.table.unwrap_or_default();
            if json {
                return print_json(out, &table_json(&t));
            }
            writeln!(out, "altered table {}: {}", t.name, placement_text(&t))?;
            writeln!(out, "the controller now moves replicas and leaders to match (see `cairn cluster events`)")?;
            Ok(())
        }
        TableCommand::Drop { name } => {
            call(client.drop_table(kv::DropTableRequest { name: name.clone() })).await?;
            if json {
                print_json(out, &json!({ "dropped": name }))
            } else {
                writeln!(out, "dropped table {name}")?;
                Ok(())
            }
        }
        TableCommand::List => {
            let mut tables = call(client.list_tables(kv::ListTablesRequest {})).await?.tables;
            tables.sort_by(|a, b| a.name.cmp(&b.name));
            if json {
                return print_json(out, &Value::Array(tables.iter().map(table_json).collect()));
            }
            if tables.is_empty() {
                writeln!(out, "(no tables)")?;
                return Ok(());
            }
            let mut t = Columns::new(&[("NAME", L), ("ID", R), ("PARTITIONING", L), ("PLACEMENT", L)]);
            for table in &tables {
                t.row(vec![
                    table.name.clone(),
                    table.id.to_string(),
                    partitioning_name(table.partitioning).to_owned(),
                    placement_text(table),
                ]);
            }
            t.print(out)
        }
    }
}

fn partitioning_name(p: i32) -> &'static str {
    match kv::Partitioning::try_from(p) {
        Ok(kv::Partitioning::Hash) => "hash",
        Ok(kv::Partitioning::Range | kv::Partitioning::Unspecified) => "range",
        Err(_) => "unknown",
    }
}

fn table_json(t: &kv::Table) -> Value {
    json!({
        "name": t.name,
        "id": t.id,
        "partitioning": partitioning_name(t.partitioning),
        "replication_factor": t.replication_factor,
        "lease_preferences": t.lease_preferences,
    })
}

/// "3 replicas, leaders in zone-a, zone-b" (the cluster's factor when unset).
fn placement_text(t: &kv::Table) -> String {
    let rf = match t.replication_factor {
        0 => "the cluster's replication factor".to_string(),
        n => format!("{n} replicas"),
    };
    if t.lease_preferences.is_empty() {
        rf
    } else {
        format!("{rf}, leaders in {}", t.lease_preferences.join(", "))
    }
}

// ---------------------------------------------------------------------------
// Single-key reads and writes
// ---------------------------------------------------------------------------

impl ConditionArgs {
    fn to_proto(&self) -> Option<kv::Condition> {
        use kv::condition::Kind;
        let kind = if self.if_absent {
            Kind::IfAbsent(true)
        } else if self.if_present {
            Kind::IfPresent(true)
        } else if let Some(v) = &self.if_version {
            Kind::VersionEquals(*v)
        } else if let Some(x) = &self.if_value {
            Kind::ValueEquals(x.clone().into_bytes())
        } else {
            return None;
        };
        Some(kv::Condition { kind: Some(kind) })
    }
}

/// Prints a failed condition (as JSON too, with `--json`) and returns [`Reported`].
fn condition_failed(out: &mut Out, json: bool, body: Value, version: Option<&kv::Version>) -> anyhow::Result<()> {
    if json {
        print_json(out, &body)?;
    }
    out.flush()?;
    let msg = match version {
        Some(v) => format!("condition failed; current version: {}", fmt_version(v)),
        None => "condition failed; the key does not exist".to_owned(),
    };
    eprintln!("{msg}");
    Err(Reported(msg).into())
}

async fn put(client: &mut Client, out: &mut Out, json: bool, args: PutArgs) -> anyhow::Result<()> {
    let request_id = args.request_id.clone().unwrap_or_else(new_request_id);
    let req = kv::PutRequest {
        table: args.table,
        key: args.key.into_bytes(),
        value: args.value.into_bytes(),
        condition: args.condition.to_proto(),
        request_id: request_id.clone().into_bytes(),
        ttl_ms: args.ttl_ms.unwrap_or(0),
    };
    let resp = call_write(client.put(req), &request_id).await?;
    let body = json!({
        "succeeded": resp.succeeded,
        "version": version_json(resp.version.as_ref()),
    });
    if !resp.succeeded {
        return condition_failed(out, json, body, resp.version.as_ref());
    }
    if json {
        print_json(out, &body)
    } else {
        writeln!(out, "ok, version {}", opt_version(resp.version.as_ref()))?;
        Ok(())
    }
}

async fn get(client: &mut Client, out: &mut Out, json: bool, args: GetArgs) -> anyhow::Result<()> {
    let consistency = if args.stale { kv::ReadConsistency::Stale } else { kv::ReadConsistency::Linearizable };
    let key = args.key.into_bytes();
    let req = kv::GetRequest {
        table: args.table,
        key: key.clone(),
        consistency: consistency as i32,
        max_staleness_ms: args.max_staleness_ms,
    };
    let resp = call(client.get(req)).await?;
    if json {
        let mut obj = serde_json::Map::new();
        obj.insert("found".into(), Value::Bool(resp.found));
        put_bytes(&mut obj, "key", &key);
        if resp.found {
            put_bytes(&mut obj, "value", &resp.value);
        } else {
            obj.insert("value".into(), Value::Null);
        }
        obj.insert("version".into(), version_json(resp.version.as_ref()));
        return print_json(out, &Value::Object(obj));
    }
    if !resp.found {
        writeln!(out, "(not found)")?;
        return Ok(());
    }
    let mut t = Columns::bare(2);
    t.row(vec!["value".into(), show_bytes(&resp.value)]);
    t.row(vec!["version".into(), opt_version(resp.version.as_ref())]);
    t.print(out)
}

async fn delete(client: &mut Client, out: &mut Out, json: bool, args: DeleteArgs) -> anyhow::Result<()> {
    let request_id = args.request_id.clone().unwrap_or_else(new_request_id);
    let req = kv::DeleteRequest {
        table: args.table,
        key: args.key.into_bytes(),
        condition: args.condition.to_proto(),
        request_id: request_id.clone().into_bytes(),
    };
    let resp = call_write(client.delete(req), &request_id).await?;
    let body = json!({
        "succeeded": resp.succeeded,
        "existed": resp.existed,
        "version": version_json(resp.version.as_ref()),
    });
    if !resp.succeeded {
        return condition_failed(out, json, body, resp.version.as_ref());
    }
    if json {
        print_json(out, &body)
    } else {
        if resp.existed {
            writeln!(out, "deleted, version {}", opt_version(resp.version.as_ref()))?;
        } else {
            writeln!(out, "no such key; nothing deleted")?;
        }
        Ok(())
    }
}

async fn incr(client: &mut Client, out: &mut Out, json: bool, args: IncrArgs) -> anyhow::Result<()> {
    let request_id = args.request_id.clone().unwrap_or_else(new_request_id);
    let req = kv::IncrementRequest {
        table: args.table,
        key: args.key.into_bytes(),
        delta: args.by,
        request_id: request_id.clone().into_bytes(),
    };
    let resp = call_write(client.increment(req), &request_id).await?;
    if json {
        print_json(out, &json!({ "value": resp.value, "version": version_json(resp.version.as_ref()) }))
    } else {
        writeln!(out, "{}", resp.value)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Scan
// ---------------------------------------------------------------------------

async fn scan(client: &mut Client, out: &mut Out, json: bool, args: ScanArgs) -> anyhow::Result<()> {
    let keys_only = args.keys_only;
    let req = kv::ScanRequest {
        table: args.table.clone(),
        prefix: args.prefix.map(String::into_bytes).unwrap_or_default(),
        start: args.start.map(String::into_bytes).unwrap_or_default(),
        end: args.end.map(String::into_bytes).unwrap_or_default(),
        limit: args.limit,
        page_token: args.page_token.map(|t| t.0).unwrap_or_default(),
        page_size: args.page_size,
        keys_only,
    };
    let mut stream = call(client.scan(req)).await?;

    // Output is streamed: JSON as one object whose "kvs" array is written
    // element by element, tables with widths fixed after the first rows.
    let mut table = if keys_only {
        Columns::new(&[("KEY", L), ("VERSION", L)])
    } else {
        Columns::new(&[("KEY", L), ("VALUE", L), ("VERSION", L)])
    };
    if json {
        write!(out, "{{\"table\":{},\"kvs\":[", Value::String(args.table))?;
    }
    let mut count: u64 = 0;
    let mut next_token: Vec<u8> = Vec::new();
    // A stream that fails midway still gets what it printed completed: the
    // rows received, or a well-formed JSON object with an "error" member.
    let mut failure: Option<tonic::Status> = None;
    loop {
        let page = match tokio::time::timeout(REQUEST_TIMEOUT, stream.message()).await {
            Ok(Ok(Some(page))) => page,
            Ok(Ok(None)) => break,
            Ok(Err(status)) => {
                failure = Some(status);
                break;
            }
            Err(_) => {
                failure = Some(deadline_exceeded());
                break;
            }
        };
        if !page.next_page_token.is_empty() {
            next_token = page.next_page_token;
        }
        for kv in page.kvs {
            if json {
                let mut obj = serde_json::Map::new();
                put_bytes(&mut obj, "key", &kv.key);
                if !keys_only {
                    put_bytes(&mut obj, "value", &kv.value);
                }
                obj.insert("version".into(), version_json(kv.version.as_ref()));
                if count > 0 {
                    out.write_all(b",")?;
                }
                write!(out, "{}", Value::Object(obj))?;
            } else {
                let mut row = vec![show_bytes(&kv.key)];
                if !keys_only {
                    row.push(show_bytes(&kv.value));
                }
                row.push(opt_version(kv.version.as_ref()));
                table.row(row);
                if table.pending() >= SCAN_ALIGN_ROWS {
                    table.print(out)?;
                }
            }
            count += 1;
        }
    }
    let token_hex = (!next_token.is_empty()).then(|| hex(&next_token));
    if json {
        let error = failure
            .as_ref()
            .map_or(Value::Null, |status| json!({ "code": code_name(status.code()), "message": status.message() }));
        writeln!(
            out,
            "],\"count\":{count},\"next_page_token\":{},\"error\":{error}}}",
            token_hex.map_or(Value::Null, Value::String)
        )?;
    } else {
        if table.pending() > 0 {
            table.print(out)?;
        }
        if failure.is_none() {
            let noun = if count == 1 { "key" } else { "keys" };
            writeln!(out, "({count} {noun})")?;
            if let Some(token) = token_hex {
                writeln!(out, "more results: continue with --page-token {token}")?;
            }
        }
    }
    match failure {
        Some(status) => {
            out.flush()?;
            Err(rpc_error(status))
        }
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// Cluster status and range administration
// ---------------------------------------------------------------------------

async fn node(client: &mut Client, out: &mut Out, json: bool, cmd: NodeCommand) -> anyhow::Result<()> {
    let (id, state) = match cmd {
        NodeCommand::List => return node_list(client, out, json).await,
        NodeCommand::Drain { id } => (id, kv::NodeState::Draining),
        NodeCommand::Decommission { id } => (id, kv::NodeState::Decommissioning),
        NodeCommand::Activate { id } => (id, kv::NodeState::Active),
    };
    call(client.set_node_state(kv::SetNodeStateRequest { node_id: id, state: state as i32 })).await?;
    if json {
        return print_json(out, &json!({ "node_id": id, "state": state.as_str_name() }));
    }
    let what = match state {
        kv::NodeState::Draining => "draining: its leaders move to other nodes",
        kv::NodeState::Decommissioning => {
            "decommissioning: its replicas move to other nodes; `node list` shows decommissioned when it can be stopped"
        }
        kv::NodeState::Active => "active",
    };
    writeln!(out, "node {id} {what}")?;
    Ok(())
}

async fn node_list(client: &mut Client, out: &mut Out, json: bool) -> anyhow::Result<()> {
    let mut resp = call(client.cluster_status(kv::ClusterStatusRequest {})).await?;
    resp.nodes.sort_by_key(|n| n.id);
    if json {
        return print_json(out, &json!(resp.nodes.iter().map(node_json).collect::<Vec<_>>()));
    }
    print_nodes(out, &resp.nodes)
}

fn print_nodes(out: &mut Out, list: &[kv::NodeStatus]) -> anyhow::Result<()> {
    let mut nodes = Columns::new(&[
        ("ID", R),
        ("ADDR", L),
        ("ZONE", L),
        ("STATE", L),
        ("REPLICAS", R),
        ("LEADERS", R),
        ("USED", R),
    ]);
    for n in list {
        nodes.row(vec![
            n.id.to_string(),
            n.addr.clone(),
            if n.zone.is_empty() { "-".into() } else { n.zone.clone() },
            n.state.clone(),
            n.replicas.to_string(),
            n.leaders.to_string(),
            human_bytes(n.used_bytes),
        ]);
    }
    nodes.print(out)?;
    Ok(())
}

async fn cluster_status(client: &mut Client, out: &mut Out, json: bool) -> anyhow::Result<()> {
    let mut resp = call(client.cluster_status(kv::ClusterStatusRequest {})).await?;
    resp.nodes.sort_by_key(|n| n.id);
    resp.ranges.sort_by(|a, b| (&a.start, a.id).cmp(&(&b.start, b.id)));
    if json {
        return print_json(
            out,
            &json!({
                "cluster_id": resp.cluster_id,
                "nodes": resp.nodes.iter().map(node_json).collect::<Vec<_>>(),
                "ranges": resp.ranges.iter().map(range_json).collect::<Vec<_>>(),
                "progress": resp.progress.iter().map(|p| json!({
                    "kind": p.kind,
                    "node_id": p.node_id,
                    "remaining": p.remaining,
                    "detail": p.detail,
                })).collect::<Vec<_>>(),
            }),
        );
    }
    writeln!(out, "cluster {}", resp.cluster_id)?;
    writeln!(out)?;
    writeln!(out, "NODES")?;
    print_nodes(out, &resp.nodes)?;
    writeln!(out)?;
    writeln!(out, "IN PROGRESS")?;
    if resp.progress.is_empty() {
        writeln!(out, "nothing: every range has its replicas, and replicas and leaders are balanced")?;
    } else {
        let mut t = Columns::new(&[("KIND", L), ("NODE", R), ("LEFT", R), ("DETAIL", L)]);
        for p in &resp.progress {
            let node = if p.node_id == 0 { "-".to_string() } else { p.node_id.to_string() };
            t.row(vec![p.kind.clone(), node, p.remaining.to_string(), p.detail.clone()]);
        }
        t.print(out)?;
    }
    writeln!(out)?;
    writeln!(out, "RANGES")?;
    print_ranges(out, resp.ranges.iter())
}

async fn cluster_events(client: &mut Client, out: &mut Out, json: bool, limit: u32) -> anyhow::Result<()> {
    let resp = call(client.list_cluster_events(kv::ListClusterEventsRequest { limit })).await?;
    if json {
        let events: Vec<Value> = resp
            .events
            .iter()
            .map(|e| {
                json!({
                    "seq": e.seq,
                    "at_ms": e.at_ms,
                    "kind": e.kind,
                    "range_id": e.range_id,
                    "from_node_id": e.from_node_id,
                    "to_node_id": e.to_node_id,
                    "reason": e.reason,
                    "outcome": e.outcome,
                    "recorded_by": e.recorded_by,
                })
            })
            .collect();
        return print_json(out, &json!(events));
    }
    let node = |id: u64| if id == 0 { "-".to_string() } else { id.to_string() };
    let mut t = Columns::new(&[
        ("SEQ", R),
        ("AT", L),
        ("KIND", L),
        ("RANGE", R),
        ("FROM", R),
        ("TO", R),
        ("OUTCOME", L),
        ("REASON", L),
    ]);
    for e in &resp.events {
        t.row(vec![
            e.seq.to_string(),
            format_ms(e.at_ms),
            e.kind.clone(),
            e.range_id.to_string(),
            node(e.from_node_id),
            node(e.to_node_id),
            e.outcome.clone(),
            e.reason.clone(),
        ]);
    }
    t.print(out)?;
    Ok(())
}

async fn cluster_hot(client: &mut Client, out: &mut Out, json: bool, limit: u32) -> anyhow::Result<()> {
    let resp = call(client.list_hot_keys(kv::ListHotKeysRequest { limit })).await?;
    if json {
        let keys: Vec<Value> = resp
            .keys
            .iter()
            .map(|k| {
                json!({
                    "table": k.table,
                    "key": String::from_utf8_lossy(&k.key),
                    "qps": k.qps,
                    "node_id": k.node_id,
                    "range_id": k.range_id,
                    "note": k.note,
                })
            })
            .collect();
        return print_json(out, &json!({ "load_split_qps": resp.load_split_qps, "keys": keys }));
    }
    let mut t = Columns::new(&[("TABLE", L), ("KEY", L), ("QPS", R), ("NODE", R), ("RANGE", R), ("NOTE", L)]);
    for k in &resp.keys {
        t.row(vec![
            if k.table.is_empty() { "-".into() } else { k.table.clone() },
            String::from_utf8_lossy(&k.key).into_owned(),
            k.qps.to_string(),
            k.node_id.to_string(),
            k.range_id.to_string(),
            k.note.clone(),
        ]);
    }
    t.print(out)?;
    Ok(())
}

/// Milliseconds since the Unix epoch as UTC `YYYY-MM-DD HH:MM:SS`.
fn format_ms(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(|| ms.to_string(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

async fn range(client: &mut Client, out: &mut Out, json: bool, cmd: RangeCommand) -> anyhow::Result<()> {
    let ranges: Vec<kv::RangeStatus> = match cmd {
        RangeCommand::Split { table, key } => {
            let resp = call(client.split_range(kv::SplitRangeRequest { table, key: key.into_bytes() })).await?;
            if json {
                return print_json(
                    out,
                    &json!({
                        "left": resp.left.as_ref().map_or(Value::Null, range_json),
                        "right": resp.right.as_ref().map_or(Value::Null, range_json),
                    }),
                );
            }
            resp.left.into_iter().chain(resp.right).collect()
        }
        RangeCommand::Merge { range_id } => {
            let resp = call(client.merge_range(kv::MergeRangeRequest { left_range_id: range_id })).await?;
            if json {
                return print_json(
                    out,
                    &json!({
                        "merged": resp.merged.as_ref().map_or(Value::Null, range_json),
                        "retired_range_id": resp.retired_range_id,
                    }),
                );
            }
            writeln!(out, "range {} merged into range {range_id}", resp.retired_range_id)?;
            resp.merged.into_iter().collect()
        }
        RangeCommand::AddReplica { range_id, node_id } => {
            let req = kv::ChangeReplicaRequest { range_id, node_id };
            let resp = call(client.add_replica(req)).await?;
            resp.range.into_iter().collect()
        }
        RangeCommand::RemoveReplica { range_id, node_id } => {
            let req = kv::ChangeReplicaRequest { range_id, node_id };
            let resp = call(client.remove_replica(req)).await?;
            resp.range.into_iter().collect()
        }
        RangeCommand::TransferLeader { range_id, node_id } => {
            let req = kv::TransferLeaderRequest { range_id, node_id };
            let resp = call(client.transfer_leader(req)).await?;
            resp.range.into_iter().collect()
        }
    };
    if json {
        // add-replica, remove-replica, transfer-leader: the range, as it is now.
        return print_json(out, &ranges.first().map_or(Value::Null, range_json));
    }
    if ranges.is_empty() {
        writeln!(out, "ok")?;
        return Ok(());
    }
    print_ranges(out, ranges.iter())
}

fn print_ranges<'a>(out: &mut Out, ranges: impl Iterator<Item = &'a kv::RangeStatus>) -> anyhow::Result<()> {
    let mut t = Columns::new(&[
        ("ID", R),
        ("TABLE", L),
        ("START", L),
        ("END", L),
        ("EPOCH", L),
        ("REPLICAS", L),
        ("LEADER", R),
        ("SIZE", R),
    ]);
    for r in ranges {
        t.row(vec![
            r.id.to_string(),
            r.table.clone(),
            bound_display(&r.start_display, "-inf"),
            bound_display(&r.end_display, "+inf"),
            format!("{}.{}", r.epoch_version, r.epoch_conf_ver),
            replicas_display(&r.replicas),
            if r.leader_node_id == 0 { "-".into() } else { r.leader_node_id.to_string() },
            human_bytes(r.approximate_bytes),
        ]);
    }
    t.print(out)
}

fn bound_display(display: &str, unbounded: &str) -> String {
    if display.is_empty() {
        unbounded.to_owned()
    } else {
        sanitize(display)
    }
}

/// `1,2,3` with learners marked: `1,2,3,4(L)`.
fn replicas_display(replicas: &[kv::ReplicaStatus]) -> String {
    if replicas.is_empty() {
        return "-".into();
    }
    replicas
        .iter()
        .map(|r| if r.learner { format!("{}(L)", r.node_id) } else { r.node_id.to_string() })
        .collect::<Vec<_>>()
        .join(",")
}

fn node_json(n: &kv::NodeStatus) -> Value {
    json!({
        "id": n.id,
        "addr": n.addr,
        "http_addr": n.http_addr,
        "zone": n.zone,
        "live": n.live,
        "state": n.state,
        "last_heartbeat_ms": n.last_heartbeat_ms,
        "capacity_bytes": n.capacity_bytes,
        "used_bytes": n.used_bytes,
        "replicas": n.replicas,
        "leaders": n.leaders,
    })
}

fn range_json(r: &kv::RangeStatus) -> Value {
    json!({
        "id": r.id,
        "table": r.table,
        "start": hex(&r.start),
        "end": hex(&r.end),
        "start_display": r.start_display,
        "end_display": r.end_display,
        "epoch": { "version": r.epoch_version, "conf_ver": r.epoch_conf_ver },
        "replicas": r
            .replicas
            .iter()
            .map(|rep| json!({ "node_id": rep.node_id, "learner": rep.learner, "replica_id": rep.replica_id }))
            .collect::<Vec<_>>(),
        "leader_node_id": if r.leader_node_id == 0 {
            Value::Null
        } else {
            Value::from(r.leader_node_id)
        },
        "approximate_bytes": r.approximate_bytes,
    })
}

// ---------------------------------------------------------------------------
// Formatting and parsing helpers
// ---------------------------------------------------------------------------

pub(super) fn fmt_version(v: &kv::Version) -> String {
    format!("{}.{}.{}", v.wall_ns, v.logical, v.node_id)
}

fn opt_version(v: Option<&kv::Version>) -> String {
    v.map_or_else(|| "-".to_owned(), fmt_version)
}

fn version_json(v: Option<&kv::Version>) -> Value {
    v.map_or(Value::Null, |v| Value::String(fmt_version(v)))
}

/// Parses `wall_ns.logical.node_id`.
pub(super) fn parse_version(s: &str) -> Result<kv::Version, String> {
    let parts: Vec<&str> = s.trim().split('.').collect();
    let [wall, logical, node] = parts.as_slice() else {
        return Err(format!("expected a version as wall_ns.logical.node_id, got {s:?}"));
    };
    let field = |name: &str, e: std::num::ParseIntError| format!("bad {name} in version {s:?}: {e}");
    Ok(kv::Version {
        wall_ns: wall.parse().map_err(|e| field("wall_ns", e))?,
        logical: logical.parse().map_err(|e| field("logical", e))?,
        node_id: node.parse().map_err(|e| field("node_id", e))?,
    })
}

fn parse_request_id(s: &str) -> Result<String, String> {
    if s.len() > MAX_REQUEST_ID_LEN {
        return Err(format!("a request id is at most {MAX_REQUEST_ID_LEN} bytes; this one is {}", s.len()));
    }
    Ok(s.to_owned())
}

fn parse_page_token(s: &str) -> Result<PageToken, String> {
    let digits = s.trim();
    let digits = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")).unwrap_or(digits);
    if !digits.len().is_multiple_of(2) {
        return Err("a page token is hex: it needs an even number of digits".into());
    }
    let nibble = |c: u8| -> Result<u8, String> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(format!("a page token is hex; {:?} is not a hex digit", c as char)),
        }
    };
    digits
        .as_bytes()
        .chunks(2)
        .map(|pair| Ok(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect::<Result<Vec<u8>, String>>()
        .map(PageToken)
}

pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Bytes for a table cell: UTF-8 if valid and free of control characters
/// (which would break the layout), else `0x` + hex; `""` when empty.
pub(super) fn show_bytes(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "\"\"".into();
    }
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_owned(),
        _ => format!("0x{}", hex(bytes)),
    }
}

/// A server-provided string for a table cell, with control characters escaped.
fn sanitize(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.escape_default().to_string()
    } else {
        s.to_owned()
    }
}

/// Inserts `name` as a UTF-8 string when valid; otherwise `name` holds
/// `0x` + hex and `<name>_hex` the plain hex, so scripts can tell them apart.
pub(super) fn put_bytes(obj: &mut serde_json::Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            obj.insert(name.to_owned(), Value::String(s.to_owned()));
        }
        Err(_) => {
            let h = hex(bytes);
            obj.insert(name.to_owned(), Value::String(format!("0x{h}")));
            obj.insert(format!("{name}_hex"), Value::String(h));
        }
    }
}

/// `512 B`, `1.5 KiB`, `20.0 MiB`, ...
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    // Lossy above 2^53, which is fine for one decimal.
    #[allow(clippy::cast_precision_loss)]
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

// ---------------------------------------------------------------------------
// Column aligner
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}
use Align::{Left as L, Right as R};

/// A minimal text table: columns separated by two spaces, the last one not
/// padded. Rows may be printed in batches: the first `print` fixes the widths
/// (and prints the header), later batches reuse them, so a long listing can
/// stream; a cell wider than its column just pushes the rest of its row right.
struct Columns {
    header: Option<Vec<String>>,
    aligns: Vec<Align>,
    widths: Option<Vec<usize>>,
    rows: Vec<Vec<String>>,
}

impl Columns {
    fn new(columns: &[(&str, Align)]) -> Self {
        Columns {
            header: Some(columns.iter().map(|(h, _)| (*h).to_owned()).collect()),
            aligns: columns.iter().map(|(_, a)| *a).collect(),
            widths: None,
            rows: Vec::new(),
        }
    }

    /// A table without a header, all columns left-aligned.
    fn bare(n: usize) -> Self {
        Columns { header: None, aligns: vec![L; n], widths: None, rows: Vec::new() }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn pending(&self) -> usize {
        self.rows.len()
    }

    /// Prints the buffered rows (and, the first time, the header).
    fn print(&mut self, out: &mut impl Write) -> anyhow::Result<()> {
        let widths = match &self.widths {
            Some(w) => w.clone(),
            None => {
                let mut w = vec![0; self.aligns.len()];
                for row in self.header.iter().chain(&self.rows) {
                    for (i, cell) in row.iter().enumerate() {
                        if let Some(slot) = w.get_mut(i) {
                            *slot = (*slot).max(cell.chars().count());
                        }
                    }
                }
                if let Some(header) = &self.header {
                    write_row(out, header, &w, &self.aligns)?;
                }
                self.widths = Some(w.clone());
                w
            }
        };
        for row in std::mem::take(&mut self.rows) {
            write_row(out, &row, &widths, &self.aligns)?;
        }
        Ok(())
    }
}

fn write_row(out: &mut impl Write, cells: &[String], widths: &[usize], aligns: &[Align]) -> io::Result<()> {
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        let last = i + 1 == cells.len();
        let width = widths.get(i).copied().unwrap_or(0);
        let pad = width.saturating_sub(cell.chars().count());
        if i > 0 {
            line.push_str("  ");
        }
        match aligns.get(i).copied().unwrap_or(L) {
            R => {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            }
            L => {
                line.push_str(cell);
                if !last {
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
    }
    writeln!(out, "{line}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_round_trip() {
        let v = parse_version("1715712345000000000.3.2").unwrap();
        assert_eq!((v.wall_ns, v.logical, v.node_id), (1715712345000000000, 3, 2));
        assert_eq!(fmt_version(&v), "1715712345000000000.3.2");
        assert!(parse_version("1.2").is_err());
        assert!(parse_version("1.2.3.4").is_err());
        assert!(parse_version("a.2.3").is_err());
        assert!(parse_version("1.-2.3").is_err());
    }

    #[test]
    fn page_token_hex() {
        let bytes = vec![0x00, 0xab, 0xff, 0x10];
        assert_eq!(parse_page_token(&hex(&bytes)).unwrap().0, bytes);
        assert_eq!(parse_page_token("0xABff").unwrap().0, vec![0xab, 0xff]);
        assert!(parse_page_token("abc").is_err());
        assert!(parse_page_token("zz").is_err());
    }

    #[test]
    fn bytes_display() {
        assert_eq!(show_bytes(b"hello"), "hello");
        assert_eq!(show_bytes(&[0xff, 0x01]), "0xff01");
        assert_eq!(show_bytes(b"a\nb"), "0x610a62");
        assert_eq!(show_bytes(b""), "\"\"");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn columns_align() {
        let mut t = Columns::new(&[("ID", R), ("NAME", L), ("X", L)]);
        t.row(vec!["1".into(), "a".into(), "x".into()]);
        t.row(vec!["100".into(), "long".into(), "y".into()]);
        let mut buf = Vec::new();
        t.print(&mut buf).unwrap();
        assert_eq!(String::from_utf8(buf).unwrap(), " ID  NAME  X\n  1  a     x\n100  long  y\n");
    }

    #[test]
    fn replicas() {
        let r = |node_id, learner| kv::ReplicaStatus { node_id, learner, replica_id: node_id };
        assert_eq!(replicas_display(&[r(1, false), r(2, false), r(4, true)]), "1,2,4(L)");
    }
}
