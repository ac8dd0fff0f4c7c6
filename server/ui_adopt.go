package server

import (
	"net"
	"net/http"
	"strings"
)

// adoptView is the data of the adopt page: an unknown client about to join the fleet.
type adoptView struct {
	CSRF   string
	Spec   BoardSpec
	Model  string
	Images []string
	Err    string
}

// handleAdopt runs the adopt form of an unknown client: a POST from the overview (MAC,
// serial) answers with a form for its name, address and image; that form's POST, with
// confirm=yes, adds the board to fleet.yaml (AddBoard: comments and layout kept, the
// result checked as `pifleet check` would), reloads, and shows the new board's page.
func (u *webUI) handleAdopt(w http.ResponseWriter, r *http.Request) {
	if err := u.checkPost(r); err != nil {
		u.render(w, http.StatusForbidden, "confirm", page{Title: "refused", Data: confirmView{Err: err.Error()}})
		return
	}
	cfg := u.s.config()
	v := adoptView{CSRF: u.csrf(r.URL.Path), Model: r.PostFormValue("model"), Spec: BoardSpec{
		Name: r.PostFormValue("name"), MAC: r.PostFormValue("mac"), Serial: r.PostFormValue("serial"),
		IP: r.PostFormValue("ip"), Image: r.PostFormValue("image"),
	}}
	for name := range cfg.Images {
		v.Images = append(v.Images, name)
	}
	if r.PostFormValue("confirm") != "yes" {
		v.Spec.Name = suggestName(v.Spec)
		u.render(w, http.StatusOK, "adopt", page{Title: "adopt", Data: v})
		return
	}
	if err := AddBoard(u.s.cfgPath, v.Spec); err != nil {
		v.Err = err.Error()
		u.render(w, http.StatusUnprocessableEntity, "adopt", page{Title: "adopt", Data: v})
		return
	}
	u.s.log.Info("board adopted from the web UI", "board", v.Spec.Name, "mac", v.Spec.MAC, "serial", v.Spec.Serial, "peer", r.RemoteAddr)
	if _, err := u.s.Reload(true); err != nil {
		v.Err = "added to " + u.s.cfgPath + ", but the reload failed: " + err.Error()
		u.render(w, http.StatusInternalServerError, "adopt", page{Title: "adopt", Data: v})
		return
	}
	if mac, err := net.ParseMAC(v.Spec.MAC); err == nil {
		u.s.timeline.ForgetUnknown(mac)
	}
	http.Redirect(w, r, "/boards/"+strings.TrimSpace(v.Spec.Name)+"?done=adopted", http.StatusSeeOther)
}

// suggestName proposes a board name from what the client told: pi-<serial>, else
// pi-<last three MAC bytes>.
func suggestName(b BoardSpec) string {
	if b.Name != "" {
		return b.Name
	}
	if b.Serial != "" {
		return "pi-" + strings.ToLower(b.Serial)
	}
	if mac, err := net.ParseMAC(b.MAC); err == nil && len(mac) == 6 {
		return "pi-" + strings.ReplaceAll(mac[3:].String(), ":", "")
	}
	return ""
}
