"""``GET /docs``: the API described from ``openapi.json`` by a small page of this package, loading nothing else.

FastAPI's own ``/docs`` pulls Swagger UI from a CDN (blank offline, and a third party sees who reads the docs);
no installed package ships the Swagger UI or ReDoc assets (``fastapi`` links them, ``optuna_dashboard`` has its
own bundle), and none is downloaded. This page lists every route with its parameters, body fields and
answers, and links the raw ``openapi.json``; a fixed paragraph says how concurrent requests are batched. Its
script builds the page with ``textContent`` only.
"""

from __future__ import annotations

#: The docs page runs only its own inline script and fetches only this server's openapi.json.
DOCS_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
            "img-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")

DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hybridcxr API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:60em;padding:0 1em;color:#222}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em}.route{border:1px solid #ddd;border-radius:6px;margin:1em 0;
padding:.6em 1em}.method{font-weight:bold;text-transform:uppercase;margin-right:.6em}code{background:#f4f4f4;
padding:0 .25em}table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left}
</style></head>
<body><h1 id="title">hybridcxr API</h1><p id="about"></p>
<p>The machine-readable description: <a href="openapi.json">openapi.json</a> (OpenAPI 3).</p>
<p>Requests that arrive together are analyzed as one batch (server options <code>--max-batch</code>, 1 to switch
it off, and <code>--batch-window-ms</code>); each request gets only its own result or error, and
<code>GET /healthz</code> gives the settings and the batches run.</p>
<div id="routes"><p>Loading openapi.json...</p></div>
<script>
"use strict";
const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls; return e; };
const ref = (s, spec) => s && s.$ref ? spec.components.schemas[s.$ref.split("/").pop()] || {} : s || {};
function typeOf(s, spec) {
  s = ref(s, spec);
  if (s.anyOf) return s.anyOf.map(x => typeOf(x, spec)).join(" | ");
  return s.format === "binary" ? "file" : s.type || s.title || "object";
}
function table(rows, head) {
  const t = el("table"), h = el("tr");
  head.forEach(x => h.appendChild(el("th", x))); t.appendChild(h);
  rows.forEach(r => { const tr = el("tr"); r.forEach(x => tr.appendChild(el("td", x))); t.appendChild(tr); });
  return t;
}
function route(path, method, op, spec) {
  const box = el("div", undefined, "route"), head = el("h3");
  head.appendChild(el("span", method, "method")); head.appendChild(el("code", path)); box.appendChild(head);
  if (op.summary) box.appendChild(el("p", op.summary));
  if (op.description) box.appendChild(el("p", op.description));
  const params = (op.parameters || []).map(p => [p.name, p.in, typeOf(p.schema, spec), p.required ? "yes" : "no",
    p.description || (p.schema && p.schema.description) || ""]);
  const content = op.requestBody && op.requestBody.content || {};
  Object.entries(content).forEach(([kind, body]) => {
    const s = ref(body.schema, spec);
    Object.entries(s.properties || {}).forEach(([name, prop]) => params.push([name, kind, typeOf(prop, spec),
      (s.required || []).includes(name) ? "yes" : "no", ref(prop, spec).description || ""]));
  });
  if (params.length) box.appendChild(table(params, ["name", "in", "type", "required", "description"]));
  const answers = Object.entries(op.responses || {}).map(([code, r]) => [code, r.description || ""]);
  if (answers.length) box.appendChild(table(answers, ["status", "meaning"]));
  return box;
}
fetch("openapi.json").then(r => r.json()).then(spec => {
  document.getElementById("title").textContent = `${spec.info.title} ${spec.info.version}`;
  document.getElementById("about").textContent = spec.info.description || "";
  const routes = document.getElementById("routes"); routes.textContent = "";
  Object.entries(spec.paths).forEach(([path, ops]) => Object.entries(ops).forEach(([method, op]) =>
    routes.appendChild(route(path, method, op, spec))));
}).catch(err => { document.getElementById("routes").textContent = `openapi.json did not load: ${err}`; });
</script></body></html>
"""

__all__ = ["DOCS_CSP", "DOCS_HTML"]
