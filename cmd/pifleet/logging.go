package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// logHandler makes serve's log handler. Under systemd, when stderr is the journal
// (journal), lines carry no time (journald stamps each line itself) and start with the
// syslog priority prefix journald reads ("<6>" info, "<4>" warning), so that
// `journalctl -p warning` works; level= stays in the text for anyone reading it.
// --log-json is left as asked for.
func logHandler(w io.Writer, level slog.Level, asJSON, journal bool) slog.Handler {
	opts := &slog.HandlerOptions{Level: level}
	switch {
	case asJSON:
		return slog.NewJSONHandler(w, opts)
	case journal:
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
		pw := &priorityWriter{w: w}
		return &journalHandler{Handler: slog.NewTextHandler(pw, opts), pw: pw, mu: new(sync.Mutex)}
	}
	return slog.NewTextHandler(w, opts)
}

// journalStream reports whether f is the stream systemd connected to the journal:
// JOURNAL_STREAM holds its "device:inode" (systemd.exec(5)); comparing them tells a
// service's own stderr from one it passed on to a child or a redirect.
func journalStream(env string, f *os.File) bool {
	if env == "" {
		return false
	}
	var dev, ino uint64
	if n, err := fmt.Sscanf(env, "%d:%d", &dev, &ino); n != 2 || err != nil {
		return false
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return uint64(st.Dev) == dev && st.Ino == ino
}

// priorityWriter puts the current record's "<N>" before the line the text handler writes
// (one Write per record).
type priorityWriter struct {
	w      io.Writer
	prefix string
}

func (p *priorityWriter) Write(b []byte) (int, error) {
	if _, err := io.WriteString(p.w, p.prefix); err != nil {
		return 0, err
	}
	return p.w.Write(b)
}

// journalHandler sets the priority prefix for each record; mu (shared by every handler
// derived with WithAttrs/WithGroup) keeps prefix and line together.
type journalHandler struct {
	slog.Handler
	pw *priorityWriter
	mu *sync.Mutex
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pw.prefix = syslogPriority(r.Level)
	return h.Handler.Handle(ctx, r)
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &journalHandler{Handler: h.Handler.WithAttrs(as), pw: h.pw, mu: h.mu}
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	return &journalHandler{Handler: h.Handler.WithGroup(name), pw: h.pw, mu: h.mu}
}

// syslogPriority maps slog levels to sd-daemon(3) prefixes.
func syslogPriority(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "<3>"
	case l >= slog.LevelWarn:
		return "<4>"
	case l >= slog.LevelInfo:
		return "<6>"
	}
	return "<7>"
}
