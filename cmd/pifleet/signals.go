package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// interrupted is why the context of a command ends when the user (Ctrl-C) or a supervisor
// (SIGTERM, systemctl stop) stops pifleet.
type interrupted struct{ sig os.Signal }

func (i interrupted) Error() string { return "interrupted by " + signalName(i.sig) }

// exitCode follows the shell's convention for a process ended by a signal: 128 + its
// number (130 for Ctrl-C, 143 for SIGTERM).
func (i interrupted) exitCode() int {
	if s, ok := i.sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return 1
}

func signalName(s os.Signal) string {
	switch s {
	case os.Interrupt:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return s.String()
}

// signalContext is cancelled, with an interrupted cause, by the first SIGINT or SIGTERM.
// After that the signals get their default action back, so a second Ctrl-C ends a
// shutdown that hangs.
func signalContext() (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case s := <-ch:
			signal.Stop(ch)
			cancel(interrupted{s})
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		close(done)
		cancel(nil)
	}
}

// interruption reports whether a signal stopped the command that returned err, and if
// so the message and exit code to use: "context canceled" from deep inside says nothing,
// and any other error (a child process killed) is a consequence, shown after the cause.
func interruption(ctx context.Context, err error) (msg string, code int, ok bool) {
	var in interrupted
	if err == nil || !errors.As(context.Cause(ctx), &in) {
		return "", 0, false
	}
	if errors.Is(err, context.Canceled) {
		return fmt.Sprintf("%v: stopped", in), in.exitCode(), true
	}
	return fmt.Sprintf("%v: %v", in, err), in.exitCode(), true
}
