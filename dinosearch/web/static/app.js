// dinosearch search page: upload / drop / paste a photo, show the closest images, "more like this".
// Plain DOM, no build step. Text from the server only ever goes in through textContent, never innerHTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const els = {
    file: $("file"), k: $("k"), status: $("status"), results: $("results"), stats: $("stats"),
    query: $("query"), queryImg: $("query-img"), queryLabel: $("query-label"),
    filterForm: $("filter-form"), filterInput: $("filter-input"), filterList: $("filter-list"),
    keyForm: $("key-form"), keyInput: $("key-input"), prediction: $("prediction"),
    spinner: $("spinner"), addFile: $("add-file"), box: $("box"), frame: $("query-frame"),
    clearBox: $("clear-box"), minusList: $("minus-list"),
  };
  const MAX_FILES = 4;       // as the server's MAX_QUERY_IMAGES
  const maxBytes = Number(document.body.dataset.maxBytes) || 20 * 1024 * 1024;
  const SHOWN = new Set(["title", "name", "price", "link", "url"]); // rendered as text, not as filter values
  let filters = [];          // [[key, value], ...]
  // {kind: "file", files: [File], like: [id], minus: [id], crop} | {kind: "similar", id, label, thumb, minus, crop}
  // crop: {x, y, w, h} as fractions of the query image as shown, or null
  let lastQuery = null;
  let queryUrl = null;       // object URL of the uploaded query, revoked when replaced
  let generation = 0;        // answers to superseded requests are dropped
  let retry = null;          // what to run again once an API key is given

  // API ------------------------------------------------------------------------------------------
  const { apiKey, api, send, el } = window.dinosearch; // common.js

  function needKey(again) {
    retry = again;
    els.keyForm.hidden = false;
    els.keyInput.focus();
    setStatus("Enter the API key to search.");
  }

  // Searching ------------------------------------------------------------------------------------
  function setStatus(text, isError) {
    els.status.textContent = text;
    els.status.classList.toggle("error", !!isError);
  }

  function filterParams(params) {
    for (const [key, value] of filters) params.append("where", key + "=" + value);
    return params;
  }

  function cropText(c) {
    return [c.x, c.y, c.w, c.h].map((v) => Math.min(1, Math.max(0, v)).toFixed(4)).join(",");
  }

  // The part of an uploaded photo inside the box, as a PNG: the server embeds it as an image of its own.
  async function cropFile(file, c) {
    const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    const x = Math.round(c.x * bitmap.width), y = Math.round(c.y * bitmap.height);
    const w = Math.max(1, Math.round(c.w * bitmap.width)), h = Math.max(1, Math.round(c.h * bitmap.height));
    const canvas = document.createElement("canvas");
    canvas.width = w; canvas.height = h;
    canvas.getContext("2d").drawImage(bitmap, x, y, w, h, 0, 0, w, h);
    bitmap.close();
    return await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  }

  async function request(query) {
    if (query.kind === "file") {
      const form = new FormData();
      for (const [i, file] of query.files.entries()) {
        const part = (i === 0 && query.crop) ? await cropFile(file, query.crop) : file;
        form.append("image", part, (i === 0 && query.crop) ? "region.png" : (file.name || "pasted-image"));
      }
      for (const id of query.like || []) form.append("like", String(id));
      for (const id of query.minus || []) form.append("minus", String(id));
      form.append("k", els.k.value);
      filterParams(form);
      return api("api/search", { method: "POST", body: form });
    }
    return api("api/images/" + encodeURIComponent(query.id) + "/similar?" + queryParams(query).toString());
  }

  function queryParams(query) {
    const params = filterParams(new URLSearchParams({ k: els.k.value }));
    for (const id of query.minus || []) params.append("minus", String(id));
    if (query.crop) params.set("crop", cropText(query.crop));
    return params;
  }

  function busy(on) {
    els.spinner.hidden = !on;
    if (on) els.results.setAttribute("aria-busy", "true"); else els.results.removeAttribute("aria-busy");
  }

  async function run(query, fromHistory) {
    lastQuery = query;
    const mine = ++generation;
    if (!fromHistory) remember(query);
    showQuery(query);
    setStatus("Searching…");
    busy(true);
    try {
      const body = await request(query);
      if (mine !== generation) return;
      render(body.results || []);
      showPrediction(body.prediction);
      const n = (body.results || []).length;
      setStatus(n ? n + (n === 1 ? " result" : " results") : "No results" + (filters.length ? " with these filters." : "."));
      if (n) bringIntoView();
    } catch (err) {
      if (mine !== generation) return;
      if (err.status === 401) { needKey(() => run(query, true)); return; }
      // Nothing of the failed search stays on screen: no old results, no broken query image.
      els.results.replaceChildren();
      showPrediction(null);
      if (query.kind === "file") { els.query.hidden = true; els.queryImg.removeAttribute("src"); shownFile = null; }
      setStatus(err.message, true);
    } finally {
      if (mine === generation) busy(false);
    }
  }

  // The query and its first results on screen together, on a laptop as on a phone.
  function bringIntoView() {
    const target = els.query.hidden ? els.results : els.query;
    target.scrollIntoView({ block: "start", behavior: "smooth" });
  }

  // History: every search is a step Back returns to. Searches by indexed ids (with their filters,
  // negatives and box) are in the URL, so they can be shared; uploads stay in this tab's memory only.
  const uploads = [];
  function remember(query) {
    let url = location.pathname;
    const state = { kind: query.kind, filters: filters, k: els.k.value };
    if (query.kind === "similar") {
      const params = queryParams(query);
      params.set("id", String(query.id));
      url += "?" + params.toString();
      Object.assign(state, { id: query.id, label: query.label, thumb: query.thumb, minus: query.minus || [], crop: query.crop || null });
    } else {
      uploads.push(query);
      state.upload = uploads.length - 1;
    }
    history.pushState(state, "", url);
  }

  function restore(state) {
    if (!state) return false;
    filters = state.filters || [];
    renderFilters();
    if (state.k) els.k.value = state.k;
    if (state.kind === "similar") {
      run({ kind: "similar", id: state.id, label: state.label, thumb: state.thumb, minus: state.minus || [], crop: state.crop }, true);
      return true;
    }
    if (state.upload !== undefined && uploads[state.upload]) { run(uploads[state.upload], true); return true; }
    return false;
  }

  window.addEventListener("popstate", (e) => {
    if (!restore(e.state)) {
      lastQuery = null;
      ++generation;
      els.results.replaceChildren();
      els.query.hidden = true;
      setStatus("");
    }
  });

  function fromUrl() {
    const params = new URLSearchParams(location.search);
    const id = params.get("id");
    if (!id || !/^[0-9]+$/.test(id)) return;
    const crop = (params.get("crop") || "").split(",").map(Number);
    const state = {
      kind: "similar", id: id, label: "image " + id, thumb: "api/images/" + id + "/thumbnail",
      minus: params.getAll("minus").filter((m) => /^[0-9]+$/.test(m)),
      crop: crop.length === 4 && crop.every((v) => v >= 0 && v <= 1) ? { x: crop[0], y: crop[1], w: crop[2], h: crop[3] } : null,
      filters: params.getAll("where").map((w) => [w.slice(0, w.indexOf("=")), w.slice(w.indexOf("=") + 1)]).filter(([key]) => key),
      k: params.get("k"),
    };
    history.replaceState(state, "", location.pathname + location.search);
    restore(state);
  }

  function searchFile(file) {
    if (!file) return;
    if (file.size > maxBytes) {
      setStatus("That file is over the " + Math.round(maxBytes / 1048576) + " MB limit.", true);
      return;
    }
    run({ kind: "file", files: [file], like: [], minus: [], crop: null });
  }

  // "Add a photo": one more image in the query (their mean), up to MAX_FILES.
  function addFile(file) {
    if (!file || !lastQuery) return;
    if (file.size > maxBytes) { setStatus("That file is over the " + Math.round(maxBytes / 1048576) + " MB limit.", true); return; }
    const q = lastQuery;
    if (q.kind === "file") {
      if (q.files.length >= MAX_FILES) { setStatus("A query holds at most " + MAX_FILES + " photos.", true); return; }
      run(Object.assign({}, q, { files: q.files.concat([file]) }));
    } else {
      run({ kind: "file", files: [file], like: [q.id], minus: q.minus || [], crop: null, label: q.label });
    }
  }

  function showQuery(query) {
    els.query.hidden = false;
    if (query.kind === "file") {
      const first = query.files[0];
      if (!els.queryImg.dataset.file || shownFile !== first) {
        if (queryUrl) URL.revokeObjectURL(queryUrl);
        queryUrl = URL.createObjectURL(first); // shown from memory: the upload is not kept anywhere
        els.queryImg.src = queryUrl;
        els.queryImg.dataset.file = "1";
        shownFile = first;
      }
      const names = query.files.map((f) => f.name || "Pasted image");
      let label = names.join(" + ");
      if ((query.like || []).length) label = (query.label || "image " + query.like[0]) + " + " + label;
      els.queryLabel.textContent = label;
    } else {
      delete els.queryImg.dataset.file;
      shownFile = null;
      if (els.queryImg.getAttribute("src") !== query.thumb) els.queryImg.src = query.thumb;
      els.queryLabel.textContent = "More like: " + query.label;
    }
    showBox(query.crop);
    renderMinus(query);
  }
  let shownFile = null;

  function renderMinus(query) {
    const minus = query.minus || [];
    els.minusList.replaceChildren(...minus.map((id) => {
      const li = el("li", "chip");
      li.append(el("span", "", "less like image " + id));
      const x = el("button", "chip-remove", "×");
      x.type = "button";
      x.setAttribute("aria-label", "Stop avoiding image " + id);
      x.addEventListener("click", () => run(Object.assign({}, query, { minus: minus.filter((m) => m !== id) })));
      li.append(x);
      return li;
    }));
  }

  // Results --------------------------------------------------------------------------------------
  function titleOf(r) {
    const m = r.metadata || {};
    return String(m.title || m.name || r.name || "image " + r.id);
  }

  function safeLink(value) {
    if (typeof value !== "string") return null;
    try {
      const u = new URL(value);
      return (u.protocol === "https:" || u.protocol === "http:") ? u.href : null; // never javascript: etc.
    } catch (e) { return null; }
  }

  // The index's labels, voted by the nearest labelled images: only when the index has labels.
  function showPrediction(p) {
    const shown = !!(p && p.label);
    els.prediction.hidden = !shown;
    if (!shown) { els.prediction.textContent = ""; return; }
    const others = p.labels.slice(1).map((v) => v.value + " " + Math.round(v.confidence * 100) + "%");
    els.prediction.textContent = "Predicted " + p.by + ": " + p.label + " (" + Math.round(p.labels[0].confidence * 100) + "%)"
      + (others.length ? "; then " + others.join(", ") : "");
  }

  function render(results) {
    els.results.replaceChildren(...results.map(card));
  }

  function card(r) {
    const m = r.metadata || {};
    const title = titleOf(r);
    const li = el("li", "result");

    const more = el("button", "more");
    more.type = "button";
    more.setAttribute("aria-label", "More like this: " + title);
    more.title = "More like this";
    const img = el("img");
    img.src = r.thumbnail_url;
    img.alt = "";
    img.loading = "lazy";
    img.decoding = "async";
    more.append(img, el("span", "more-hint", "More like this"));
    if (typeof r.timestamp === "number") more.append(el("span", "time", clock(r.timestamp)));
    more.addEventListener("click", () => run({ kind: "similar", id: r.id, label: title, thumb: r.thumbnail_url, minus: [], crop: null }));
    li.append(more);

    const info = el("div", "info");
    const head = el("div", "head");
    const score = el("span", "score", "similarity " + r.score.toFixed(3));
    score.title = "cosine similarity to the query: 1 is identical";
    head.append(score);
    if (r.folded && r.folded.length) head.append(el("span", "folded", "+" + r.folded.length + " near-identical"));
    if (m.price !== undefined && m.price !== null && m.price !== "") head.append(el("span", "price", String(m.price)));
    info.append(head);

    const link = safeLink(m.link || m.url);
    const hasTitle = !!(m.title || m.name);
    if (link) {
      const a = el("a", "title", title);
      a.href = link;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      info.append(a);
    } else {
      info.append(el("span", hasTitle ? "title" : "title filename", title));
    }

    const tags = Object.entries(m).filter(([key, value]) =>
      !SHOWN.has(key) && value !== null && value !== "" && ["string", "number", "boolean"].includes(typeof value));
    if (tags.length) {
      const list = el("div", "tags");
      for (const [key, value] of tags.slice(0, 6)) {
        const b = el("button", "tag", key + ": " + value);
        b.type = "button";
        b.setAttribute("aria-label", "Filter by " + key + " = " + value);
        b.addEventListener("click", () => addFilter(key, String(value)));
        list.append(b);
      }
      info.append(list);
    }
    const less = el("button", "less", "Less like this");
    less.type = "button";
    less.setAttribute("aria-label", "Less like this: " + title);
    less.addEventListener("click", () => {
      if (!lastQuery) return;
      const minus = (lastQuery.minus || []).filter((m) => String(m) !== String(r.id)).concat([r.id]);
      run(Object.assign({}, lastQuery, { minus: minus }));
    });
    info.append(less);
    const query = lastQuery; // the query these results answer
    const why = el("button", "why", "Why?");
    why.type = "button";
    why.setAttribute("aria-pressed", "false");
    why.setAttribute("aria-label", "Why this match: " + title);
    why.title = "Show which parts of this image are most like the query";
    why.addEventListener("click", () => toggleWhy(query, r.id, more, why));
    info.append(why);
    if (typeof r.timestamp === "number") info.append(playAt(r, li));
    li.append(info);
    return li;
  }

  // "Why?": a heat map of the parts of a result most like the query (brighter: more alike), laid
  // over its thumbnail. The server runs the model on both images for it; nothing is kept.
  async function toggleWhy(query, id, frame, button) {
    const shown = frame.querySelector("img.why-overlay");
    if (shown) { shown.remove(); button.setAttribute("aria-pressed", "false"); return; }
    if (!query) return;
    button.disabled = true;
    try {
      const blob = await (await send(explainPath(query, id), await explainOptions(query))).blob();
      const img = el("img", "why-overlay");
      img.alt = "Heat map: the brighter, the more like the query";
      img.src = URL.createObjectURL(blob);
      img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
      frame.append(img);
      button.setAttribute("aria-pressed", "true");
    } catch (err) {
      if (err.status === 401) needKey(() => toggleWhy(query, id, frame, button));
      else setStatus(err.message, true);
    } finally {
      button.disabled = false;
    }
  }

  function explainPath(query, id) {
    const params = new URLSearchParams({ size: "480" });
    if (query.kind === "similar") {
      params.set("like", String(query.id));
      if (query.crop) params.set("crop", cropText(query.crop));
    }
    return "api/images/" + encodeURIComponent(id) + "/explain?" + params.toString();
  }

  // An upload query explains by its first photo (its box, when one is drawn), sent again.
  async function explainOptions(query) {
    if (query.kind === "similar") return {};
    const file = query.files[0];
    const form = new FormData();
    form.append("image", query.crop ? await cropFile(file, query.crop) : file, query.crop ? "region.png" : (file.name || "pasted-image"));
    return { method: "POST", body: form };
  }

  // A video frame: its time as h:mm:ss.s, and a link that opens the video at that moment.
  function clock(seconds) {
    const tenths = Math.round(seconds * 10);
    const h = Math.floor(tenths / 36000), m = Math.floor(tenths / 600) % 60, s = Math.floor(tenths / 10) % 60;
    const pad = (n) => String(n).padStart(2, "0");
    return (h ? h + ":" : "") + pad(m) + ":" + pad(s) + "." + (tenths % 10);
  }

  function playAt(r, li) {
    const a = el("a", "play", "▶ Play at " + clock(r.timestamp));
    a.href = r.image_url + "#t=" + r.timestamp; // a media fragment: the video starts at the frame
    a.addEventListener("click", (e) => {
      e.preventDefault(); // play in the page; the link still works opened in a new tab
      const old = li.querySelector("video");
      if (old) old.remove();
      const video = el("video", "player");
      video.controls = true;
      video.preload = "metadata";
      video.src = a.href;
      li.append(video);
      video.play().catch(() => {}); // autoplay may be refused; the controls are there
    });
    return a;
  }

  // Filters --------------------------------------------------------------------------------------
  function addFilter(key, value) {
    key = key.trim();
    if (!key) return;
    filters = filters.filter(([k]) => k !== key).concat([[key, value.trim()]]);
    renderFilters();
    if (lastQuery) run(lastQuery);
  }

  function removeFilter(key) {
    filters = filters.filter(([k]) => k !== key);
    renderFilters();
    if (lastQuery) run(lastQuery);
  }

  function renderFilters() {
    els.filterList.replaceChildren(...filters.map(([key, value]) => {
      const li = el("li", "chip");
      li.append(el("span", "", key + " = " + value));
      const x = el("button", "chip-remove", "×");
      x.type = "button";
      x.setAttribute("aria-label", "Remove filter " + key + " = " + value);
      x.addEventListener("click", () => removeFilter(key));
      li.append(x);
      return li;
    }));
  }

  els.filterForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = els.filterInput.value;
    const at = text.indexOf("=");
    if (at <= 0) { setStatus("A filter is key=value, e.g. colour=red.", true); return; }
    addFilter(text.slice(0, at), text.slice(at + 1));
    els.filterInput.value = "";
  });

  // Input: picker, drop, paste -------------------------------------------------------------------
  els.file.addEventListener("change", () => {
    searchFile(els.file.files[0]);
    els.file.value = ""; // choosing the same file again searches again
  });

  function firstImage(items) {
    for (const item of items || []) {
      const file = item.kind === "file" ? item.getAsFile() : item;
      if (file && file.type && file.type.startsWith("image/")) return file;
    }
    return null;
  }

  document.addEventListener("dragover", (e) => {
    if (e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files")) {
      e.preventDefault();
      document.body.classList.add("dragging");
    }
  });
  document.addEventListener("dragleave", (e) => {
    if (!e.relatedTarget) document.body.classList.remove("dragging");
  });
  document.addEventListener("drop", (e) => {
    document.body.classList.remove("dragging");
    if (!e.dataTransfer) return;
    e.preventDefault();
    const file = firstImage(e.dataTransfer.files);
    if (file) searchFile(file); else setStatus("Drop an image file.", true);
  });
  document.addEventListener("paste", (e) => {
    const file = e.clipboardData && firstImage(e.clipboardData.items);
    if (file) { e.preventDefault(); searchFile(file); }
  });

  els.k.addEventListener("change", () => { if (lastQuery) run(lastQuery); });

  // API key --------------------------------------------------------------------------------------
  els.keyForm.addEventListener("submit", (e) => {
    e.preventDefault();
    try { sessionStorage.setItem("dinosearch-key", els.keyInput.value.trim()); } catch (err) { /* private mode */ }
    els.keyInput.value = "";
    els.keyForm.hidden = true;
    const again = retry;
    retry = null;
    loadStats();
    if (again) again();
  });

  async function loadStats() {
    try {
      const s = await api("api/stats");
      els.stats.textContent = s.images + (s.images === 1 ? " image" : " images") + (s.model ? " · " + s.model : "");
    } catch (err) {
      if (err.status === 401) needKey(null);
    }
  }

  els.addFile.addEventListener("change", () => {
    addFile(els.addFile.files[0]);
    els.addFile.value = "";
  });

  // Region: draw a box on the query image (mouse, touch or pen), or with the keyboard (arrows move it,
  // Shift+arrows resize it, Enter searches, Escape clears); the search then runs on the box alone.
  let box = null;      // {x, y, w, h} fractions while drawing / shown
  let drag = null;

  function showBox(c) {
    box = c ? Object.assign({}, c) : null;
    els.box.hidden = !box;
    els.clearBox.hidden = !box;
    if (!box) return;
    const img = els.queryImg, frame = els.frame.getBoundingClientRect(), r = img.getBoundingClientRect();
    els.box.style.left = (r.left - frame.left + box.x * r.width) + "px";
    els.box.style.top = (r.top - frame.top + box.y * r.height) + "px";
    els.box.style.width = (box.w * r.width) + "px";
    els.box.style.height = (box.h * r.height) + "px";
  }

  function at(e) {
    const r = els.queryImg.getBoundingClientRect();
    return { x: Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)), y: Math.min(1, Math.max(0, (e.clientY - r.top) / r.height)) };
  }

  function searchBox() {
    if (!lastQuery || !box || box.w < 0.02 || box.h < 0.02) { showBox(lastQuery && lastQuery.crop); return; }
    run(Object.assign({}, lastQuery, { crop: box }));
  }

  els.frame.addEventListener("pointerdown", (e) => {
    if (!lastQuery || e.button > 0) return;
    e.preventDefault();
    els.frame.setPointerCapture(e.pointerId);
    drag = at(e);
    showBox({ x: drag.x, y: drag.y, w: 0, h: 0 });
  });
  els.frame.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const p = at(e);
    showBox({ x: Math.min(p.x, drag.x), y: Math.min(p.y, drag.y), w: Math.abs(p.x - drag.x), h: Math.abs(p.y - drag.y) });
  });
  els.frame.addEventListener("pointerup", () => {
    if (!drag) return;
    drag = null;
    searchBox();
  });
  els.frame.addEventListener("pointercancel", () => { drag = null; showBox(lastQuery && lastQuery.crop); });
  els.frame.addEventListener("keydown", (e) => {
    if (!lastQuery) return;
    const step = 0.05;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    if (moves[e.key]) {
      e.preventDefault();
      const b = box || { x: 0.25, y: 0.25, w: 0.5, h: 0.5 };
      const [dx, dy] = moves[e.key];
      const next = e.shiftKey
        ? { x: b.x, y: b.y, w: Math.min(1 - b.x, Math.max(0.05, b.w + dx)), h: Math.min(1 - b.y, Math.max(0.05, b.h + dy)) }
        : { x: Math.min(1 - b.w, Math.max(0, b.x + dx)), y: Math.min(1 - b.h, Math.max(0, b.y + dy)), w: b.w, h: b.h };
      showBox(next);
    } else if (e.key === "Enter" && box) {
      e.preventDefault();
      searchBox();
    } else if (e.key === "Escape" && lastQuery.crop) {
      e.preventDefault();
      run(Object.assign({}, lastQuery, { crop: null }));
    }
  });
  els.clearBox.addEventListener("click", () => { if (lastQuery) run(Object.assign({}, lastQuery, { crop: null })); });
  window.addEventListener("resize", () => showBox(box));
  els.queryImg.addEventListener("load", () => showBox(box));

  loadStats();
  fromUrl();
})();
