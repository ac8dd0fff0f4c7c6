package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pifleet/pifleet/images"
	"github.com/pifleet/pifleet/server"
)

func runBoard(ctx context.Context, e *env, args []string) error {
	return dispatch(ctx, e, "pifleet board", map[string]command{
		"ls":     {"list boards: MAC, serial, IP, image, upper size, last boot, mounted", runBoardLs},
		"reset":  {"wipe boards' upper dirs so they boot the image's pristine state", runBoardReset},
		"diff":   {"show what a board changed against its image (A/C/D); --conflicts: what its new image changed too", runBoardDiff},
		"commit": {"make a new image from a board's changes: its image plus one layer", runBoardCommit},
		"add":    {"add a board to fleet.yaml, keeping its comments and layout", runBoardAdd},
	}, args)
}

// api talks to the running server's HTTP API. A nil api means no server owns the state
// dir, and board commands work straight on it.
type api struct {
	base string
	si   *server.ServeInfo
	c    *http.Client
}

// dialAPI decides by the state dir's lock, never by whether some port answers: a free
// lock means no server, so the command works offline (nil api); a lock held by pifleet
// serve means its API, at the addresses it recorded in <state>/serve.json; anything
// else is an error, so a command never works offline under a live server.
func dialAPI(ctx context.Context, cfg *server.Config) (*api, error) {
	return dialState(ctx, cfg.Server.State)
}

// dialState is dialAPI for a state dir.
func dialState(ctx context.Context, stateDir string) (*api, error) {
	held, err := server.StateHolder(stateDir)
	if err != nil || held == nil {
		return nil, err
	}
	if held.Serve == nil || len(held.Serve.HTTP) == 0 {
		return nil, fmt.Errorf("%v, which serves no API (yet): try again in a moment, or stop it", held)
	}
	var errs []string
	for _, addr := range held.Serve.HTTP {
		a := &api{base: "http://" + dialable(addr), si: held.Serve, c: &http.Client{Timeout: 2 * time.Minute}}
		req, _ := http.NewRequestWithContext(ctx, "GET", a.base+"/api/ping", nil)
		resp, err := (&http.Client{Timeout: time.Minute}).Do(req) // a first start may still be preparing boards
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return a, nil
		}
		errs = append(errs, a.base+": "+resp.Status)
	}
	return nil, fmt.Errorf("%v, but its API does not answer (%s): is it stuck? stop it to work offline", held, strings.Join(errs, "; "))
}

// dialable turns a listen address into one to dial: an unspecified address (0.0.0.0,
// ::) is reached on loopback.
func dialable(addr string) string {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().IsUnspecified() {
		return addr
	}
	lo := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	if ap.Addr().Is6() {
		lo = netip.IPv6Loopback()
	}
	return netip.AddrPortFrom(lo, ap.Port()).String()
}

func (a *api) call(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, nil)
	if err != nil {
		return err
	}
	if method != http.MethodGet {
		tok, err := a.si.ReadToken()
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
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
	names := fs.Bool("names", false, "print only the board names from fleet.yaml, one a line (for scripts and completion)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *names { // the file's names, at once: completion calls this on every tab
		cfg, err := loadConfig(*cfgPath)
		if err != nil {
			return err
		}
		return printBoardNames(e, cfg)
	}
	cfg, live, err := readOnly(ctx, e, *cfgPath)
	if err != nil {
		return err
	}
	var boards []server.BoardStatus
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
		image := b.Image
		if b.Pending != "" {
			image += " (pending image " + b.Pending + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", b.Name, dash(b.MAC), dash(b.Serial), dash(b.IP), image,
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
			"identity (SSH host keys). Goes through the pifleet serve that holds the state dir, if one\n"+
			"does; a board that has its root mounted is refused unless --force (it must then reboot).\n"+
			"Without a server it works on the state dir directly, holding its lock. Crash-safe: the\n"+
			"board's dir is moved aside, then deleted.")
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
	live, err := dialAPI(ctx, cfg)
	if err != nil {
		return err
	}
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

func runBoardCommit(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "pifleet board commit", "[-c fleet.yaml] [--force] NAME --as IMAGE",
		"Makes image IMAGE from what board NAME changed: the board's image plus one new layer holding\n"+
			"the board's upper dir minus what is per board or volatile (hostname, machine-id, SSH host\n"+
			"keys, the first user's keys, /var/log, /tmp, ... see README; fleet.yaml's\n"+
			"server.commit.exclude adds paths). The board itself is not changed. Refused while the board\n"+
			"has its root mounted, unless --force. Goes through the pifleet serve that holds the state\n"+
			"dir, if one does; else works on the state dir directly, holding its lock.")
	cfgPath := configFlag(fs)
	as := fs.String("as", "", "name of the new image (required)")
	force := fs.Bool("force", false, "commit even while the board has its root mounted (its files may be mid-change)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("board commit needs one board name")
	}
	if *as == "" {
		return usagef("board commit needs --as IMAGE, the new image's name")
	}
	if err := images.CheckName(*as); err != nil {
		return usagef("%v", err)
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	live, err := dialAPI(ctx, cfg)
	if err != nil {
		return err
	}
	name := fs.Arg(0)
	var res server.CommitResult
	if live != nil {
		q := url.Values{"as": {*as}}
		if *force {
			q.Set("force", "1")
		}
		long := *live
		long.c = &http.Client{} // a big upper takes a while; Ctrl-C (ctx) still ends the wait
		err = long.call(ctx, "POST", "/api/boards/"+url.PathEscape(name)+"/commit?"+q.Encode(), &res)
	} else {
		res, err = server.OfflineCommit(cfg, name, *as)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(e.out, "committed board %s as image %s (%s + 1 layer)\n", res.Board, res.Image, res.Base)
	fmt.Fprintf(e.out, "layer %s: %d files, %s, %d deletions; %d excluded changes left out\n",
		res.Layer, res.Files, images.HumanBytes(res.Bytes), res.Whiteouts, res.Excluded)
	fmt.Fprintf(e.out, "to boot boards on it: add %s: {} under images: in fleet.yaml and give a board or group image: %s\n", res.Image, res.Image)
	return nil
}

func runBoardDiff(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "pifleet board diff", "[-c fleet.yaml] [--stat] [--conflicts] NAME",
		"Lists what the board changed against its image, read from its upper dir:\nA added, C changed, D deleted (like docker diff).\n"+
			"With --conflicts, after its image changed in fleet.yaml (pending or done): only the paths it\n"+
			"changed that the image changed too, between the image it ran and the new one. Its changes\n"+
			"shadow the new image there; `pifleet board reset` drops them.")
	cfgPath := configFlag(fs)
	stat := fs.Bool("stat", false, "show each changed file's size, and the total size and disk space")
	conflicts := fs.Bool("conflicts", false, "only the board's changes that its new image changed too (after an image switch in fleet.yaml)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("board diff needs one board name")
	}
	cfg, live, err := readOnly(ctx, e, *cfgPath)
	if err != nil {
		return err
	}
	var changes []server.Change
	if *conflicts {
		var c server.Conflict
		if live != nil {
			err = live.call(ctx, "GET", "/api/boards/"+url.PathEscape(fs.Arg(0))+"/conflicts", &c)
		} else {
			c, err = server.OfflineConflicts(cfg, fs.Arg(0))
		}
		if err != nil {
			return err
		}
		how := "switched from image " + c.From + " to " + c.To
		if c.Pending {
			how = "runs image " + c.From + ", pending image " + c.To
		}
		if len(c.Changes) == 0 {
			fmt.Fprintf(e.out, "no conflicts: %s %s; none of its changes touch a path the image changed\n", fs.Arg(0), how)
			return nil
		}
		fmt.Fprintf(e.out, "%s %s; its changes shadow the image's at %d path(s):\n", fs.Arg(0), how, len(c.Changes))
		for _, ch := range c.Changes {
			fmt.Fprintf(e.out, "%s %s\n", ch.Kind, ch.Path)
		}
		return nil
	}
	if live != nil {
		err = live.call(ctx, "GET", "/api/boards/"+url.PathEscape(fs.Arg(0))+"/diff", &changes)
	} else {
		changes, err = server.OfflineDiff(cfg, fs.Arg(0))
	}
	if err != nil {
		return err
	}
	if len(changes) == 0 {
		fmt.Fprintf(e.out, "no changes: %s runs its image's pristine state\n", fs.Arg(0))
		return nil
	}
	var size, disk int64
	for _, c := range changes {
		size += c.Size
		disk += c.Disk
		if *stat {
			fmt.Fprintf(e.out, "%s %10s %s\n", c.Kind, images.HumanBytes(c.Size), c.Path)
		} else {
			fmt.Fprintf(e.out, "%s %s\n", c.Kind, c.Path)
		}
	}
	if *stat {
		fmt.Fprintf(e.out, "%d change(s), %s of files, %s on disk in the upper dir\n", len(changes), images.HumanBytes(size), images.HumanBytes(disk))
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
