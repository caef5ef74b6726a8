// Shared by the dinosearch pages: the API key kept for this tab, JSON API calls, and safe DOM building.
// Text from the server only ever goes in through textContent, never innerHTML.
"use strict";

window.dinosearch = (function () {
  function apiKey() {
    try { return sessionStorage.getItem("dinosearch-key") || ""; } catch (e) { return ""; }
  }

  // The response of an API call; a non-2xx answer throws an Error carrying the server's {"detail"} and .status.
  async function send(path, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    const key = apiKey();
    if (key) opts.headers.Authorization = "Bearer " + key;
    const res = await fetch(path, opts);
    if (!res.ok) {
      let body = null;
      try { body = await res.json(); } catch (e) { body = null; }
      const err = new Error((body && typeof body.detail === "string") ? body.detail : "the server answered " + res.status);
      err.status = res.status;
      throw err;
    }
    return res;
  }

  // fetch + JSON, as `send`.
  async function api(path, options) {
    const res = await send(path, options);
    try { return await res.json(); } catch (e) { return null; }
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  return { apiKey: apiKey, send: send, api: api, el: el };
})();
