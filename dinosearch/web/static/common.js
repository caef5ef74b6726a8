// Shared by the dinosearch pages: the API key kept for this tab, JSON API calls, and safe DOM building.
// Text from the server only ever goes in through textContent, never innerHTML.
"use strict";

window.dinosearch = (function () {
  function apiKey() {
    try { return sessionStorage.getItem("dinosearch-key") || ""; } catch (e) { return ""; }
  }

  // fetch + JSON; a non-2xx answer throws an Error carrying the server's {"detail"} and .status.
  async function api(path, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    const key = apiKey();
    if (key) opts.headers.Authorization = "Bearer " + key;
    const res = await fetch(path, opts);
    let body = null;
    try { body = await res.json(); } catch (e) { body = null; }
    if (!res.ok) {
      const err = new Error((body && typeof body.detail === "string") ? body.detail : "the server answered " + res.status);
      err.status = res.status;
      throw err;
    }
    return body;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  return { apiKey: apiKey, api: api, el: el };
})();
