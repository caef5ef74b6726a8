// dinosearch duplicates page: groups from GET api/duplicates, the keeper first and marked, a page at a time.
// Plain DOM, no build step. Text from the server only ever goes in through textContent, never innerHTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const els = {
    level: $("level"), keep: $("keep"), status: $("status"), groups: $("groups"), pager: $("pager"),
    prev: $("prev"), next: $("next"), pageLabel: $("page-label"), keyForm: $("key-form"), keyInput: $("key-input"),
  };
  const state = { level: "near", keep: "largest", page: 1, pages: 1, perPage: 20 };
  let generation = 0; // answers to superseded requests are dropped

  const { api, el } = window.dinosearch; // common.js

  function setStatus(text, isError) {
    els.status.textContent = text;
    els.status.classList.toggle("error", !!isError);
  }

  function readUrl() {
    const q = new URLSearchParams(location.search);
    if (["exact", "near", "similar"].includes(q.get("level"))) state.level = q.get("level");
    if (["largest", "oldest", "newest"].includes(q.get("keep"))) state.keep = q.get("keep");
    const page = Number(q.get("page"));
    if (Number.isInteger(page) && page >= 1) state.page = page;
    const perPage = Number(q.get("per_page"));
    if (Number.isInteger(perPage) && perPage >= 1 && perPage <= 100) state.perPage = perPage;
    els.level.value = state.level;
    els.keep.value = state.keep;
  }

  async function load() {
    const mine = ++generation;
    const params = new URLSearchParams({
      level: state.level, keep: state.keep, page: String(state.page), per_page: String(state.perPage),
    });
    history.replaceState(null, "", "?" + params.toString());
    setStatus("Looking for duplicates…");
    els.groups.setAttribute("aria-busy", "true");
    try {
      const body = await api("api/duplicates?" + params.toString());
      if (mine !== generation) return;
      state.pages = body.pages;
      render(body);
    } catch (err) {
      if (mine !== generation) return;
      if (err.status === 401) { needKey(); return; }
      setStatus(err.message, true);
    } finally {
      if (mine === generation) els.groups.removeAttribute("aria-busy");
    }
  }

  function render(body) {
    els.groups.replaceChildren(...body.groups.map(group));
    if (!body.total_groups) {
      setStatus("No duplicates at this level.");
    } else {
      setStatus(body.total_groups + (body.total_groups === 1 ? " group, " : " groups, ") + body.total_duplicates +
        (body.total_duplicates === 1 ? " duplicate" : " duplicates") +
        (body.level === "exact" ? " (same content)." : " (cosine ≥ " + body.threshold.toFixed(3) + ")."));
    }
    els.pager.hidden = body.pages <= 1;
    els.pageLabel.textContent = "Page " + body.page + " of " + body.pages;
    els.prev.disabled = body.page <= 1;
    els.next.disabled = body.page >= body.pages;
  }

  function group(g) {
    const li = el("li", "group");
    li.dataset.group = String(g.group);
    const h = el("h2", "", "Group " + g.group + " · " + (g.duplicates.length + 1) + " images");
    h.append(el("span", "reason muted small", " — keeper: " + g.reason));
    const list = el("ul", "members");
    list.append(card(g.keeper, true), ...g.duplicates.map((m) => card(m, false)));
    li.append(h, list);
    return li;
  }

  function card(m, keeper) {
    const li = el("li", keeper ? "member keeper" : "member");
    li.dataset.id = String(m.id);
    const a = el("a");
    a.href = m.image_url;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    const img = el("img");
    img.src = m.thumbnail_url;
    img.alt = (keeper ? "Keeper: " : "Duplicate: ") + m.name;
    img.loading = "lazy";
    a.append(img);
    li.append(a);
    if (keeper) li.append(el("span", "badge", "Keeper"));
    const info = el("div", "info");
    const head = el("div", "head");
    head.append(el("span", "score", m.score.toFixed(3)));
    head.append(el("span", "dims muted", (m.width && m.height ? m.width + "×" + m.height : "") + " · " + kb(m.size)));
    info.append(head, el("span", "title filename", m.name));
    li.append(info);
    return li;
  }

  function kb(bytes) {
    return bytes >= 1048576 ? (bytes / 1048576).toFixed(1) + " MB" : Math.max(1, Math.round(bytes / 1024)) + " kB";
  }

  function needKey() {
    els.keyForm.hidden = false;
    els.keyInput.focus();
    setStatus("Enter the API key to see duplicates.");
  }

  els.keyForm.addEventListener("submit", (e) => {
    e.preventDefault();
    try { sessionStorage.setItem("dinosearch-key", els.keyInput.value.trim()); } catch (err) { /* private mode */ }
    els.keyInput.value = "";
    els.keyForm.hidden = true;
    load();
  });
  $("dup-form").addEventListener("submit", (e) => e.preventDefault());
  els.level.addEventListener("change", () => { state.level = els.level.value; state.page = 1; load(); });
  els.keep.addEventListener("change", () => { state.keep = els.keep.value; state.page = 1; load(); });
  els.prev.addEventListener("click", () => { if (state.page > 1) { state.page -= 1; load(); } });
  els.next.addEventListener("click", () => { if (state.page < state.pages) { state.page += 1; load(); } });

  readUrl();
  load();
})();
