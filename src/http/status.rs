//! The status page: `GET /` is one HTML page from the binary (no external assets) that polls
//! `GET /v1/status` every two seconds and shows shards, disk, cache, queues, streams and recent
//! errors. The page itself holds no data, so it is open to all; the JSON needs scope `read`
//! (the page asks for a token when the server answers 401 and keeps it in the browser).

use super::response::{self, Resp};
use super::route_table::{route, RouteDef};
use super::ServerState;
use crate::http::error::ApiError;
use hyper::header::{HeaderValue, CACHE_CONTROL};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;

pub(super) const ROUTES: &[RouteDef] = &[
    route!(now "GET", "/", [], |s, p, r| Ok(page())),
    route!("GET", "/v1/status", [], |s, p, r| status(&s).await),
];

/// Queues and streams the page lists (the first by name).
const LIST_MAX: usize = crate::base::metrics::families::NAMES_MAX;

/// Errors kept for the page.
const RECENT_ERRORS_MAX: usize = 32;

/// One failed request, as the page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RecentError {
    pub at_ms: u64,
    pub status: u16,
    pub code: String,
    pub method: String,
    pub path: String,
    pub message: String,
    pub request_id: String,
}

/// The last [`RECENT_ERRORS_MAX`] server errors (5xx) and refusals for load (429).
#[derive(Default)]
pub struct RecentErrors(Mutex<VecDeque<RecentError>>);

impl RecentErrors {
    pub fn push(&self, e: RecentError) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == RECENT_ERRORS_MAX {
            q.pop_front();
        }
        q.push_back(e);
    }

    fn newest_first(&self) -> Vec<RecentError> {
        let q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().rev().cloned().collect()
    }
}

fn page() -> Resp {
    let mut r = response::value(PAGE, Some("text/html; charset=utf-8"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r.headers_mut().insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
        ),
    );
    r
}

async fn status(state: &ServerState) -> Result<Resp, ApiError> {
    let engine = state.store.engine();
    let failed: std::collections::HashMap<usize, String> =
        engine.failed_shards().into_iter().collect();
    let shards: Vec<_> = engine
        .shards()
        .iter()
        .map(|s| {
            serde_json::json!({
                "id": s.id,
                "file_bytes": engine.shard_file_bytes(s.id),
                "healthy": !failed.contains_key(&s.id),
                "failure": failed.get(&s.id),
                "commits": s.state.commits.load(std::sync::atomic::Ordering::Relaxed),
                "ops": s.state.ops.load(std::sync::atomic::Ordering::Relaxed),
            })
        })
        .collect();
    let cache = match state.store.cache_if_open() {
        Some(c) => {
            let s = c.summary();
            let (hits, misses) = (s.hits_memory + s.hits_disk, s.misses);
            serde_json::json!({
                "hits": hits,
                "misses": misses,
                "stale_hits": s.stale_hits,
                "hit_ratio": (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
                "memory_bytes": s.memory_bytes,
                "disk_bytes": s.disk_bytes,
            })
        }
        None => serde_json::Value::Null,
    };
    let queues: Vec<_> = state
        .store
        .queues()
        .page_stats(None, LIST_MAX)?
        .0
        .into_iter()
        .map(|q| {
            serde_json::json!({
                "name": q.name, "ready": q.ready, "delayed": q.delayed, "in_flight": q.in_flight,
                "dead": q.dead, "paused": q.paused, "oldest_ready_age_ms": q.oldest_ready_age_ms,
            })
        })
        .collect();
    let streams: Vec<_> = state
        .store
        .events()
        .page(None, LIST_MAX)?
        .0
        .into_iter()
        .map(|s| {
            serde_json::json!({
                "name": s.name, "events": s.events, "buckets": s.buckets, "newest": s.newest,
            })
        })
        .collect();
    let feed = engine.feed();
    let feed = serde_json::json!({
        "generation": feed.generation.to_string(),
        "end": feed.end().to_string(),
        "oldest": feed.oldest().map(|p| p.to_string()),
        "holds_live": feed.holds.live(),
        "holds_dropped_total": feed.holds.dropped_total.load(std::sync::atomic::Ordering::Relaxed),
        "cursors": feed.cursors.list(),
    });
    let body = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.started.elapsed().as_secs(),
        "now_ms": engine.now_ms(),
        "shards": shards,
        "disk": {"free_bytes": engine.space().free(), "low": engine.space().is_low()},
        "cache": cache,
        "queues": queues,
        "streams": streams,
        "feed": feed,
        "sink": state.store.sink().map(|s| s.status_json(engine)),
        "http": {
            "2xx": crate::base::metrics::HTTP_2XX.get(),
            "4xx": crate::base::metrics::HTTP_4XX.get(),
            "5xx": crate::base::metrics::HTTP_5XX.get(),
            "connections_open": state.conns.len(),
        },
        "recent_errors": state.recent_errors.newest_first(),
    });
    Ok(response::json(200, &body))
}

const PAGE: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>shardbox</title>
<style>
:root{--bg:#fafafa;--fg:#1b1b1b;--dim:#666;--card:#fff;--line:#e3e3e3;--bad:#b00020;--ok:#1b7f3b}
@media (prefers-color-scheme:dark){:root{--bg:#121212;--fg:#eee;--dim:#aaa;--card:#1e1e1e;--line:#333;--bad:#ff6b81;--ok:#5fd38a}}
*{box-sizing:border-box}body{margin:0;font:15px/1.4 system-ui,sans-serif;background:var(--bg);color:var(--fg)}
header{padding:12px 16px;border-bottom:1px solid var(--line);display:flex;gap:12px;align-items:baseline;flex-wrap:wrap}
h1{font-size:18px;margin:0}h2{font-size:15px;margin:0 0 8px}
main{display:grid;gap:12px;padding:12px;grid-template-columns:repeat(auto-fit,minmax(300px,1fr))}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px;overflow-x:auto}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
td,th{padding:3px 6px;text-align:right;border-bottom:1px solid var(--line);white-space:nowrap}
td:first-child,th:first-child{text-align:left}th{color:var(--dim);font-weight:500}
.dim{color:var(--dim)}.bad{color:var(--bad)}.ok{color:var(--ok)}
.big{font-size:22px;font-weight:600}.kv{display:flex;gap:18px;flex-wrap:wrap}
#auth{display:none;padding:12px 16px}#auth input{width:min(420px,100%);padding:6px}
</style></head><body>
<header><h1>shardbox</h1><span class="dim" id="meta">loading…</span><span id="state"></span></header>
<div id="auth"><label>This server needs a token with the <b>read</b> scope:
<input id="token" type="password" autocomplete="off" placeholder="sbx_…"></label>
<button id="save">Use</button></div>
<main>
<section><h2>Shards</h2><table><thead><tr><th>shard</th><th>file</th><th>writes/s</th><th>state</th></tr></thead><tbody id="shards"></tbody></table>
<p class="dim">disk free: <span data-k="disk.free_bytes" id="disk"></span></p></section>
<section><h2>Cache</h2><div class="kv">
<div><div class="dim">hit ratio</div><div class="big" data-k="cache.hit_ratio" id="ratio"></div></div>
<div><div class="dim">memory</div><div class="big" data-k="cache.memory_bytes" id="cmem"></div></div>
<div><div class="dim">disk</div><div class="big" data-k="cache.disk_bytes" id="cdisk"></div></div>
</div><p class="dim"><span data-k="cache.hits" id="chits"></span> hits, <span data-k="cache.misses" id="cmiss"></span> misses</p></section>
<section><h2>Queues</h2><table><thead><tr><th>queue</th><th>ready</th><th>delayed</th><th>in flight</th><th>dead</th></tr></thead><tbody id="queues"></tbody></table></section>
<section><h2>Streams</h2><table><thead><tr><th>stream</th><th>events</th><th>buckets</th><th>newest</th></tr></thead><tbody id="streams"></tbody></table></section>
<section><h2>Change feed</h2><p class="dim">generation <span id="fgen"></span> · end <span id="fend"></span></p><table><thead><tr><th>cursor</th><th>position</th><th>state</th></tr></thead><tbody id="cursors"></tbody></table><p class="dim" id="sink"></p></section>
<section><h2>Recent errors</h2><table><thead><tr><th>when</th><th>status</th><th>request</th><th>message</th></tr></thead><tbody id="errors"></tbody></table></section>
</main>
<script>
"use strict";
const $=id=>document.getElementById(id);
const esc=s=>String(s).replace(/[&<>"']/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
function bytes(n){if(n==null)return"–";const u=["B","KiB","MiB","GiB","TiB"];let i=0;while(n>=1024&&i<u.length-1){n/=1024;i++}return(i?n.toFixed(1):n)+" "+u[i]}
function ago(ms,now){if(ms==null)return"–";const s=Math.max(0,Math.round((now-ms)/1000));return s<60?s+" s ago":s<3600?Math.round(s/60)+" min ago":s<86400?Math.round(s/3600)+" h ago":Math.round(s/86400)+" d ago"}
let prev=null;
function row(cells,keys){return"<tr>"+cells.map((c,i)=>`<td${keys&&keys[i]?` data-k="${esc(keys[i])}"`:""}>${c}</td>`).join("")+"</tr>"}
function render(s){
  const now=s.now_ms;
  $("meta").textContent=`v${s.version} · up ${s.uptime_s} s · ${s.http.connections_open} connections · ${s.http["2xx"]} ok / ${s.http["4xx"]} 4xx / ${s.http["5xx"]} 5xx`;
  const bad=s.shards.filter(x=>!x.healthy).length;
  $("state").innerHTML=bad||s.disk.low?`<b class="bad">${bad?bad+" shard(s) stopped":""}${s.disk.low?" disk low":""}</b>`:`<b class="ok">healthy</b>`;
  const dt=prev?(s.uptime_s-prev.uptime_s)||2:0;
  $("shards").innerHTML=s.shards.map(x=>{
    const p=prev&&prev.shards.find(y=>y.id===x.id);
    const rate=p&&dt>0?((x.ops-p.ops)/dt).toFixed(1):"–";
    return row([String(x.id).padStart(3,"0"),bytes(x.file_bytes),rate,x.healthy?'<span class="ok">ok</span>':`<span class="bad">${esc(x.failure)}</span>`],
      [null,`shard.${x.id}.file_bytes`,null,null]);
  }).join("");
  $("disk").textContent=bytes(s.disk.free_bytes);$("disk").dataset.v=s.disk.free_bytes;
  const c=s.cache||{};
  $("ratio").textContent=c.hit_ratio==null?"–":(100*c.hit_ratio).toFixed(1)+" %";
  $("cmem").textContent=bytes(c.memory_bytes);$("cdisk").textContent=bytes(c.disk_bytes);
  $("chits").textContent=c.hits;$("cmiss").textContent=c.misses;
  $("queues").innerHTML=s.queues.length?s.queues.map(q=>row([esc(q.name)+(q.paused?' <span class="dim">(paused)</span>':""),q.ready,q.delayed,q.in_flight,q.dead>0?`<span class="bad">${q.dead}</span>`:q.dead],
      [null,`queue.${q.name}.ready`,`queue.${q.name}.delayed`,`queue.${q.name}.in_flight`,`queue.${q.name}.dead`])).join(""):row(['<span class="dim">none</span>',"","","",""]);
  $("streams").innerHTML=s.streams.length?s.streams.map(x=>row([esc(x.name),x.events,x.buckets,ago(x.newest,now)],
      [null,`stream.${x.name}.events`,`stream.${x.name}.buckets`,null])).join(""):row(['<span class="dim">none</span>',"","",""]);
  const f=s.feed;$("fgen").textContent=f.generation;$("fend").textContent=f.end.split(":").slice(1).join(":");
  $("cursors").innerHTML=f.cursors.length?f.cursors.map(c=>row([esc(c.name),esc(c.position.split(":").slice(1).join(":")),c.state==="active"?'<span class="ok">active</span>':`<span class="bad">${esc(c.state)}</span>`],
      [null,null,`cursor.${c.name}.state`])).join(""):row(['<span class="dim">none</span>',"",""]);
  const k=s.sink;$("sink").innerHTML=k?`NATS sink → ${esc(k.stream)}: <b class="${k.state==="streaming"?"ok":k.state==="catching_up"?"":"bad"}" data-k="sink.state">${esc(k.state)}</b>, lag ${k.lag_records} records / ${(k.lag_ms/1000).toFixed(1)} s, ${k.acked_total} shipped${k.last_error&&k.state!=="streaming"?" · "+esc(k.last_error):""}`:"NATS sink: off";
  $("errors").innerHTML=s.recent_errors.length?s.recent_errors.map(e=>row([ago(e.at_ms,now),`<span class="bad">${e.status}</span>`,esc(e.method+" "+e.path),esc(e.code+": "+e.message)])).join(""):row(['<span class="dim">none</span>',"","",""]);
  document.body.dataset.loaded=String(Number(document.body.dataset.loaded||0)+1);
  prev=s;
}
async function tick(){
  const token=localStorage.getItem("shardbox-token");
  try{
    const r=await fetch("/v1/status",{headers:token?{authorization:"Bearer "+token}:{}});
    if(r.status===401||r.status===403){$("auth").style.display="block";$("meta").textContent="needs a token";return}
    $("auth").style.display="none";
    if(r.ok)render(await r.json());else $("meta").textContent="status "+r.status;
  }catch(e){$("meta").textContent="server unreachable: "+e.message}
}
$("save").onclick=()=>{localStorage.setItem("shardbox-token",$("token").value.trim());tick()};
tick();setInterval(tick,2000);
</script></body></html>
"##;
