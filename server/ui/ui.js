// Live updates: the server streams the page's live part as HTML (Server-Sent Events);
// without JavaScript the page reloads itself instead (a <noscript> refresh).
(function () {
  var main = document.querySelector("main[data-live]");
  var live = document.getElementById("live");
  if (!main || !live || !window.EventSource) return;
  var es;
  function connect() {
    es = new EventSource("/events?" + main.dataset.live);
    es.addEventListener("open", function () { main.dataset.stream = "open"; });
    es.addEventListener("update", function (e) { live.innerHTML = e.data; });
  }
  // A page left for another (or kept in the back/forward cache) gives its stream back:
  // the server holds a bounded number of them.
  window.addEventListener("pagehide", function () { es.close(); main.dataset.stream = "closed"; });
  window.addEventListener("pageshow", function (e) { if (e.persisted) connect(); });
  connect();
})();
