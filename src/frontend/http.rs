//! The HTTP admin port: Prometheus metrics, health, this node's replicas, the
//! cluster view as JSON, and a small self-refreshing web console.

use crate::gateway::Gateway;
use crate::meta::{catalog, registry};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use std::sync::Arc;

#[derive(Clone)]
pub struct HttpState {
    pub gw: Arc<Gateway>,
    pub metrics: Option<PrometheusHandle>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(console))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/node", get(node))
        .route("/api/cluster", get(cluster))
        .with_state(state)
}

async fn metrics(State(s): State<HttpState>) -> Response {
    match &s.metrics {
        Some(h) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render()).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "metrics recorder not installed").into_response(),
    }
}

async fn node(State(s): State<HttpState>) -> Json<serde_json::Value> {
    let replicas: Vec<_> =
        s.gw.store
            .registry
            .read()
            .values()
            .map(|r| {
                let d = r.desc();
                json!({
                    "range_id": r.range_id,
                    "start": crate::keys::display_key(&d.start),
                    "end": crate::keys::display_key(&d.end),
                    "leader": r.leader_id(),
                    "is_leader": r.is_leader(),
                    "applied_index": r.applied_index(),
                    "initialized": r.initialized(),
                })
            })
            .collect();
    Json(json!({
        "node_id": s.gw.node_id,
        "cluster_id": s.gw.cluster_id,
        // Set while this node's clock is too far from its peers' to serve (their clocks minus ours).
        "clock_untrusted_offset_ms": s.gw.hlc.untrusted_offset_ms(),
        "replicas": replicas,
    }))
}

async fn cluster(State(s): State<HttpState>) -> Response {
    let gw = &s.gw;
    let now = crate::hlc::wall_now_ms();
    let (nodes, dir) = match (registry::list(gw).await, gw.load_directory().await) {
        (Ok(n), Ok(d)) => (n, d),
        (Err(e), _) | (_, Err(e)) => {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("cluster view unavailable: {}", e.message()))
                .into_response()
        }
    };
    let tables = catalog::list(gw).await.unwrap_or_default();
    let nodes: Vec<_> = nodes
        .iter()
        .map(|n| {
            json!({"id": n.id, "addr": n.addr, "http_addr": n.http_addr, "zone": n.zone,
                   "live": registry::is_live(n, now), "replicas": n.replicas, "leaders": n.leaders,
                   "used_bytes": n.used_bytes})
        })
        .collect();
    let ranges: Vec<_> = dir
        .iter()
        .map(|r| {
            let st = super::grpc_kv::range_status(r, &tables);
            json!({"id": st.id, "table": st.table, "start": st.start_display, "end": st.end_display,
                   "epoch": format!("{}.{}", st.epoch_version, st.epoch_conf_ver),
                   "replicas": st.replicas.iter().map(|x| json!({"node": x.node_id, "learner": x.learner, "replica_id": x.replica_id})).collect::<Vec<_>>(),
                   "leader": st.leader_node_id, "approximate_bytes": st.approximate_bytes})
        })
        .collect();
    Json(json!({"cluster_id": gw.cluster_id, "nodes": nodes, "ranges": ranges})).into_response()
}

async fn console() -> Html<&'static str> {
    Html(CONSOLE_HTML)
}

const CONSOLE_HTML: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Cairn console</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin-bottom:2em}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:14px}th{background:#f3f3f3}
.dead{color:#b00;font-weight:bold}.live{color:#080}</style></head>
<body><h1>Cairn</h1><div id="err"></div><h2>Nodes</h2><table id="nodes"></table><h2>Ranges</h2><table id="ranges"></table>
<script>
function esc(s){return String(s).replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]))}
async function load(){
 try{const r=await fetch('/api/cluster');if(!r.ok)throw new Error(await r.text());const c=await r.json();
 document.getElementById('err').textContent='cluster '+c.cluster_id;
 document.getElementById('nodes').innerHTML='<tr><th>id</th><th>address</th><th>zone</th><th>state</th><th>replicas</th><th>leaders</th></tr>'+
  c.nodes.map(n=>`<tr><td>${n.id}</td><td>${esc(n.addr)}</td><td>${esc(n.zone)}</td><td class="${n.live?'live':'dead'}">${n.live?'live':'dead'}</td><td>${n.replicas}</td><td>${n.leaders}</td></tr>`).join('');
 document.getElementById('ranges').innerHTML='<tr><th>id</th><th>table</th><th>start</th><th>end</th><th>epoch</th><th>replicas</th><th>leader</th><th>size</th></tr>'+
  c.ranges.map(g=>`<tr><td>${g.id}</td><td>${esc(g.table)}</td><td>${esc(g.start)}</td><td>${esc(g.end)}</td><td>${g.epoch}</td><td>${g.replicas.map(x=>x.node+(x.learner?'(L)':'')).join(',')}</td><td>${g.leader}</td><td>${g.approximate_bytes}</td></tr>`).join('');
 }catch(e){document.getElementById('err').textContent='error: '+e.message}}
load();setInterval(load,2000);
</script></body></html>"#;
