// dinosearch search page: upload / drop / paste a photo, show the closest images, "more like this".
// Plain DOM, no build step. Text from the server only ever goes in through textContent, never innerHTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const els = {
    file: $("file"), k: $("k"), status: $("status"), results: $("results"), stats: $("stats"),
    query: $("query"), queryImg: $("query-img"), queryLabel: $("query-label"),
    filterForm: $("filter-form"), filterInput: $("filter-input"), filterList: $("filter-list"),
    keyForm: $("key-form"), keyInput: $("key-input"),
  };
  const maxBytes = Number(document.body.dataset.maxBytes) || 20 * 1024 * 1024;
  const SHOWN = new Set(["title", "name", "price", "link", "url"]); // rendered as text, not as filter values
  let filters = [];          // [[key, value], ...]
  let lastQuery = null;      // {kind: "file", file} | {kind: "similar", id, label, thumb}
  let queryUrl = null;       // object URL of the uploaded query, revoked when replaced
  let generation = 0;        // answers to superseded requests are dropped
  let retry = null;          // what to run again once an API key is given

  // API ------------------------------------------------------------------------------------------
  const { api, el } = window.dinosearch; // common.js

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

  async function run(query) {
    lastQuery = query;
    const mine = ++generation;
    showQuery(query);
    setStatus("Searching…");
    els.results.setAttribute("aria-busy", "true");
    try {
      let body;
      if (query.kind === "file") {
        const form = new FormData();
        form.append("image", query.file, query.file.name || "pasted-image");
        form.append("k", els.k.value);
        filterParams(form);
        body = await api("api/search", { method: "POST", body: form });
      } else {
        const params = filterParams(new URLSearchParams({ k: els.k.value }));
        body = await api("api/images/" + encodeURIComponent(query.id) + "/similar?" + params.toString());
      }
      if (mine !== generation) return;
      render(body.results || []);
      const n = (body.results || []).length;
      setStatus(n ? n + (n === 1 ? " result" : " results") : "No results" + (filters.length ? " with these filters." : "."));
    } catch (err) {
      if (mine !== generation) return;
      if (err.status === 401) { needKey(() => run(query)); return; }
      setStatus(err.message, true);
    } finally {
      if (mine === generation) els.results.removeAttribute("aria-busy");
    }
  }

  function searchFile(file) {
    if (!file) return;
    if (file.size > maxBytes) {
      setStatus("That file is over the " + Math.round(maxBytes / 1048576) + " MB limit.", true);
      return;
    }
    run({ kind: "file", file: file });
  }

  function showQuery(query) {
    els.query.hidden = false;
    if (query.kind === "file") {
      if (queryUrl) URL.revokeObjectURL(queryUrl);
      queryUrl = URL.createObjectURL(query.file); // shown from memory: the upload is not kept anywhere
      els.queryImg.src = queryUrl;
      els.queryLabel.textContent = query.file.name || "Pasted image";
    } else {
      els.queryImg.src = query.thumb;
      els.queryLabel.textContent = "More like: " + query.label;
    }
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
    more.addEventListener("click", () => run({ kind: "similar", id: r.id, label: title, thumb: r.thumbnail_url }));
    li.append(more);

    const info = el("div", "info");
    const head = el("div", "head");
    head.append(el("span", "score", r.score.toFixed(3)));
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
    li.append(info);
    return li;
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

  loadStats();
})();
