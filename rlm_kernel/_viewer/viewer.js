// Step viewer of an rlm-kernel run. Builds the page from the JSON in #rlm-run with DOM text
// nodes only, so nothing from the run is ever parsed as HTML; HTML outputs go to sandboxed frames.
(function () {
  "use strict";
  var run = JSON.parse(document.getElementById("rlm-run").textContent);
  var steps = run.steps, last = steps.length, pos = 0, timer = null;
  var $ = function (id) { return document.getElementById(id); };
  var main = $("step"), slider = $("slider"), play = $("play");
  var KEYWORDS = /^(False|None|True|and|as|assert|async|await|break|class|continue|def|del|elif|else|except|finally|for|from|global|if|import|in|is|lambda|nonlocal|not|or|pass|raise|return|try|while|with|yield)$/;
  var TOKEN = /(#[^\n]*)|("""[\s\S]*?"""|'''[\s\S]*?'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')|\b(\d[\d_]*(?:\.\d+)?)\b|\b([A-Za-z_]\w*)\b/g;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function add(parent) {
    for (var i = 1; i < arguments.length; i++) if (arguments[i]) parent.appendChild(arguments[i]);
    return parent;
  }
  function num(n) { return n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"); }
  function secs(s) { return s === null || s === undefined ? "—" : Number(s).toFixed(2) + " s"; }
  function cost(c) { return c === null || c === undefined ? "cost unknown" : "$" + Number(c).toFixed(4); }

  function highlight(code) {
    var pre = el("pre", "code"), at = 0, m;
    TOKEN.lastIndex = 0;
    while ((m = TOKEN.exec(code)) !== null) {
      var cls = m[1] ? "c" : m[2] ? "s" : m[3] ? "n" : KEYWORDS.test(m[4]) ? "k" : null;
      if (!cls) continue;
      pre.appendChild(document.createTextNode(code.slice(at, m.index)));
      add(pre, el("span", cls, m[0]));
      at = m.index + m[0].length;
    }
    pre.appendChild(document.createTextNode(code.slice(at)));
    return pre;
  }

  function output(o) {
    if (o.kind === "image") {
      var img = el("img", "out image");
      img.alt = o.text || o.mime;
      img.src = "data:" + o.mime + ";base64," + o.data;
      return img;
    }
    if (o.kind === "html") {
      var frame = el("iframe", "out html");
      frame.setAttribute("sandbox", "");  // no scripts, no forms, no same-origin access
      frame.title = "HTML output";
      frame.srcdoc = o.html;
      return frame;
    }
    var cls = o.kind === "stream" && o.name === "stderr" ? "stderr" : o.kind;
    return el("pre", "out " + cls, o.text);
  }

  function subcalls(list) {
    var box = el("details", "subcalls");
    box.open = list.length <= 3;
    add(box, el("summary", null, list.length + " sub-call" + (list.length === 1 ? "" : "s")));
    list.forEach(function (s) {
      var item = el("div", "sub" + (s.error ? " failed" : ""));
      add(item, el("div", "subhead", "#" + s.id + " " + s.kind + " · " + s.model + " · " +
        secs(s.latency_s) + " · " + num(s.tokens) + " tokens" +
        (s.cost_usd === null || s.cost_usd === undefined ? "" : " · " + cost(s.cost_usd))));
      add(item, el("pre", "prompt", s.prompt_preview +
        (s.prompt_chars > s.prompt_preview.length ? " … (" + num(s.prompt_chars) + " chars)" : "")));
      add(item, el("pre", "response", s.error ? "error: " + s.error : s.response));
      if (s.child) add(item, el("div", "child", "child run: " + s.child));
      box.appendChild(item);
    });
    return box;
  }

  function startPage() {
    var st = run.start, box = el("section", "start");
    add(box, el("h2", null, "Start"));
    var facts = Object.keys(st.context).map(function (k) { return k + " " + st.context[k]; });
    add(box, el("p", "meta", "context: " + facts.join(" · ")));
    if (st.preview) add(box, el("pre", "out", st.preview));
    if (st.system_prompt) {
      var sys = el("details");
      add(sys, el("summary", null, "system prompt"), el("pre", "out", st.system_prompt));
      box.appendChild(sys);
    }
    return box;
  }

  function stepPage(s) {
    var box = el("section", "step");
    add(box, el("h2", null, "Step " + s.step + (s.last_call ? " (last call)" : "")));
    add(box, el("p", "meta", "model " + secs(s.latency_s) + " · " + num(s.tokens) +
      " tokens in this step"));
    if (s.text.trim()) add(box, el("div", "text", s.text));
    s.cells.forEach(function (c) {
      var cell = el("div", "cell " + c.status);
      add(cell, el("div", "cellhead", "[" + s.step + "." + c.block + "] " + c.status + " · " +
        secs(c.duration_s)));
      add(cell, highlight(c.source));
      c.outputs.forEach(function (o) { cell.appendChild(output(o)); });
      if (c.subcalls.length) cell.appendChild(subcalls(c.subcalls));
      box.appendChild(cell);
    });
    return box;
  }

  function show(k) {
    pos = Math.max(0, Math.min(last, k));
    slider.value = String(pos);
    while (main.firstChild) main.removeChild(main.firstChild);
    main.appendChild(pos === 0 ? startPage() : stepPage(steps[pos - 1]));
    main.setAttribute("data-step", String(pos));
    $("position").textContent = pos === 0 ? "start" : "step " + pos + " / " + last;
    var s = pos ? steps[pos - 1] : null;
    $("totals").textContent = s ? "so far: " + num(s.cum_tokens) + " tokens · " +
      cost(s.cum_cost_usd) : "";
    $("prev").disabled = pos === 0;
    $("next").disabled = pos === last;
    if (history.replaceState) history.replaceState(null, "", "#step=" + pos);
  }

  function pause() {
    if (timer !== null) clearInterval(timer);
    timer = null;
    play.textContent = "▶ Play";
  }
  function toggle() {
    if (timer !== null) return pause();
    if (pos === last) show(0);
    play.textContent = "❚❚ Pause";
    timer = setInterval(function () { if (pos >= last) pause(); else show(pos + 1); }, 1200);
  }

  slider.max = String(last);
  $("prev").onclick = function () { pause(); show(pos - 1); };
  $("next").onclick = function () { pause(); show(pos + 1); };
  play.onclick = toggle;
  slider.oninput = function () { pause(); show(Number(slider.value)); };
  document.addEventListener("keydown", function (e) {
    if (e.target === slider || e.altKey || e.ctrlKey || e.metaKey) return;
    var to = { ArrowLeft: pos - 1, ArrowRight: pos + 1, Home: 0, End: last }[e.key];
    if (e.key === " " && e.target.tagName !== "BUTTON") { e.preventDefault(); toggle(); }
    if (to === undefined) return;
    e.preventDefault();
    pause();
    show(to);
  });
  var wanted = /^#step=(\d+)$/.exec(location.hash);
  show(wanted ? Number(wanted[1]) : last ? 1 : 0);
})();
