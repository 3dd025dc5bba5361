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
    let figures = state.window.figures(engine);
    let shards: Vec<_> = engine
        .shards()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({
                "ops_per_s": figures.shard_ops_per_s.get(i),
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
        "generation": feed.generation().to_string(),
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
        "log": {
            "disk_bytes": engine.wal().disk_bytes(),
            "durability": state.store.config().engine.durability.to_string(),
            "durable_lsn": engine.wal().durable_lsn(),
        },
        "process": {
            "resident_bytes": figures.resident_bytes,
            "cpu_percent": figures.cpu_percent,
            "open_fds": super::metrics::open_fds(),
        },
        "window": figures.window,
        "cache": cache,
        "queues": queues,
        "streams": streams,
        "feed": feed,
        "sink": state.store.sink().map(|s| s.status_json(engine)),
        "sink_log": state.store.log_sink().map(|s| s.status_json(engine)),
        "standby": state.store.standby().map(|s| s.status_json(&state.store)),
        "lease": state.store.lease().map(|l| l.status_json()),
        "read_only": engine.read_only().map(|(code, why)| serde_json::json!({"code": code, "reason": why})),
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
:root{--bg:#f6f7f9;--fg:#1b1b1b;--dim:#667;--card:#fff;--line:#e3e5e8;--bad:#b00020;--warn:#9a6700;--ok:#1b7f3b}
@media (prefers-color-scheme:dark){:root{--bg:#111315;--fg:#eee;--dim:#a0a4aa;--card:#1c1f22;--line:#31353a;--bad:#ff6b81;--warn:#e3b341;--ok:#5fd38a}}
*{box-sizing:border-box}body{margin:0;font:14px/1.4 system-ui,sans-serif;background:var(--bg);color:var(--fg)}
header{padding:10px 14px;border-bottom:1px solid var(--line);display:flex;gap:6px 14px;align-items:baseline;flex-wrap:wrap}
h1{font-size:18px;margin:0}h2{font-size:14px;margin:0 0 8px;display:flex;justify-content:space-between;gap:8px}
h2 small{font-weight:400;color:var(--dim)}
main{display:grid;gap:12px;padding:12px;grid-template-columns:repeat(3,minmax(0,1fr))}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 12px;overflow-x:auto;min-width:0}
.wide{grid-column:1/-1}.w2{grid-column:span 2}
@media (max-width:1100px){main{grid-template-columns:repeat(2,minmax(0,1fr))}}
@media (max-width:700px){main{grid-template-columns:minmax(0,1fr);padding:8px;gap:8px}.w2{grid-column:auto}}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
td,th{padding:3px 6px;text-align:right;border-bottom:1px solid var(--line);white-space:nowrap}
td:first-child,th:first-child{text-align:left;white-space:normal;overflow-wrap:anywhere}
th{color:var(--dim);font-weight:500}td.msg{text-align:left;white-space:normal;overflow-wrap:anywhere}
@media (max-width:700px){
 table.rt thead{display:none}table.rt tr{display:block;padding:4px 0;border-bottom:1px solid var(--line)}
 table.rt td{display:flex;justify-content:space-between;gap:12px;border:0;padding:1px 0;white-space:normal;text-align:right}
 table.rt td::before{content:attr(data-l);color:var(--dim);text-align:left}
 table.rt td:first-child{display:block;text-align:left;font-weight:600}table.rt td:first-child::before{content:none}
 td,th{padding:3px 4px}
}
.dim{color:var(--dim)}.bad{color:var(--bad)}.warn{color:var(--warn)}.ok{color:var(--ok)}
.tiles{display:grid;gap:8px 16px;grid-template-columns:repeat(auto-fill,minmax(128px,1fr))}
.tile .l{color:var(--dim);font-size:12px}.tile .v{font-size:20px;font-weight:600;font-variant-numeric:tabular-nums;overflow-wrap:anywhere}
#auth{display:none;padding:12px 16px}#auth input{width:min(420px,100%);padding:6px}
</style></head><body>
<header><h1>shardbox</h1><span id="state"></span><span class="dim" id="meta">loading…</span></header>
<div id="auth"><label>This server needs a token with the <b>read</b> scope:
<input id="token" type="password" autocomplete="off" placeholder="sbx_…"></label>
<button id="save">Use</button></div>
<main>
<section id="vitals" class="wide"><h2>Now <small id="span"></small></h2><div class="tiles">
<div class="tile"><div class="l">requests/s</div><div class="v" data-k="win.requests_per_s" id="rps"></div></div>
<div class="tile"><div class="l">latency p50</div><div class="v" data-k="win.p50_ms" id="p50"></div></div>
<div class="tile"><div class="l">latency p99</div><div class="v" data-k="win.p99_ms" id="p99"></div></div>
<div class="tile"><div class="l">server errors</div><div class="v" data-k="win.server_error_ratio" id="err"></div></div>
<div class="tile"><div class="l">refused (4xx)/s</div><div class="v" data-k="win.client_errors_per_s" id="c4"></div></div>
<div class="tile"><div class="l">CPU</div><div class="v" data-k="proc.cpu_percent" id="cpu"></div></div>
<div class="tile"><div class="l">memory (RSS)</div><div class="v" data-k="proc.resident_bytes" id="rss"></div></div>
<div class="tile"><div class="l">connections</div><div class="v" data-k="http.connections_open" id="conns"></div></div>
<div class="tile"><div class="l">disk free</div><div class="v" data-k="disk.free_bytes" id="disk"></div></div>
<div class="tile"><div class="l">log on disk</div><div class="v" data-k="log.disk_bytes" id="logb"></div></div>
<div class="tile"><div class="l">durability</div><div class="v" data-k="log.durability" id="dur"></div></div>
</div></section>
<section id="traffic" class="w2"><h2>Requests by domain <small id="span2"></small></h2><table><thead><tr><th>domain</th><th>req/s</th><th>p50</th><th>p99</th><th>4xx</th><th>5xx</th></tr></thead><tbody id="domains"></tbody></table></section>
<section id="shards"><h2>Shards</h2><table><thead><tr><th>shard</th><th>file</th><th>writes/s</th><th>state</th></tr></thead><tbody id="shardrows"></tbody></table></section>
<section id="queues" class="w2"><h2>Queues</h2><table class="rt"><thead><tr><th>queue</th><th>ready</th><th>delayed</th><th>in flight</th><th>dead</th><th>oldest ready</th><th>state</th></tr></thead><tbody id="queuerows"></tbody></table></section>
<section id="cache"><h2>Cache</h2><div class="tiles">
<div class="tile"><div class="l">hit ratio</div><div class="v" data-k="cache.hit_ratio" id="ratio"></div></div>
<div class="tile"><div class="l">memory</div><div class="v" data-k="cache.memory_bytes" id="cmem"></div></div>
<div class="tile"><div class="l">disk</div><div class="v" data-k="cache.disk_bytes" id="cdisk"></div></div>
</div><p class="dim"><span data-k="cache.hits" id="chits"></span> hits, <span data-k="cache.misses" id="cmiss"></span> misses since start</p></section>
<section id="streams" class="w2"><h2>Streams</h2><table><thead><tr><th>stream</th><th>events</th><th>buckets</th><th>newest</th></tr></thead><tbody id="streamrows"></tbody></table></section>
<section id="feed"><h2>Change feed</h2><p class="dim">generation <span id="fgen"></span> · end <span id="fend"></span></p><table class="rt"><thead><tr><th>cursor</th><th>position</th><th>state</th></tr></thead><tbody id="cursors"></tbody></table><p id="sink"></p><p id="sinklog"></p><p id="standby"></p><p id="lease"></p></section>
<section id="errors" class="wide"><h2>Recent errors</h2><table class="rt"><thead><tr><th>when</th><th>status</th><th>request</th><th>message</th></tr></thead><tbody id="errorrows"></tbody></table></section>
</main>
<script>
"use strict";
const $=id=>document.getElementById(id);
const esc=s=>String(s).replace(/[&<>"']/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
const NA="–";
function bytes(n){if(n==null)return NA;const u=["B","KiB","MiB","GiB","TiB"];let i=0;while(n>=1024&&i<u.length-1){n/=1024;i++}return(i?n.toFixed(1):n)+" "+u[i]}
function rate(x){return x==null?NA:x>=100?String(Math.round(x)):x.toFixed(1)}
function ms(v){return v==null?NA:v<1?Math.round(v*1000)+" µs":v<100?v.toFixed(1)+" ms":Math.round(v)+" ms"}
function dur(ms){if(ms==null)return NA;const s=Math.round(ms/1000);return s<60?s+" s":s<3600?Math.round(s/60)+" min":s<86400?(s/3600).toFixed(1)+" h":(s/86400).toFixed(1)+" d"}
function ago(at,now){return at==null?NA:dur(Math.max(0,now-at))+" ago"}
function pct(x){return x==null?NA:(100*x).toFixed(x>0&&x<0.001?3:1)+" %"}
function set(id,text){$(id).textContent=text}
// A row: cells [text or html, data-k key]; headers give the phone layout its labels.
function rows(id,list,empty){
  const tb=$(id),heads=[...tb.closest("table").querySelectorAll("th")].map(t=>t.textContent);
  tb.innerHTML=list.length?list.map(cells=>"<tr>"+cells.map((c,i)=>{const[h,k,cls]=Array.isArray(c)?c:[c];
    return`<td data-l="${esc(heads[i]||"")}"${k?` data-k="${esc(k)}"`:""}${cls?` class="${cls}"`:""}>${h}</td>`}).join("")+"</tr>").join("")
    :`<tr><td class="dim" colspan="${heads.length}">${empty}</td></tr>`;
}
function render(s){
  const now=s.now_ms,w=s.window;
  const stopped=s.shards.filter(x=>!x.healthy).length,lost=s.feed.cursors.filter(c=>c.state!=="active").length;
  const bad=k=>k&&k.state!=="streaming"&&k.state!=="catching_up";
  const sinkBad=bad(s.sink),logBad=bad(s.sink_log);
  const problems=[stopped?stopped+" shard(s) stopped":"",s.disk.low?"disk low":"",sinkBad?"sink "+s.sink.state:"",logBad?"log sink "+s.sink_log.state:"",lost?lost+" cursor(s) need a new snapshot":""].filter(Boolean);
  $("state").innerHTML=problems.length?`<b class="bad" data-k="health">${esc(problems.join(" · "))}</b>`:`<b class="ok" data-k="health">healthy</b>`;
  set("meta",`v${s.version} · up ${dur(s.uptime_s*1000)} · ${s.http["2xx"]} ok / ${s.http["4xx"]} 4xx / ${s.http["5xx"]} 5xx since start`);
  const span=w.seconds>=0.98*w.span_s?"last "+dur(w.span_s*1000):`last ${Math.round(w.seconds)} s (since start)`;
  set("span",span);set("span2",span);
  set("rps",rate(w.requests_per_s));set("p50",ms(w.p50_ms));set("p99",ms(w.p99_ms));
  set("err",w.server_error_ratio==null?NA:pct(w.server_error_ratio));$("err").className="v"+(w.server_errors_per_s>0?" bad":"");
  set("c4",rate(w.client_errors_per_s));
  set("cpu",s.process.cpu_percent==null?NA:s.process.cpu_percent.toFixed(1)+" %");
  set("rss",bytes(s.process.resident_bytes));set("conns",s.http.connections_open);
  set("disk",bytes(s.disk.free_bytes));$("disk").className="v"+(s.disk.low?" bad":"");
  set("logb",bytes(s.log.disk_bytes));set("dur",s.log.durability);
  rows("domains",w.domains.map(d=>{const k="domain."+d.domain+".";return[d.domain,[rate(d.per_s),k+"per_s"],[ms(d.p50_ms),k+"p50_ms"],[ms(d.p99_ms),k+"p99_ms"],
    [d.client_errors,k+"client_errors"],[d.server_errors,k+"server_errors",d.server_errors>0?"bad":""]]}),"");
  rows("shardrows",s.shards.map(x=>{const k="shard."+x.id+".";return[String(x.id).padStart(3,"0"),[bytes(x.file_bytes),k+"file_bytes"],[rate(x.ops_per_s),k+"ops_per_s"],
    x.healthy?'<span class="ok">ok</span>':`<span class="bad">${esc(x.failure)}</span>`]}),"none");
  rows("queuerows",s.queues.map(q=>{const k="queue."+q.name+".";return[esc(q.name),[q.ready,k+"ready"],[q.delayed,k+"delayed"],[q.in_flight,k+"in_flight"],
    [q.dead,k+"dead",q.dead>0?"bad":""],[q.ready>0?dur(q.oldest_ready_age_ms):NA,k+"oldest_ready_age"],[q.paused?"paused":"running",k+"state",q.paused?"warn":""]]}),"no queues yet");
  const c=s.cache||{};
  set("ratio",c.hit_ratio==null?NA:(100*c.hit_ratio).toFixed(1)+" %");set("cmem",bytes(c.memory_bytes));set("cdisk",bytes(c.disk_bytes));
  set("chits",c.hits==null?NA:c.hits);set("cmiss",c.misses==null?NA:c.misses);
  rows("streamrows",s.streams.map(x=>{const k="stream."+x.name+".";return[esc(x.name),[x.events,k+"events"],[x.buckets,k+"buckets"],[ago(x.newest,now),k+"newest"]]}),"no streams yet");
  const f=s.feed;set("fgen",f.generation);set("fend",f.end.split(":").slice(1).join(":"));
  rows("cursors",f.cursors.map(c=>[esc(c.name),esc(c.position.split(":").slice(1).join(":")),[c.state==="active"?"active":c.state,"cursor."+c.name+".state",c.state==="active"?"ok":"bad"]]),"no cursors");
  const k=s.sink;$("sink").innerHTML=k?`NATS sink → ${esc(k.stream)}: <b class="${k.state==="streaming"?"ok":k.state==="catching_up"?"warn":"bad"}" data-k="sink.state">${esc(k.state)}</b>, lag ${k.lag_records} records / ${(k.lag_ms/1000).toFixed(1)} s, ${k.acked_total} shipped${k.last_error&&k.state!=="streaming"?" · "+esc(k.last_error):""}`:'<span class="dim">NATS sink: off</span>';
  const ls=s.lease;$("lease").innerHTML=ls?`primary's lease (failover auto): <b class="${ls.held?"ok":s.standby&&s.standby.state!=="promoted"?"dim":"bad"}" data-k="lease.held">${ls.held?"held by this box":"not held by this box"}</b>${ls.holder?" · holder "+esc(ls.holder.role)+" of generation "+esc(ls.holder.generation):""}${ls.last_error?" · "+esc(ls.last_error):""}`:"";
  const sb=s.standby;$("standby").innerHTML=sb?`standby of ${esc(sb.primary)}: <b class="${sb.state==="following"||sb.state==="promoted"?"ok":sb.state==="promoting"||sb.state==="connecting"?"warn":"bad"}" data-k="standby.state">${esc(sb.state)}</b>, applied ${esc(sb.applied)}, lag ${sb.lag_records} messages / ${sb.lag_ms} ms${sb.last_error&&sb.state!=="following"&&sb.state!=="promoted"?" · "+esc(sb.last_error):""}`:(s.read_only?`<b class="bad" data-k="read_only.code">${esc(s.read_only.code)}</b> · ${esc(s.read_only.reason)}`:"");
  const g=s.sink_log;$("sinklog").innerHTML=g?`log → ${esc(g.stream)}: <b class="${g.state==="streaming"?"ok":g.state==="catching_up"?"warn":"bad"}" data-k="sink_log.state">${esc(g.state)}</b>, lag ${g.lag_records} records, ${g.acked_total} shipped${g.last_error&&g.state!=="streaming"?" · "+esc(g.last_error):""}`:"";
  rows("errorrows",s.recent_errors.map(e=>[ago(e.at_ms,now),`<span class="bad">${e.status}</span>`,[esc(e.method+" "+e.path),null,"msg"],[esc(e.code+": "+e.message),null,"msg"]]),"none");
  // What a test (or a curious operator) can check: sections wider than their box.
  const over=[...document.querySelectorAll("main>section")].filter(x=>x.scrollWidth>x.clientWidth+1).map(x=>x.id);
  if(document.documentElement.scrollWidth>document.documentElement.clientWidth+1)over.push("page");
  document.body.dataset.overflow=over.join(",");
  document.body.dataset.loaded=String(Number(document.body.dataset.loaded||0)+1);
}
async function tick(){
  const token=localStorage.getItem("shardbox-token");
  try{
    const r=await fetch("/v1/status",{headers:token?{authorization:"Bearer "+token}:{}});
    if(r.status===401||r.status===403){$("auth").style.display="block";set("meta","needs a token");return}
    $("auth").style.display="none";
    if(r.ok)render(await r.json());else set("meta","status "+r.status);
  }catch(e){set("meta","server unreachable: "+e.message)}
}
$("save").onclick=()=>{localStorage.setItem("shardbox-token",$("token").value.trim());tick()};
tick();setInterval(tick,2000);
</script></body></html>
"##;
