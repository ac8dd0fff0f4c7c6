package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"syscall"
)

// inodes maps every path under root to its inode number.
func inodes(t testing.TB, root string) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	must(t, filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = fi.Sys().(*syscall.Stat_t).Ino
		return nil
	}))
	return out
}

// layout1Store makes a store dir in layout 1 with the pre-layers import: "pios" (prepared,
// root + prep) and "same" and "plain" (the same tree unprepared, twice).
func layout1Store(t testing.TB) (dir string, before map[string]map[string]uint64) {
	t.Helper()
	src := t.TempDir()
	fixtureTree(t, src, 20)
	dir = filepath.Join(t.TempDir(), "images")
	ctx := context.Background()
	must(t, ImportLayout1(ctx, dir, src, "pios", true))
	must(t, ImportLayout1(ctx, dir, src, "plain", false))
	must(t, ImportLayout1(ctx, dir, src, "same", false))
	before = map[string]map[string]uint64{}
	for _, n := range []string{"pios", "plain", "same"} {
		before[n+"/root"] = inodes(t, filepath.Join(dir, n, rootDirName))
	}
	before["pios/prep"] = inodes(t, filepath.Join(dir, "pios", prepDirName))
	if len(before["pios/prep"]) < 3 {
		t.Fatalf("fixture's prep layer has %d paths", len(before["pios/prep"]))
	}
	return dir, before
}

// checkMigrated: every image is in layout 2, its stack the old [prep, root] dirs (same
// inodes, same order), and verifies clean.
func checkMigrated(t *testing.T, dir string, before map[string]map[string]uint64) {
	t.Helper()
	st, err := OpenStore(dir)
	must(t, err)
	if left, _ := Layout1Images(dir); len(left) > 0 {
		t.Fatalf("still in layout 1: %v", left)
	}
	list, err := st.List()
	must(t, err)
	if len(list) != 3 {
		t.Fatalf("images after migration: %+v", list)
	}
	for _, name := range []string{"pios", "plain", "same"} {
		layers, err := st.Layers(name)
		must(t, err)
		want := []string{"root"}
		if name == "pios" {
			want = []string{"prep", "root"}
		}
		if len(layers) != len(want) {
			t.Fatalf("%s: layers %v", name, layers)
		}
		for i, w := range want {
			if got := inodes(t, layers[i]); !maps(got, before[name+"/"+w]) {
				t.Errorf("%s: layer %d is not the old %s dir (inodes differ)", name, i, w)
			}
		}
		ps, err := st.Verify(context.Background(), name)
		if err != nil || len(ps) > 0 {
			t.Errorf("%s: verify after migration: %v %v", name, ps, err)
		}
		ents, _ := os.ReadDir(filepath.Join(dir, name))
		if len(ents) != 1 || ents[0].Name() != infoFileName {
			t.Errorf("%s: image dir holds %v", name, ents)
		}
	}
	pi, _ := st.Info("pios")
	if !pi.Prepared || len(pi.Changes) == 0 || pi.Source == "" || pi.Imported.IsZero() {
		t.Errorf("pios info %+v", pi)
	}
	// the same tree in two images stays two layers: merging would change one's inodes
	a, _ := st.Info("plain")
	b, _ := st.Info("same")
	if a.Layers[0] == b.Layers[0] {
		t.Error("plain and same share a layer after migration")
	}
}

func maps(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestMigrateLayout1(t *testing.T) {
	needRoot(t)
	dir, before := layout1Store(t)
	names, err := Layout1Images(dir)
	must(t, err)
	if !slices.Equal(names, []string{"pios", "plain", "same"}) {
		t.Fatalf("Layout1Images = %v", names)
	}
	// before the migration, the new code says what to do instead of misreading the image
	st, err := OpenStore(dir)
	must(t, err)
	if _, err := st.Layers("pios"); err == nil || !strings.Contains(err.Error(), "layout of an older pifleet") {
		t.Errorf("Layers of a layout 1 image: %v", err)
	}
	must(t, MigrateLayout1(dir, quietLog()))
	checkMigrated(t, dir, before)
	// running it again is a no-op
	must(t, MigrateLayout1(dir, quietLog()))
	checkMigrated(t, dir, before)
}

// TestMigrateLayout1Resumes stops the migration after every one of its steps, as a crash
// would, and runs it again: it always ends in the same migrated store.
func TestMigrateLayout1Resumes(t *testing.T) {
	needRoot(t)
	// count the steps of a whole migration
	dir, _ := layout1Store(t)
	var steps []string
	must(t, migrateLayout1(dir, quietLog(), func(image, what string) error {
		steps = append(steps, image+": "+what)
		return nil
	}))
	if len(steps) < 10 {
		t.Fatalf("steps: %v", steps)
	}
	crash := errors.New("crash")
	for k := range steps {
		t.Run(fmt.Sprintf("after %s", steps[k]), func(t *testing.T) {
			dir, before := layout1Store(t)
			n := 0
			err := migrateLayout1(dir, quietLog(), func(image, what string) error {
				if n == k {
					return crash
				}
				n++
				return nil
			})
			if !errors.Is(err, crash) {
				t.Fatalf("migration did not stop at step %d: %v", k, err)
			}
			// a second crash right after resuming, then a clean run
			n = 0
			_ = migrateLayout1(dir, quietLog(), func(string, string) error {
				if n == 1 {
					return crash
				}
				n++
				return nil
			})
			must(t, MigrateLayout1(dir, quietLog()))
			checkMigrated(t, dir, before)
		})
	}
}
