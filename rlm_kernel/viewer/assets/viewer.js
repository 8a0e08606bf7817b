// Step viewer of an rlm-kernel run and its child runs. Builds the page from the JSON in #rlm-run
// with DOM text nodes only, so nothing from a run is ever parsed as HTML; HTML outputs go to
// sandboxed frames.
(function () {
  "use strict";
  var tree = JSON.parse(document.getElementById("rlm-run").textContent);
  var run = null, steps = [], last = 0, pos = 0, timer = null;
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
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
  function plural(n, word) { return num(n) + " " + word + (n === 1 ? "" : "s"); }
  function button(cls, text, onclick) {
    var b = el("button", cls, text);
    b.type = "button";
    b.onclick = onclick;
    return b;
  }

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
    box.open = list.length <= 3 || list.some(function (s) { return s.child; });
    add(box, el("summary", null, list.length + " sub-call" + (list.length === 1 ? "" : "s")));
    list.forEach(function (s) {
      var item = el("div", "sub" + (s.error ? " failed" : ""));
      add(item, el("div", "subhead", "#" + s.id + " " + s.kind + " · " + s.model + " · " +
        secs(s.latency_s) + (s.child ? "" : " · " + num(s.tokens) + " tokens") +
        (s.cost_usd === null || s.cost_usd === undefined ? "" : " · " + cost(s.cost_usd))));
      add(item, el("pre", "prompt", s.prompt_preview +
        (s.prompt_chars > s.prompt_preview.length ? " … (" + num(s.prompt_chars) + " chars)" : "")));
      add(item, el("pre", "response", s.error ? "error: " + s.error : s.response));
      var child = s.child_key && tree.runs[s.child_key];
      if (child) {
        add(item, button("open-child" + (child.missing ? " missing" : ""), "child run " +
          (child.missing ? "missing: " : "") + s.child, function () { go(s.child_key, 1); }));
      } else if (s.child) add(item, el("div", "child", "child run: " + s.child));
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

  function missingPage() {
    var m = run.summary, box = el("section", "start missing");
    add(box, el("h2", null, "Missing child run"));
    add(box, el("p", "meta", "notebook " + m.notebook + ": " + run.missing));
    if (m.answer !== undefined && m.answer !== null) {
      add(box, el("p", "meta", "its answer, as its parent recorded it:"),
        el("pre", "out", m.answer));
    }
    return box;
  }

  function header() {
    var s = run.summary, box = clear($("summary")), facts = el("dl", "facts");
    var answer = s.answer === null || s.answer === undefined;
    add(box, el("h1", null, run.missing ? "Missing run " + s.notebook : "RLM run " + s.run_id),
      el("p", "question", s.question || ""),
      el("p", answer ? "answer none" : "answer",
        answer ? "The run ended without an answer." : s.answer));
    if (run.missing) return box.appendChild(facts);
    [["status", s.status + (s.stop_reason ? " (" + s.stop_reason + ")" : "")],
      ["models", "root " + s.models.root + " · sub " + s.models.sub], ["steps", s.steps],
      ["sub-calls", s.subcalls], ["tokens", num(s.tokens.total) + " (root " + num(s.tokens.root) +
        " · sub " + num(s.tokens.sub) + ")"], ["cost", cost(s.cost_usd)],
      ["time", s.duration_s === null ? "—" : Number(s.duration_s).toFixed(1) + " s"],
      ["error", s.error]].forEach(function (f) {
      if (f[1] !== null && f[1] !== undefined && f[1] !== "") {
        add(facts, add(el("div"), el("dt", null, f[0]), el("dd", null, f[1])));
      }
    });
    box.appendChild(facts);
  }

  function crumbs() {
    var nav = clear($("runs")), path = [], key = run.key;
    if (tree.order.length < 2) return;
    while (key !== null && key !== undefined) { path.unshift(key); key = tree.runs[key].parent_key; }
    var trail = el("div", "trail");
    path.forEach(function (k, i) {
      if (i) trail.appendChild(document.createTextNode(" › "));
      var label = i ? k.split("/").pop() : "root";
      add(trail, k === run.key ? el("strong", null, label) :
        button("crumb", label, function () { go(k, backTo(k)); }));
    });
    var list = el("details", "tree"), parent = run.parent_key;
    list.open = true;
    add(list, el("summary", null, tree.order.length + " runs in this tree"));
    tree.order.forEach(function (k) {
      var r = tree.runs[k], s = r.summary, top = tree.runs[tree.root].summary.depth || 1;
      var b = button("run" + (k === run.key ? " current" : "") + (r.missing ? " missing" : ""),
        (s.question || k) + " · " + (r.missing ? "missing" : s.status + " · " +
        plural(s.steps || 0, "step") + " · " + cost(s.cost_usd)), function () { go(k, 1); });
      b.setAttribute("data-key", k);
      b.title = k;
      b.style.marginLeft = 1.5 * ((s.depth || top) - top) + "em";
      list.appendChild(b);
    });
    if (parent !== null) {
      add(nav, button("parent", "◀ parent run", function () { go(parent, backTo(parent)); }));
    }
    add(nav, trail, list);
  }

  // The step of run k that started the run shown now (or one of its ancestors).
  function backTo(k) {
    var key = run.key;
    while (key !== null && tree.runs[key].parent_key !== k) key = tree.runs[key].parent_key;
    var link = key === null ? null : tree.runs[key].summary.parent;
    return link && link.step ? link.step : 1;
  }

  function go(key, k) { pause(); open(key, k); }
  function open(key, k) {
    run = tree.runs[key];
    steps = run.steps || [];
    last = steps.length;
    slider.max = String(last);
    main.setAttribute("data-run", key);
    header();
    crumbs();
    show(k);
  }

  function show(k) {
    pos = Math.max(0, Math.min(last, k));
    slider.value = String(pos);
    clear(main).appendChild(run.missing ? missingPage() : pos ? stepPage(steps[pos - 1]) : startPage());
    main.setAttribute("data-step", String(pos));
    $("position").textContent = pos ? "step " + pos + " / " + last : run.missing ? "missing" : "start";
    var s = pos ? steps[pos - 1] : null;
    $("totals").textContent = s ? "so far: " + num(s.cum_tokens) + " tokens · " +
      cost(s.cum_cost_usd) : "";
    $("prev").disabled = pos === 0;
    $("next").disabled = pos === last;
    var at = run.key === tree.root ? "" : "run=" + encodeURIComponent(run.key) + "&";
    if (history.replaceState) history.replaceState(null, "", "#" + at + "step=" + pos);
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
  // #step=K opens step K of the top run, #run=KEY&step=K step K of a run of the tree.
  var wanted = /^#(?:run=([^&]*)&)?step=(\d+)$/.exec(location.hash), key = tree.root;
  try { key = wanted && wanted[1] ? decodeURIComponent(wanted[1]) : key; } catch (e) { /* kept */ }
  if (!Object.prototype.hasOwnProperty.call(tree.runs, key)) key = tree.root;
  open(key, wanted ? Number(wanted[2]) : 1);
})();
