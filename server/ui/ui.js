// Live updates: the server streams the page's live part as HTML (Server-Sent Events);
// without JavaScript the page reloads itself instead (a <noscript> refresh).
(function () {
  var main = document.querySelector("main[data-live]");
  var live = document.getElementById("live");
  if (!main || !live || !window.EventSource) return;
  var es = new EventSource("/events?" + main.dataset.live);
  es.addEventListener("update", function (e) { live.innerHTML = e.data; });
})();
