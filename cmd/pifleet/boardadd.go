package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/pifleet/pifleet/server"
)

// readOnly gets what a read-only board command needs: the fleet from fleet.yaml and the
// running server's API, if one holds the state dir. When fleet.yaml has errors, the
// command still works against a running server (which runs the last good config): the
// state dir is then found by a lenient read of server.state, and cfg is empty (no
// boards, no images): the fleet is the server's.
func readOnly(ctx context.Context, e *env, path string) (*server.Config, *api, error) {
	cfg, loadErr := loadConfig(path)
	if loadErr == nil {
		live, err := dialAPI(ctx, cfg)
		return cfg, live, err
	}
	dir, err := server.StateDirOf(path)
	if err != nil {
		return nil, nil, loadErr
	}
	if held, err := server.StateHolder(dir); err != nil || held == nil || held.Serve == nil {
		return nil, nil, loadErr
	}
	live, err := dialState(ctx, dir)
	if err != nil || live == nil {
		return nil, nil, loadErr
	}
	fmt.Fprintf(e.err, "pifleet: warning: %s has errors (see pifleet check -c %s); showing the running server's fleet\n", path, path)
	return &server.Config{Path: path, Images: map[string]server.Image{}}, live, nil
}

func runBoardAdd(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "pifleet board add", "[-c fleet.yaml] NAME --mac MAC [--serial S] [--ip IP] [--image X] [--group G]",
		"Adds a board to the end of fleet.yaml's boards: list, in the style of the entries there,\n"+
			"leaving the rest of the file (comments, layout) as it is. Refuses a name, MAC, serial or IP\n"+
			"another board has, and any result `pifleet check` would reject. A running pifleet serve\n"+
			"picks the change up by itself.")
	cfgPath := configFlag(fs)
	var spec server.BoardSpec
	fs.StringVar(&spec.MAC, "mac", "", "the board's Ethernet `MAC` (six hex pairs)")
	fs.StringVar(&spec.Serial, "serial", "", "a Pi's `SERIAL`: the last 8 hex digits of Serial in /proc/cpuinfo")
	fs.StringVar(&spec.IP, "ip", "", "a fixed `IP` address (full DHCP mode, or a reserved address)")
	fs.StringVar(&spec.Image, "image", "", "the `IMAGE` it boots (default: defaults.image)")
	fs.StringVar(&spec.Group, "group", "", "the board's `GROUP`: its settings (image, ...) from fleet.yaml's groups:, and board reset --group")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("board add needs one board name")
	}
	if spec.MAC == "" && spec.Serial == "" {
		return usagef("board add needs --mac (and, for a Pi, --serial)")
	}
	spec.Name = fs.Arg(0)
	if err := server.AddBoard(*cfgPath, spec); err != nil {
		return err
	}
	fmt.Fprintf(e.out, "added board %s to %s\n", spec.Name, *cfgPath)
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return nil
	}
	live, err := dialAPI(ctx, cfg)
	if err != nil || live == nil {
		return nil
	}
	// The server reloads a changed file within a second; say when it serves the board.
	for try := 0; try < 50; try++ {
		var b server.BoardStatus
		if live.call(ctx, http.MethodGet, "/api/boards/"+url.PathEscape(spec.Name), &b) == nil {
			fmt.Fprintf(e.out, "the running pifleet serve (pid %d) serves it now\n", live.si.PID)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	fmt.Fprintf(e.err, "pifleet: the running pifleet serve (pid %d) has not picked it up yet; see its log\n", live.si.PID)
	return nil
}
