package localstore

import (
	"bytes"
	"context"
	"crypto/sha1"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/storepath"
)

// TestCopyRegular adds regular files of sizes around the copy pipeline's
// chunk size, from the store's filesystem (copy_file_range) and from
// /dev/shm (the read/write fallback where the kernel refuses), and checks
// each hash against an independent computation and the installed bytes.
func TestCopyRegular(t *testing.T) {
	srcDirs := []string{t.TempDir()}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "ferry-copy-test-")
		fatalIf(t, err)
		t.Cleanup(func() { os.RemoveAll(d) })
		srcDirs = append(srcDirs, d)
	}
	ctx := context.Background()
	for _, size := range []int{0, 1, copyChunk - 1, copyChunk, 2*copyChunk + 12345} {
		data := bytes.Repeat([]byte("ferry\x00"), size/6+1)[:size]
		for _, dir := range srcDirs {
			for _, exec := range []bool{false, true} {
				src := filepath.Join(dir, "f")
				os.Remove(src)
				mode := os.FileMode(0o644)
				if exec {
					mode = 0o755
				}
				fatalIf(t, os.WriteFile(src, data, mode))
				var want bytes.Buffer
				fatalIf(t, nar.DumpRegular(&want, bytes.NewReader(data), int64(size), exec))
				narHash := hash.Sum(hash.SHA256, want.Bytes())

				s := openStore(t, t.TempDir())
				info, err := s.AddPath(ctx, src, storepath.Recursive, hash.SHA256)
				fatalIf(t, err)
				if !info.NarHash.Equal(narHash) || info.NarSize != uint64(want.Len()) {
					t.Errorf("%s size %d exec %v: got %s %d, want %s %d", dir, size, exec, info.NarHash, info.NarSize, narHash, want.Len())
				}
				got, err := os.ReadFile(s.RealPath(info.Path))
				fatalIf(t, err)
				if !bytes.Equal(got, data) {
					t.Errorf("%s size %d: installed bytes differ", dir, size)
				}

				flat, err := s.AddPath(ctx, src, storepath.Flat, hash.SHA1)
				fatalIf(t, err)
				sum := sha1.Sum(data)
				if !bytes.Equal(flat.CA.Hash.Bytes(), sum[:]) {
					t.Errorf("%s size %d: flat sha1 %s", dir, size, flat.CA.Hash)
				}
			}
		}
	}
}

// TestCopyRangeShrunk: a source shorter than its size at open (it shrank
// meanwhile) is an error naming the problem, not a short object.
func TestCopyRangeShrunk(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	fatalIf(t, os.WriteFile(src, []byte("0123456789"), 0o644))
	in, err := os.Open(src)
	fatalIf(t, err)
	defer in.Close()
	out, err := os.Create(filepath.Join(dir, "dst"))
	fatalIf(t, err)
	defer out.Close()
	progress := make(chan int64, 4)
	err = copyRange(context.Background(), out, in, 20, progress, nil)
	if err == nil || !strings.Contains(err.Error(), "shrank") {
		t.Fatalf("copyRange of a shrunk file: %v", err)
	}
}
