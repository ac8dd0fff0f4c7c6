package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pifleet/pifleet/images"
	"github.com/pifleet/pifleet/server"
)

func runBoard(ctx context.Context, e *env, args []string) error {
	return dispatch(ctx, e, "pifleet board", map[string]command{
		"ls":    {"list boards: MAC, serial, IP, image, upper size, last boot, mounted", runBoardLs},
		"reset": {"wipe boards' upper dirs so they boot the image's pristine state", runBoardReset},
		"diff":  {"show what a board changed against its image (A/C/D)", runBoardDiff},
	}, args)
}

// api talks to the running server's HTTP API on loopback. A nil api means no server
// runs, and board commands work straight on the state dir.
type api struct {
	base string
	c    *http.Client
}

func dialAPI(ctx context.Context, cfg *server.Config) *api {
	a := &api{base: "http://127.0.0.1:" + strconv.Itoa(cfg.Server.Ports.HTTP), c: &http.Client{Timeout: 2 * time.Minute}}
	req, _ := http.NewRequestWithContext(ctx, "GET", a.base+"/api/ping", nil)
	resp, err := (&http.Client{Timeout: 3 * time.Second}).Do(req)
	if err != nil {
		return nil
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil
	}
	return a
}

func (a *api) call(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, nil)
	if err != nil {
		return err
	}
	resp, err := a.c.Do(req)
	if err != nil {
		return fmt.Errorf("pifleet server at %s: %w", a.base, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("pifleet server: %s", resp.Status)
	}
	if out != nil {
		return json.Unmarshal(body, out)
	}
	return nil
}

func loadConfig(path string) (*server.Config, error) {
	cfg, _, err := server.Load(path)
	return cfg, err
}

func runBoardLs(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "pifleet board ls", "[-c fleet.yaml] [--json]",
		"Lists the fleet's boards. With a running server it also shows the last boot (when, and how\nfar it got: dhcp, tftp, nfs) and whether the board has its root mounted.")
	cfgPath := configFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	var boards []server.BoardStatus
	live := dialAPI(ctx, cfg)
	if live != nil {
		if err := live.call(ctx, "GET", "/api/boards", &boards); err != nil {
			return err
		}
	} else {
		boards = server.OfflineBoards(cfg)
	}
	if *asJSON {
		enc := json.NewEncoder(e.out)
		enc.SetIndent("", "  ")
		return enc.Encode(boards)
	}
	tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tMAC\tSERIAL\tIP\tIMAGE\tUPPER\tLAST BOOT\tREACHED\tMOUNTED")
	for _, b := range boards {
		last, reached, mounted := "never", "-", "no"
		if live == nil {
			last, reached, mounted = "?", "?", "?"
		}
		if b.LastBoot != nil {
			last = b.LastBoot.Local().Format("2006-01-02 15:04:05")
		}
		if b.Reached != "" {
			reached = string(b.Reached)
		}
		if b.Mounted {
			mounted = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", b.Name, dash(b.MAC), dash(b.Serial), dash(b.IP), b.Image,
			images.HumanBytes(b.UpperSize), last, reached, mounted)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if live == nil {
		fmt.Fprintln(e.err, "(no pifleet server running: last boot and mount state unknown)")
	}
	return nil
}

func runBoardReset(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "pifleet board reset", "[-c fleet.yaml] [--force] [--group G] NAME...",
		"Wipes each board's upper dir, so its next boot is the image's pristine state with a fresh\n"+
			"identity (SSH host keys). Goes through the running server if there is one; a board that\n"+
			"has its root mounted is refused unless --force (it must then reboot). Without a server it\n"+
			"works on the state dir directly. Crash-safe: the board's dir is moved aside, then deleted.")
	cfgPath := configFlag(fs)
	force := fs.Bool("force", false, "reset even boards that have their root mounted")
	group := fs.String("group", "", "reset every board of this group (fleet.yaml's group:)")
	if err := parse(fs, args); err != nil {
		return err
	}
	names := fs.Args()
	if len(names) == 0 && *group == "" {
		return usagef("board reset needs board names (or --group)")
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	if *group != "" {
		for _, b := range cfg.Boards {
			if b.Group == *group {
				names = append(names, b.Name)
			}
		}
		if len(names) == 0 {
			return fmt.Errorf("no board has group %q", *group)
		}
	}
	live := dialAPI(ctx, cfg)
	var failed []string
	for _, n := range names {
		if live != nil {
			q := ""
			if *force {
				q = "?force=1"
			}
			err = live.call(ctx, "POST", "/api/boards/"+url.PathEscape(n)+"/reset"+q, nil)
		} else {
			err = server.OfflineReset(cfg, n)
		}
		if err != nil {
			fmt.Fprintf(e.err, "pifleet: %v\n", err)
			failed = append(failed, n)
			continue
		}
		fmt.Fprintf(e.out, "reset %s\n", n)
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d board(s) not reset: %s", len(failed), len(names), strings.Join(failed, ", "))
	}
	return nil
}

func runBoardDiff(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "pifleet board diff", "[-c fleet.yaml] [--stat] NAME",
		"Lists what the board changed against its image, read from its upper dir:\nA added, C changed, D deleted (like docker diff).")
	cfgPath := configFlag(fs)
	stat := fs.Bool("stat", false, "show the disk space each change takes, and a total")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("board diff needs one board name")
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	var changes []server.Change
	if live := dialAPI(ctx, cfg); live != nil {
		err = live.call(ctx, "GET", "/api/boards/"+url.PathEscape(fs.Arg(0))+"/diff", &changes)
	} else {
		changes, err = server.OfflineDiff(cfg, fs.Arg(0))
	}
	if err != nil {
		return err
	}
	var total int64
	for _, c := range changes {
		total += c.Size
		if *stat {
			fmt.Fprintf(e.out, "%s %10s %s\n", c.Kind, images.HumanBytes(c.Size), c.Path)
		} else {
			fmt.Fprintf(e.out, "%s %s\n", c.Kind, c.Path)
		}
	}
	if *stat {
		fmt.Fprintf(e.out, "%d change(s), %s in the upper dir\n", len(changes), images.HumanBytes(total))
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
