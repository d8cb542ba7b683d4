//! Runs one Lua script against a transaction's view (`txn::view`): the
//! interpreter, the `redis` library scripts call (call, pcall, error_reply,
//! status_reply, sha1hex, log), KEYS and ARGV, Redis's conversions between
//! replies and Lua values, and the limits that stop a runaway script.
//!
//! `redis.call` evaluates the command against the view (`txn::eval`); nothing
//! is written here. What the script changed becomes one conditional write, and
//! a script that fails or is stopped changes nothing.

use super::super::commands;
use super::super::txn::{eval, view::View};
use crate::limits::Limits;
use bytes::Bytes;
use cairn_core::resp::reply::Reply;
use mlua::{HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Table, Value, VmState};
use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What one script may use before it is stopped.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub max_instructions: u64,
    pub max_memory_bytes: usize,
    pub max_duration: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget { max_instructions: 200_000_000, max_memory_bytes: 64 << 20, max_duration: Duration::from_secs(5) }
    }
}

/// Instructions between two checks of the budget.
const CHECK_EVERY: u32 = 10_000;
/// Deepest reply a script may return (Lua tables may even refer to themselves).
const MAX_REPLY_DEPTH: usize = 64;

/// An error reply from a command a script called: raised by `redis.call`, and
/// answered as is if the script does not catch it.
#[derive(Debug)]
struct CommandError(String);

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CommandError {}

/// The script went past its budget.
#[derive(Debug)]
struct Stopped(String);

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stopped {}

/// The reply a failed script gets.
fn failure_reply(e: &mlua::Error) -> Reply {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<CommandError>() {
            return Reply::Error(c.0.clone());
        }
        if let Some(s) = cause.downcast_ref::<Stopped>() {
            return Reply::Error(s.0.clone());
        }
    }
    let root = e.chain().last().map(|c| c.to_string()).unwrap_or_else(|| e.to_string());
    match e {
        mlua::Error::SyntaxError { message, .. } => Reply::Error(format!("ERR Error compiling script: {message}")),
        mlua::Error::MemoryError(_) => {
            Reply::Error("ERR script stopped: it used more memory than a script may; nothing was written".into())
        }
        _ => Reply::Error(format!("ERR Error running script: {}", root.replace(['\r', '\n'], " "))),
    }
}

/// Runs `script`; on `Err` the caller discards what the script changed in `view`.
pub fn run(
    script: &[u8],
    keys: &[Bytes],
    argv: &[Bytes],
    view: &mut View,
    limits: &Limits,
    budget: Budget,
) -> Result<Reply, Reply> {
    let internal = |e: mlua::Error| Reply::Error(format!("ERR cannot start the script interpreter: {e}"));
    let lua = Lua::new_with(StdLib::TABLE | StdLib::STRING | StdLib::MATH, LuaOptions::new()).map_err(internal)?;
    lua.set_memory_limit(budget.max_memory_bytes).map_err(internal)?;
    let executed = Arc::new(AtomicU64::new(0));
    let started = crate::clock::now();
    lua.set_hook(HookTriggers::new().every_nth_instruction(CHECK_EVERY), move |_, _| {
        let n = executed.fetch_add(u64::from(CHECK_EVERY), Ordering::Relaxed) + u64::from(CHECK_EVERY);
        if n > budget.max_instructions {
            return Err(mlua::Error::external(Stopped(format!(
                "ERR script stopped: it ran more than {} Lua instructions (an endless loop?); nothing was written",
                budget.max_instructions
            ))));
        }
        if crate::clock::elapsed(started) > budget.max_duration {
            return Err(mlua::Error::external(Stopped(format!(
                "ERR script stopped: it ran longer than {} ms; nothing was written",
                budget.max_duration.as_millis()
            ))));
        }
        Ok(VmState::Continue)
    })
    .map_err(internal)?;
    let view = RefCell::new(view);
    let out = lua.scope(|scope| {
        let g = lua.globals();
        for unsafe_global in ["dofile", "loadfile", "require", "module", "collectgarbage"] {
            g.set(unsafe_global, Value::Nil)?;
        }
        g.set("KEYS", strings_table(&lua, keys)?)?;
        g.set("ARGV", strings_table(&lua, argv)?)?;
        let redis = lua.create_table()?;
        redis.set("call", scope.create_function(|lua, args: MultiValue| call(lua, &view, limits, args, true))?)?;
        redis.set("pcall", scope.create_function(|lua, args: MultiValue| call(lua, &view, limits, args, false))?)?;
        redis.set("error_reply", lua.create_function(|lua, msg: mlua::String| field_table(lua, "err", msg))?)?;
        redis.set("status_reply", lua.create_function(|lua, msg: mlua::String| field_table(lua, "ok", msg))?)?;
        redis.set("sha1hex", lua.create_function(|_, s: mlua::String| Ok(super::cache::sha1_hex(&s.as_bytes())))?)?;
        redis.set(
            "log",
            lua.create_function(|_, (_level, msg): (i64, mlua::String)| {
                tracing::info!(target: "cairn::script", "{}", String::from_utf8_lossy(&msg.as_bytes()));
                Ok(())
            })?,
        )?;
        for (i, level) in ["LOG_DEBUG", "LOG_VERBOSE", "LOG_NOTICE", "LOG_WARNING"].iter().enumerate() {
            redis.set(*level, i as i64)?;
        }
        // Effects are what replicates anyway; these exist for scripts written for older Redis.
        redis.set("replicate_commands", lua.create_function(|_, ()| Ok(true))?)?;
        redis.set("set_repl", lua.create_function(|_, _: MultiValue| Ok(()))?)?;
        redis.set("setresp", lua.create_function(|_, _: MultiValue| Ok(()))?)?;
        g.set("redis", redis)?;
        let f = lua.load(script).set_name("@user_script").into_function()?;
        let v: Value = f.call(())?;
        Ok(to_reply(&v, 0))
    });
    match out {
        Ok(reply) => reply,
        Err(e) => Err(failure_reply(&e)),
    }
}

fn strings_table(lua: &Lua, items: &[Bytes]) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(items.len(), 0)?;
    for (i, item) in items.iter().enumerate() {
        t.raw_set(i + 1, lua.create_string(item)?)?;
    }
    Ok(t)
}

fn field_table(lua: &Lua, field: &str, msg: mlua::String) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set(field, msg)?;
    Ok(t)
}

/// `redis.call` (`raise`) and `redis.pcall`: one command against the view.
fn call(lua: &Lua, view: &RefCell<&mut View>, limits: &Limits, args: MultiValue, raise: bool) -> mlua::Result<Value> {
    let reply = match command_args(args) {
        Err(e) => Reply::Error(e.into()),
        Ok(args) => {
            let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
            match commands::lookup(&name) {
                None => Reply::Error("ERR Unknown Redis command called from script".into()),
                Some(spec)
                    if (spec.arity > 0 && args.len() as i32 != spec.arity)
                        || (spec.arity < 0 && (args.len() as i32) < -spec.arity) =>
                {
                    Reply::Error("ERR Wrong number of args calling Redis command from script".into())
                }
                Some(_) if !eval::supported(&name) => {
                    Reply::Error(format!("ERR '{}' is not allowed from scripts in Cairn", name.to_uppercase()))
                }
                Some(_) => {
                    let mut view = view.try_borrow_mut().map_err(|_| mlua::Error::RecursiveMutCallback)?;
                    eval::eval(&mut view, limits, &name, &args[1..])
                }
            }
        }
    };
    match reply {
        Reply::Error(e) if raise => Err(mlua::Error::external(CommandError(e))),
        other => to_lua(lua, &other),
    }
}

fn command_args(args: MultiValue) -> Result<Vec<Bytes>, &'static str> {
    if args.is_empty() {
        return Err("ERR Please specify at least one argument for this redis lib call");
    }
    args.into_iter()
        .map(|v| match v {
            Value::String(s) => Ok(Bytes::copy_from_slice(&s.as_bytes())),
            Value::Integer(i) => Ok(Bytes::from(i.to_string())),
            Value::Number(n) => Ok(Bytes::from(lua_number_text(n))),
            _ => Err("ERR Lua redis lib command arguments must be strings or integers"),
        })
        .collect()
}

/// A number as Lua prints it (integral ones without a fraction, as Redis passes them).
fn lua_number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// A command's reply as a Lua value, by Redis's rules.
fn to_lua(lua: &Lua, r: &Reply) -> mlua::Result<Value> {
    Ok(match r {
        Reply::Integer(i) => Value::Number(*i as f64),
        Reply::Bulk(b) => Value::String(lua.create_string(b)?),
        Reply::Nil | Reply::NilArray => Value::Boolean(false),
        Reply::Simple(s) => Value::Table(field_table(lua, "ok", lua.create_string(s)?)?),
        Reply::Error(e) => Value::Table(field_table(lua, "err", lua.create_string(e)?)?),
        Reply::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            Value::Table(t)
        }
        Reply::Bool(b) => Value::Boolean(*b),
        Reply::Double(d) => Value::Number(*d),
        other => Value::String(lua.create_string(format!("{other:?}"))?),
    })
}

/// A script's result as a reply, by Redis's rules.
fn to_reply(v: &Value, depth: usize) -> Result<Reply, Reply> {
    if depth > MAX_REPLY_DEPTH {
        return Err(Reply::Error(format!("ERR the script's reply is nested deeper than {MAX_REPLY_DEPTH} levels")));
    }
    Ok(match v {
        Value::Nil | Value::Boolean(false) => Reply::Nil,
        Value::Boolean(true) => Reply::Integer(1),
        Value::Integer(i) => Reply::Integer(*i),
        Value::Number(n) => Reply::Integer(*n as i64),
        Value::String(s) => Reply::Bulk(Bytes::copy_from_slice(&s.as_bytes())),
        Value::Table(t) => {
            if let Ok(Value::String(e)) = t.raw_get::<Value>("err") {
                return Ok(Reply::Error(String::from_utf8_lossy(&e.as_bytes()).replace(['\r', '\n'], " ")));
            }
            if let Ok(Value::String(ok)) = t.raw_get::<Value>("ok") {
                return Ok(Reply::Simple(String::from_utf8_lossy(&ok.as_bytes()).replace(['\r', '\n'], " ")));
            }
            let mut items = Vec::new();
            for i in 1.. {
                match t.raw_get::<Value>(i) {
                    Ok(Value::Nil) | Err(_) => break,
                    Ok(item) => items.push(to_reply(&item, depth + 1)?),
                }
            }
            Reply::Array(items)
        }
        _ => Reply::Nil,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::resp::txn::view::Entry;
    use cairn_proto::kv::Version;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn run_on(view: &mut View, script: &str, keys: &[&str], argv: &[&str], budget: Budget) -> Result<Reply, Reply> {
        let keys: Vec<Bytes> = keys.iter().map(|k| b(k)).collect();
        let argv: Vec<Bytes> = argv.iter().map(|a| b(a)).collect();
        run(script.as_bytes(), &keys, &argv, view, &Limits::default(), budget)
    }

    fn view() -> View {
        let mut v = View::new(1_000);
        v.load(b("stock"), Some((Entry::plain(b"2".to_vec()), Version { wall_ns: 1, logical: 0, node_id: 1 })));
        v.load(b("claims"), None);
        v
    }

    const CLAIM: &str = r#"
        local left = tonumber(redis.call('GET', KEYS[1]) or '0')
        if left <= 0 then return redis.error_reply('SOLDOUT no vouchers left') end
        redis.call('DECR', KEYS[1])
        return redis.call('INCRBY', KEYS[2], ARGV[1])
    "#;

    #[test]
    fn calls_see_the_view_and_replies_convert_as_in_redis() {
        let mut v = view();
        let budget = Budget::default();
        assert_eq!(run_on(&mut v, CLAIM, &["stock", "claims"], &["1"], budget), Ok(Reply::Integer(1)));
        assert_eq!(run_on(&mut v, CLAIM, &["stock", "claims"], &["1"], budget), Ok(Reply::Integer(2)));
        assert_eq!(
            run_on(&mut v, CLAIM, &["stock", "claims"], &["1"], budget),
            Ok(Reply::Error("SOLDOUT no vouchers left".into()))
        );
        let converted = run_on(
            &mut v,
            "return {1, 'two', 3.9, true, false, redis.status_reply('FINE'), {redis.call('GET', KEYS[1])}, nil, 'unseen'}",
            &["stock"],
            &[],
            budget,
        );
        assert_eq!(
            converted,
            Ok(Reply::Array(vec![
                Reply::Integer(1),
                Reply::Bulk(b("two")),
                Reply::Integer(3),
                Reply::Integer(1),
                Reply::Nil,
                Reply::Simple("FINE".into()),
                Reply::Array(vec![Reply::Bulk(b("0"))]),
            ]))
        );
        let caught = run_on(&mut v, "return redis.pcall('INCR', 'stock', 'x')", &["stock"], &[], budget);
        assert_eq!(caught, Ok(Reply::Error("ERR Wrong number of args calling Redis command from script".into())));
    }

    #[test]
    fn errors_name_their_cause_and_runaway_scripts_are_stopped() {
        let budget = Budget { max_instructions: 1_000_000, ..Budget::default() };
        let err = |r: Result<Reply, Reply>| match r {
            Err(Reply::Error(e)) => e,
            other => panic!("expected a failure, got {other:?}"),
        };
        let mut v = view();
        assert_eq!(
            err(run_on(&mut v, "return redis.call('INCR', KEYS[1], 1)", &["stock"], &[], budget)),
            "ERR Wrong number of args calling Redis command from script"
        );
        assert_eq!(
            err(run_on(
                &mut v,
                "redis.call('SET', 'stock', 'x'); return redis.call('INCR', 'stock')",
                &["stock"],
                &[],
                budget
            )),
            "ERR value is not an integer or out of range"
        );
        assert!(err(run_on(&mut v, "return redis.call('GET', 'elsewhere')", &["stock"], &[], budget))
            .contains("did not declare"));
        assert!(err(run_on(&mut v, "return 1 +", &[], &[], budget)).starts_with("ERR Error compiling script"));
        assert!(err(run_on(&mut v, "error('boom')", &[], &[], budget)).contains("boom"));
        assert!(
            err(run_on(&mut v, "while true do end", &[], &[], budget)).contains("more than 1000000 Lua instructions")
        );
        let small = Budget { max_memory_bytes: 4 << 20, ..budget };
        assert!(err(run_on(&mut v, "local t = {} for i = 1, 1e7 do t[i] = i end", &[], &[], small)).contains("memory"));
        assert!(err(run_on(&mut v, "return dofile('/etc/passwd')", &[], &[], budget)).contains("dofile"));
        assert!(err(run_on(&mut v, "local t = {} t[1] = t return t", &[], &[], budget)).contains("nested deeper"));
    }
}
