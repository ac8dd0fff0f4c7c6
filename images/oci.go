package images

// Container image archives: an OCI image layout (a directory or a tar of one: oci-layout,
// index.json, blobs/sha256/...) or a `docker save` archive (manifest.json with <id>/layer.tar,
// or, since Docker 25, an OCI layout with a manifest.json beside it). Everything read from the
// archive is bounded and checked against the digests that name it; nothing is trusted.

import (
	"archive/tar"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Bounds on what an archive may ask of us: a real image needs a tiny fraction of each.
const (
	maxArchiveJSON    = 4 << 20 // oci-layout, index.json, manifest.json, one manifest or config
	maxArchiveEntries = 1 << 16 // members of an archive tar (blobs, legacy layer dirs)
	maxIndexDepth     = 4       // nested indexes
	maxDescriptors    = 1024    // manifests named by all indexes together
	maxImageLayers    = 128     // layers of one image (docker stops at 127)
	maxSymlinkHops    = 8       // symlinks followed inside an archive tar (docker's legacy save links equal layers)
)

// Media types pifleet reads.
const (
	mediaOCIIndex        = "application/vnd.oci.image.index.v1+json"
	mediaOCIManifest     = "application/vnd.oci.image.manifest.v1+json"
	mediaDockerList      = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaDockerManifest  = "application/vnd.docker.distribution.manifest.v2+json"
	annotationRefName    = "org.opencontainers.image.ref.name"
	annotationImageName  = "io.containerd.image.name"
	annotationAttestType = "vnd.docker.reference.type"
)

// layerMediaTypes maps each layer media type pifleet reads to the compression it names
// ("" for a plain tar).
var layerMediaTypes = map[string]string{
	"application/vnd.oci.image.layer.v1.tar":                       "",
	"application/vnd.oci.image.layer.v1.tar+gzip":                  kindGzip,
	"application/vnd.oci.image.layer.v1.tar+zstd":                  kindZstd,
	"application/vnd.oci.image.layer.nondistributable.v1.tar":      "",
	"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": kindGzip,
	"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": kindZstd,
	"application/vnd.docker.image.rootfs.diff.tar":                 "",
	"application/vnd.docker.image.rootfs.diff.tar.gzip":            kindGzip,
	"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":    kindGzip,
}

// imageArchive gives read access to the files of a container image archive by their slash
// path inside it.
type imageArchive interface {
	// open returns a regular file of the archive and its size; fs.ErrNotExist when missing.
	open(name string) (io.ReadCloser, int64, error)
	close() error
}

// dirArchive is an archive unpacked in a directory. Files are opened with RESOLVE_BENEATH:
// a symlink in the layout may point elsewhere inside it, never out of it.
type dirArchive struct {
	dir string
	fd  int
}

func openDirArchive(dir string) (*dirArchive, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	return &dirArchive{dir: dir, fd: fd}, nil
}

func (d *dirArchive) open(name string) (io.ReadCloser, int64, error) {
	rel, err := cleanPath(name)
	if err != nil || rel == "" {
		return nil, 0, fmt.Errorf("%q: not a file inside the archive", name)
	}
	// O_NONBLOCK: a fifo planted in the layout must not hang the import at open.
	fd, err := unix.Openat2(d.fd, rel, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NONBLOCK,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	})
	switch {
	case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR):
		return nil, 0, fmt.Errorf("%s: %w", rel, fs.ErrNotExist)
	case errors.Is(err, unix.EXDEV):
		return nil, 0, fmt.Errorf("%s: a symlink leads out of the archive", rel)
	case err != nil:
		return nil, 0, fmt.Errorf("%s: %w", rel, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("%s: %w", rel, err)
	}
	if st.Mode&typeMask != typeReg {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("%s: not a regular file", rel)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("%s: %w", rel, err)
	}
	return os.NewFile(uintptr(fd), path.Join(d.dir, rel)), st.Size, nil
}

func (d *dirArchive) close() error { return unix.Close(d.fd) }

// tarArchive is an archive in a tar file, read in place: one pass over the headers records
// where each member's data lies, then members are read as sections of the file.
type tarArchive struct {
	f       *os.File
	members map[string]tarMember
}

type tarMember struct {
	off, size int64
	link      string // a symlink's target, resolved inside the archive
}

func openTarArchive(f *os.File) (*tarArchive, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	a := &tarArchive{f: f, members: map[string]tarMember{}}
	tr := tar.NewReader(f) // an *os.File seeks over member data instead of reading it
	for n := 0; ; n++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return a, nil
		}
		if err != nil {
			return nil, fmt.Errorf("tar: %w", err)
		}
		if n >= maxArchiveEntries {
			return nil, fmt.Errorf("tar: more than %d members: not an image archive pifleet reads", maxArchiveEntries)
		}
		if len(h.Name) > maxLayerPath || len(h.Linkname) > maxLayerPath {
			return nil, fmt.Errorf("tar: a member name of more than %d bytes", maxLayerPath)
		}
		name, err := cleanPath(h.Name)
		if err != nil {
			return nil, fmt.Errorf("tar: %w", err)
		}
		switch h.Typeflag {
		case tar.TypeReg:
			if isSparse(h) {
				return nil, fmt.Errorf("tar: %s: sparse member in an image archive", name)
			}
			// tar reads headers block by block without buffering ahead: the file offset now
			// is where the member's data starts.
			off, err := f.Seek(0, io.SeekCurrent)
			if err != nil {
				return nil, err
			}
			if h.Size < 0 || off+h.Size > fi.Size() {
				return nil, fmt.Errorf("tar: %s: %d bytes at offset %d reach past the end of the file (truncated archive?)", name, h.Size, off)
			}
			a.members[name] = tarMember{off: off, size: h.Size}
		case tar.TypeSymlink:
			a.members[name] = tarMember{link: h.Linkname}
		case tar.TypeLink:
			target, err := cleanPath(h.Linkname)
			if err != nil {
				return nil, fmt.Errorf("tar: hard link %s: %w", name, err)
			}
			m, ok := a.members[target]
			if !ok {
				return nil, fmt.Errorf("tar: hard link %s -> %s: no such member before it", name, target)
			}
			a.members[name] = m
		}
	}
}

func (a *tarArchive) open(name string) (io.ReadCloser, int64, error) {
	rel, err := cleanPath(name)
	if err != nil || rel == "" {
		return nil, 0, fmt.Errorf("%q: not a file inside the archive", name)
	}
	for hops := 0; ; hops++ {
		m, ok := a.members[rel]
		if !ok {
			return nil, 0, fmt.Errorf("%s: %w", rel, fs.ErrNotExist)
		}
		if m.link == "" {
			return io.NopCloser(io.NewSectionReader(a.f, m.off, m.size)), m.size, nil
		}
		if hops >= maxSymlinkHops {
			return nil, 0, fmt.Errorf("%s: more than %d symlinks", name, maxSymlinkHops)
		}
		if path.IsAbs(m.link) {
			return nil, 0, fmt.Errorf("%s: symlink to %s leads out of the archive", rel, trimForError(m.link))
		}
		next, err := cleanPath(path.Join(path.Dir(rel), m.link))
		if err != nil || next == "" {
			return nil, 0, fmt.Errorf("%s: symlink to %s leads out of the archive", rel, trimForError(m.link))
		}
		rel = next
	}
}

func (a *tarArchive) close() error { return a.f.Close() }

// readArchiveJSON reads one small JSON file of the archive whole, refusing a big one.
func readArchiveJSON(a imageArchive, name string) ([]byte, error) {
	r, size, err := a.open(name)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if size > maxArchiveJSON {
		return nil, fmt.Errorf("%s: %d bytes, more than the %d pifleet reads", name, size, maxArchiveJSON)
	}
	b, err := io.ReadAll(io.LimitReader(r, maxArchiveJSON+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if int64(len(b)) != size {
		return nil, fmt.Errorf("%s: read %d bytes, expected %d", name, len(b), size)
	}
	return b, nil
}

// readBlob reads a JSON blob named by a descriptor and checks its size and digest.
func readBlob(a imageArchive, d ociDescriptor) ([]byte, error) {
	sum, err := parseDigest(d.Digest)
	if err != nil {
		return nil, err
	}
	if d.Size < 0 || d.Size > maxArchiveJSON {
		return nil, fmt.Errorf("blob %s: size %d (at most %d for a manifest, index or config)", d.Digest, d.Size, maxArchiveJSON)
	}
	b, err := readArchiveJSON(a, blobPath(sum))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("blob %s is missing from the archive (%w)", d.Digest, err)
	}
	if err != nil {
		return nil, err
	}
	if int64(len(b)) != d.Size {
		return nil, fmt.Errorf("blob %s: %d bytes, the descriptor says %d", d.Digest, len(b), d.Size)
	}
	if got := sha256.Sum256(b); hex.EncodeToString(got[:]) != sum {
		return nil, fmt.Errorf("blob %s: content has sha256 %x: corrupt or tampered archive", d.Digest, got)
	}
	return b, nil
}

func blobPath(sum string) string { return "blobs/sha256/" + sum }

// parseDigest returns the hex of a "sha256:<64 hex>" digest; other algorithms are refused.
func parseDigest(d string) (string, error) {
	alg, hexSum, ok := strings.Cut(d, ":")
	if !ok {
		return "", fmt.Errorf("digest %q: not ALGORITHM:HEX", trimForError(d))
	}
	if alg != "sha256" {
		return "", fmt.Errorf("digest %q: algorithm %q not supported (only sha256)", trimForError(d), trimForError(alg))
	}
	if !isSHA256Hex(hexSum) {
		return "", fmt.Errorf("digest %q: not 64 lower-case hex digits", trimForError(d))
	}
	return hexSum, nil
}

func isSHA256Hex(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// trimForError keeps hostile strings from flooding an error message.
func trimForError(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}

// ociDescriptor points at a blob (OCI image-spec descriptor.md).
type ociDescriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *ociPlatform      `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// ociPlatform is a descriptor's or a config's os/architecture/variant.
type ociPlatform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Variant      string `json:"variant,omitempty"`
}

func (p ociPlatform) String() string {
	s := orUnknown(p.OS, "?") + "/" + orUnknown(p.Architecture, "?")
	if p.Variant != "" {
		s += "/" + trimForError(p.Variant)
	}
	return s
}

// orUnknown is s bounded for a message, def when empty.
func orUnknown(s, def string) string {
	if s == "" {
		return def
	}
	return trimForError(s)
}

// isArm64 is the platform a Raspberry Pi 3/4/5 runs pifleet's roots on.
func (p ociPlatform) isArm64() bool {
	return p.OS == "linux" && p.Architecture == "arm64" && (p.Variant == "" || p.Variant == "v8")
}

type ociIndex struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     string          `json:"mediaType"`
	Manifests     []ociDescriptor `json:"manifests"`
}

type ociManifest struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     string          `json:"mediaType"`
	Config        ociDescriptor   `json:"config"`
	Layers        []ociDescriptor `json:"layers"`
}

type ociConfig struct {
	ociPlatform
	RootFS struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

// dockerSaveEntry is one image of a docker save manifest.json.
type dockerSaveEntry struct {
	Config   string   `json:"Config"`
	RepoTags []string `json:"RepoTags"`
	Layers   []string `json:"Layers"`
}

// containerImage is the image chosen from an archive, ready to be read layer by layer.
type containerImage struct {
	Format   string // "oci" or "docker-save"
	Ref      string // its name in the archive (ref annotation or RepoTag), "" when it has none
	Platform ociPlatform
	Config   string // sha256 hex of the config blob
	Layers   []containerLayer
}

// containerLayer is one layer, bottom first.
type containerLayer struct {
	Path      string // inside the archive
	Digest    string // sha256 hex of the blob; "" when the archive names none (legacy docker save)
	Size      int64  // of the blob; -1 when unknown
	MediaType string // "" when unknown (legacy docker save)
	DiffID    string // sha256 hex of the uncompressed tar, from the config
}

// readContainerImage picks the linux/arm64 image of an archive (the one called ref, when ref
// is set) and returns its layers, with every manifest, index and config digest checked.
func readContainerImage(a imageArchive, ref string) (*containerImage, error) {
	layout, err := readArchiveJSON(a, "oci-layout")
	switch {
	case err == nil:
		if err := checkOCILayout(layout); err != nil {
			return nil, err
		}
		return readOCIImage(a, ref)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	mf, err := readArchiveJSON(a, "manifest.json")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errors.New("neither an OCI image layout (no oci-layout file) nor a docker save archive (no manifest.json)")
	}
	if err != nil {
		return nil, err
	}
	return readDockerSaveImage(a, mf, ref)
}

func checkOCILayout(b []byte) error {
	var l struct {
		Version string `json:"imageLayoutVersion"`
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return fmt.Errorf("oci-layout: %w", err)
	}
	if major, _, _ := strings.Cut(l.Version, "."); major != "1" {
		return fmt.Errorf("oci-layout: image layout version %q, pifleet reads 1.x", trimForError(l.Version))
	}
	return nil
}

// candidate is one image manifest an index names.
type candidate struct {
	desc     ociDescriptor
	ref      string       // its name for messages
	names    []string     // every name the index gives it (ref name and containerd's image name)
	platform *ociPlatform // from the index; nil when only the config says
}

// sameRef tells whether name names the image ref: equal as written, or once both are in
// full form (docker.io/library/debian:latest for debian), as docker and containerd write
// them in an archive.
func sameRef(name, ref string) bool {
	return name == ref || fullRef(name) == fullRef(ref)
}

func fullRef(r string) string {
	first, _, ok := strings.Cut(r, "/")
	if !ok || !strings.ContainsAny(first, ".:") && first != "localhost" {
		if !ok {
			r = "library/" + r
		}
		r = "docker.io/" + r
	}
	if i := strings.LastIndex(r, "/"); !strings.Contains(r[i+1:], ":") && !strings.Contains(r, "@") {
		r += ":latest"
	}
	return r
}

func readOCIImage(a imageArchive, ref string) (*containerImage, error) {
	b, err := readArchiveJSON(a, "index.json")
	if err != nil {
		return nil, err
	}
	var cands []candidate
	seen := 0
	if err := walkIndex(a, b, "index.json", "", 0, &seen, &cands); err != nil {
		return nil, err
	}
	if ref != "" {
		var named []candidate
		for _, c := range cands {
			if slices.ContainsFunc(c.names, func(n string) bool { return sameRef(n, ref) }) {
				named = append(named, c)
			}
		}
		if len(named) == 0 {
			return nil, fmt.Errorf("no image called %q in the archive (it has: %s)", ref, refList(cands))
		}
		cands = named
	}
	// Learn each candidate's platform; the config is the authority, the index only a hint.
	type resolved struct {
		c   candidate
		img *containerImage
	}
	var arm []resolved
	var others []string
	for _, c := range cands {
		if c.platform != nil && c.desc.Annotations[annotationAttestType] != "" {
			continue // BuildKit's attestation manifests: platform unknown/unknown, no root
		}
		if c.platform != nil && !c.platform.isArm64() {
			others = append(others, c.platform.String())
			continue
		}
		img, err := readOCIManifest(a, c.desc)
		if err != nil {
			return nil, err
		}
		img.Ref = c.ref
		if c.platform != nil && (c.platform.OS != img.Platform.OS || c.platform.Architecture != img.Platform.Architecture) {
			return nil, fmt.Errorf("manifest %s: the index says %s, its config says %s", c.desc.Digest, c.platform, img.Platform)
		}
		if !img.Platform.isArm64() {
			others = append(others, img.Platform.String())
			continue
		}
		if !slices.ContainsFunc(arm, func(r resolved) bool { return r.c.desc.Digest == c.desc.Digest }) {
			arm = append(arm, resolved{c, img})
		}
	}
	switch {
	case len(arm) == 0 && len(others) == 0:
		return nil, errors.New("the archive holds no image manifest")
	case len(arm) == 0:
		return nil, fmt.Errorf("the archive has %s, no linux/arm64 image: Raspberry Pi boards need linux/arm64 (docker save/buildx --platform linux/arm64)", listForError(others))
	case len(arm) > 1:
		var refs []string
		for _, r := range arm {
			refs = append(refs, orUnknown(r.c.ref, r.c.desc.Digest))
		}
		return nil, fmt.Errorf("the archive has %d linux/arm64 images (%s): name one with --ref", len(arm), listForError(refs))
	}
	arm[0].img.Format = "oci"
	return arm[0].img, nil
}

func refList(cands []candidate) string {
	var refs []string
	for _, c := range cands {
		if c.ref != "" {
			refs = append(refs, fmt.Sprintf("%q", trimForError(c.ref)))
		}
	}
	if len(refs) == 0 {
		return "no named images"
	}
	return listForError(refs)
}

// listForError lists names from an archive for an error message: sorted, each once, each
// and their number bounded.
func listForError(items []string) string {
	l := make([]string, 0, len(items))
	for _, it := range items {
		l = append(l, trimForError(it))
	}
	slices.Sort(l)
	l = slices.Compact(l)
	if len(l) > 8 {
		l = append(l[:8], fmt.Sprintf("and %d more", len(l)-8))
	}
	return strings.Join(l, ", ")
}

// walkIndex collects the image manifests an index names, following nested indexes.
func walkIndex(a imageArchive, b []byte, where, ref string, depth int, seen *int, out *[]candidate) error {
	if depth > maxIndexDepth {
		return fmt.Errorf("%s: indexes nested more than %d deep", where, maxIndexDepth)
	}
	var idx ociIndex
	if err := json.Unmarshal(b, &idx); err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	if idx.SchemaVersion != 2 {
		return fmt.Errorf("%s: schemaVersion %d, pifleet reads 2", where, idx.SchemaVersion)
	}
	for _, d := range idx.Manifests {
		if *seen++; *seen > maxDescriptors {
			return fmt.Errorf("%s: more than %d manifests", where, maxDescriptors)
		}
		r := ref
		if n := cmp.Or(d.Annotations[annotationImageName], d.Annotations[annotationRefName]); n != "" {
			r = n
		}
		var names []string
		for _, n := range []string{d.Annotations[annotationImageName], d.Annotations[annotationRefName], ref} {
			if n != "" {
				names = append(names, n)
			}
		}
		switch d.MediaType {
		case mediaOCIIndex, mediaDockerList:
			nb, err := readBlob(a, d)
			if err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
			if err := walkIndex(a, nb, "index "+d.Digest, r, depth+1, seen, out); err != nil {
				return err
			}
		case mediaOCIManifest, mediaDockerManifest:
			*out = append(*out, candidate{desc: d, ref: r, names: names, platform: d.Platform})
		default:
			// artifacts (signatures, SBOMs) and unknown types: not an image root
		}
	}
	return nil
}

// readOCIManifest reads an image manifest and its config.
func readOCIManifest(a imageArchive, d ociDescriptor) (*containerImage, error) {
	b, err := readBlob(a, d)
	if err != nil {
		return nil, err
	}
	m, err := parseOCIManifest(b)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", d.Digest, err)
	}
	cb, err := readBlob(a, m.Config)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: config: %w", d.Digest, err)
	}
	cfg, err := parseImageConfig(cb, len(m.Layers))
	if err != nil {
		return nil, fmt.Errorf("manifest %s: config %s: %w", d.Digest, m.Config.Digest, err)
	}
	img := &containerImage{Platform: cfg.ociPlatform}
	img.Config, _ = parseDigest(m.Config.Digest)
	for i, l := range m.Layers {
		sum, err := parseDigest(l.Digest)
		if err != nil {
			return nil, fmt.Errorf("manifest %s: layer %d: %w", d.Digest, i+1, err)
		}
		diff, _ := parseDigest(cfg.RootFS.DiffIDs[i])
		img.Layers = append(img.Layers, containerLayer{Path: blobPath(sum), Digest: sum, Size: l.Size, MediaType: l.MediaType, DiffID: diff})
	}
	return img, nil
}

// parseOCIManifest checks an image manifest's shape: schema 2, a config, 1..maxImageLayers
// layers of media types pifleet can read.
func parseOCIManifest(b []byte) (*ociManifest, error) {
	var m ociManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	if m.SchemaVersion != 2 {
		return nil, fmt.Errorf("schemaVersion %d, pifleet reads 2", m.SchemaVersion)
	}
	if len(m.Layers) == 0 || len(m.Layers) > maxImageLayers {
		return nil, fmt.Errorf("%d layers (pifleet reads 1 to %d)", len(m.Layers), maxImageLayers)
	}
	if _, err := parseDigest(m.Config.Digest); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	for i, l := range m.Layers {
		if _, ok := layerMediaTypes[l.MediaType]; !ok {
			return nil, fmt.Errorf("layer %d: media type %q is not a layer pifleet reads (tar, tar+gzip, tar+zstd)", i+1, trimForError(l.MediaType))
		}
		if _, err := parseDigest(l.Digest); err != nil {
			return nil, fmt.Errorf("layer %d: %w", i+1, err)
		}
		if l.Size < 0 {
			return nil, fmt.Errorf("layer %d: negative size", i+1)
		}
	}
	return &m, nil
}

// parseImageConfig reads an image config's platform and diff_ids, which must match the
// manifest's layers one to one.
func parseImageConfig(b []byte, layers int) (*ociConfig, error) {
	var c ociConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, err
	}
	if c.RootFS.Type != "layers" {
		return nil, fmt.Errorf("rootfs type %q, expected \"layers\"", trimForError(c.RootFS.Type))
	}
	if len(c.RootFS.DiffIDs) != layers {
		return nil, fmt.Errorf("%d diff_ids for %d layers", len(c.RootFS.DiffIDs), layers)
	}
	for i, d := range c.RootFS.DiffIDs {
		if _, err := parseDigest(d); err != nil {
			return nil, fmt.Errorf("diff_id %d: %w", i+1, err)
		}
	}
	return &c, nil
}

// readDockerSaveImage reads a legacy docker save archive: manifest.json lists each image's
// config file and layer tars; the layers are checked against the config's diff_ids.
func readDockerSaveImage(a imageArchive, mf []byte, ref string) (*containerImage, error) {
	entries, err := parseDockerSaveManifest(mf)
	if err != nil {
		return nil, fmt.Errorf("manifest.json: %w", err)
	}
	var pick []dockerSaveEntry
	var tags []string
	for _, e := range entries {
		tags = append(tags, e.RepoTags...)
		if ref == "" || slices.ContainsFunc(e.RepoTags, func(n string) bool { return sameRef(n, ref) }) {
			pick = append(pick, e)
		}
	}
	switch {
	case len(pick) == 0:
		return nil, fmt.Errorf("no image tagged %q in the archive (it has: %s)", ref, listForError(tags))
	case len(pick) > 1:
		return nil, fmt.Errorf("the archive has %d images (%s): name one with --ref", len(pick), listForError(tags))
	}
	e := pick[0]
	cb, err := readArchiveJSON(a, e.Config)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("config %s is missing from the archive", trimForError(e.Config))
	}
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(cb)
	cfgSum := hex.EncodeToString(sum[:])
	// The config's name is its digest (<hex>.json, blobs/sha256/<hex> since Docker 25,
	// sha256:<hex> from crane).
	if named := digestName(path.Base(e.Config)); isSHA256Hex(named) && named != cfgSum {
		return nil, fmt.Errorf("config %s: content has sha256 %s: corrupt or tampered archive", trimForError(e.Config), cfgSum)
	}
	cfg, err := parseImageConfig(cb, len(e.Layers))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", trimForError(e.Config), err)
	}
	if !cfg.isArm64() {
		return nil, fmt.Errorf("the archive has %s, no linux/arm64 image: Raspberry Pi boards need linux/arm64 (docker save/buildx --platform linux/arm64)", cfg.ociPlatform)
	}
	img := &containerImage{Format: "docker-save", Platform: cfg.ociPlatform, Config: cfgSum}
	if len(e.RepoTags) > 0 {
		img.Ref = e.RepoTags[0]
	}
	if ref != "" {
		img.Ref = ref
	}
	for i, p := range e.Layers {
		diff, _ := parseDigest(cfg.RootFS.DiffIDs[i])
		l := containerLayer{Path: p, Size: -1, DiffID: diff}
		if d, ok := strings.CutPrefix(p, "blobs/sha256/"); ok && isSHA256Hex(d) {
			l.Digest = d
		}
		img.Layers = append(img.Layers, l)
	}
	return img, nil
}

func parseDockerSaveManifest(b []byte) ([]dockerSaveEntry, error) {
	var entries []dockerSaveEntry
	if err := json.Unmarshal(b, &entries); err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		return nil, errors.New("no images")
	}
	if len(entries) > maxDescriptors {
		return nil, fmt.Errorf("%d images, more than %d", len(entries), maxDescriptors)
	}
	for i, e := range entries {
		if len(e.Layers) == 0 || len(e.Layers) > maxImageLayers {
			return nil, fmt.Errorf("image %d: %d layers (pifleet reads 1 to %d)", i+1, len(e.Layers), maxImageLayers)
		}
		for _, p := range append([]string{e.Config}, e.Layers...) {
			if c, err := cleanPath(p); err != nil || c == "" || path.IsAbs(p) {
				return nil, fmt.Errorf("image %d: %q is not a file inside the archive", i+1, trimForError(p))
			}
		}
	}
	return entries, nil
}
