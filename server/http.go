package server

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The HTTP side: the web UI for people (ui.go), a JSON API for `pifleet board ...` and
// scripts, and Prometheus metrics. Calls that change state (reset, commit, reload) are accepted
// only from the server itself, with the API token, and never from a web page (see guarded).
func (s *Server) handler() http.Handler {
	mux := http.NewServeMux()
	s.ui.register(mux)
	mux.HandleFunc("GET /api/boards", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Boards(r.URL.Query().Get("timeline") != ""))
	})
	mux.HandleFunc("GET /api/ping", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"config": s.cfgPath})
	})
	mux.HandleFunc("GET /api/boards/{name}", func(w http.ResponseWriter, r *http.Request) {
		if b, ok := s.Board(r.PathValue("name")); ok {
			writeJSON(w, http.StatusOK, b)
			return
		}
		writeError(w, http.StatusNotFound, "board "+r.PathValue("name")+": not in the fleet")
	})
	mux.HandleFunc("GET /api/boards/{name}/history", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		ok := hasBoard(s.cfg, r.PathValue("name"))
		s.mu.Unlock()
		if !ok {
			writeError(w, http.StatusNotFound, "board "+r.PathValue("name")+": not in the fleet")
			return
		}
		writeJSON(w, http.StatusOK, s.timeline.History(r.PathValue("name")))
	})
	mux.HandleFunc("GET /api/boards/{name}/diff", func(w http.ResponseWriter, r *http.Request) {
		ch, err := s.Diff(r.PathValue("name"))
		if err != nil {
			writeError(w, http.StatusNotFound, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, ch)
	})
	mux.HandleFunc("GET /api/boards/{name}/conflicts", func(w http.ResponseWriter, r *http.Request) {
		c, err := s.Conflicts(r.PathValue("name"))
		switch {
		case errors.Is(err, ErrNoSwitch):
			writeError(w, http.StatusConflict, err.Error())
		case err != nil:
			writeError(w, http.StatusNotFound, err.Error())
		default:
			writeJSON(w, http.StatusOK, c)
		}
	})
	mux.HandleFunc("POST /api/boards/{name}/reset", s.guarded(func(w http.ResponseWriter, r *http.Request) {
		err := s.ResetBoard(r.PathValue("name"), r.URL.Query().Get("force") == "1")
		switch {
		case errors.Is(err, ErrMounted):
			writeError(w, http.StatusConflict, err.Error())
		case err != nil:
			writeError(w, http.StatusBadRequest, err.Error())
		default:
			writeJSON(w, http.StatusOK, map[string]string{"reset": r.PathValue("name")})
		}
	}))
	mux.HandleFunc("POST /api/boards/{name}/commit", s.guarded(func(w http.ResponseWriter, r *http.Request) {
		res, err := s.CommitBoard(r.PathValue("name"), r.URL.Query().Get("as"), r.URL.Query().Get("force") == "1")
		switch {
		case errors.Is(err, ErrMounted):
			writeError(w, http.StatusConflict, err.Error())
		case err != nil:
			writeError(w, http.StatusBadRequest, err.Error())
		default:
			writeJSON(w, http.StatusOK, res)
		}
	}))
	mux.HandleFunc("POST /api/reload", s.guarded(func(w http.ResponseWriter, r *http.Request) {
		if _, err := s.Reload(true); err != nil {
			writeError(w, http.StatusUnprocessableEntity, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"reloaded": s.cfgPath})
	}))
	mux.HandleFunc("GET /api/unknown", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.timeline.Unknowns())
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn), MaxRequestsInFlight: 4}))
	return mux
}

// serveHTTP serves the API on every listener until ctx ends or one fails.
func (s *Server) serveHTTP(ctx context.Context, ls []net.Listener) error {
	// Idle keep-alive connections close after a while; open ones are bounded (httplimit.go).
	srv := &http.Server{Handler: s.handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	srv.RegisterOnShutdown(s.ui.hub.shutdown) // live pages' streams would hold Shutdown up
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shut)
	}()
	errc := make(chan error, len(ls))
	limits := newConnLimiter()
	for _, l := range ls {
		go func() { errc <- srv.Serve(limits.wrap(l)) }()
	}
	var first error
	for range ls {
		if err := <-errc; !errors.Is(err, http.ErrServerClosed) && first == nil {
			first = err
			srv.Close() // one listener failed: stop the others, and so the server
		}
	}
	return first
}

// guarded admits a state-changing call only when it comes from this host (the peer is
// loopback or the address it connected to), carries the API token (Authorization: Bearer,
// from <state>/api-token, readable by root only), and is not a browser request made by a
// page of another origin: a page open in a browser on the server can send POSTs to
// 127.0.0.1, but it can neither read the token nor hide its Origin.
func (s *Server) guarded(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !fromThisHost(r) {
			writeError(w, http.StatusForbidden, "this call is accepted from the server itself only (use the pifleet CLI there)")
			return
		}
		if crossSite(r) {
			writeError(w, http.StatusForbidden, "cross-site request refused")
			return
		}
		want := "Bearer " + s.token
		if s.token == "" || subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte(want)) != 1 {
			writeError(w, http.StatusForbidden, "this call needs the API token (Authorization: Bearer, from "+tokenPath(s.state.Dir)+"); the pifleet CLI sends it")
			return
		}
		h(w, r)
	}
}

// fromThisHost reports whether the peer is loopback or the very address it connected to.
func fromThisHost(r *http.Request) bool {
	peer, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	if peer.Addr().Unmap().IsLoopback() {
		return true
	}
	local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return false
	}
	la, err := netip.ParseAddrPort(local.String())
	return err == nil && la.Addr().Unmap() == peer.Addr().Unmap()
}

// crossSite reports a request a browser sent on behalf of a page from another origin:
// Sec-Fetch-Site says so, or Origin names another host than the one addressed.
func crossSite(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
	default:
		return true
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return false
	}
	u, err := url.Parse(origin)
	return err != nil || u.Host != r.Host
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
