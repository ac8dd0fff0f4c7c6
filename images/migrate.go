package images

import (
	"os"
	"path/filepath"
)

// isV1Image reports whether dir is an image in layout 1 (before layers): root/ and a
// manifest beside image.yaml.
func isV1Image(dir string) bool {
	fi, err := os.Stat(filepath.Join(dir, rootDirName))
	if err != nil || !fi.IsDir() {
		return false
	}
	_, err = os.Stat(filepath.Join(dir, manifestName))
	return err == nil
}
