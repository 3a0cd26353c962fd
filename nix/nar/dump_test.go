package nar

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"ferry/internal/nixtest"
)

// refDump is a plain reference for Dump: lstat and path-based reads through
// the Writer, the way Nix's archive.cc walks a tree.
func refDump(t testing.TB, path string) []byte {
	t.Helper()
	var b bytes.Buffer
	w := NewWriter(&b)
	var walk func(fsPath, narPath string)
	walk = func(fsPath, narPath string) {
		fi, err := os.Lstat(fsPath)
		must(t, err)
		switch fi.Mode().Type() {
		case 0:
			data, err := os.ReadFile(fsPath)
			must(t, err)
			must(t, w.WriteHeader(&Header{Path: narPath, Type: TypeRegular, Size: int64(len(data)), Executable: fi.Mode()&0o100 != 0}))
			_, err = w.Write(data)
			must(t, err)
		case os.ModeSymlink:
			target, err := os.Readlink(fsPath)
			must(t, err)
			must(t, w.WriteHeader(&Header{Path: narPath, Type: TypeSymlink, LinkTarget: target}))
		case os.ModeDir:
			must(t, w.WriteHeader(&Header{Path: narPath, Type: TypeDirectory}))
			ents, err := os.ReadDir(fsPath)
			must(t, err)
			names := make([]string, 0, len(ents))
			for _, e := range ents {
				names = append(names, e.Name())
			}
			slices.Sort(names)
			for _, name := range names {
				child := name
				if narPath != "" {
					child = narPath + "/" + name
				}
				walk(fsPath+"/"+name, child)
			}
		default:
			t.Fatalf("refDump: unsupported %s", fsPath)
		}
	}
	walk(path, "")
	must(t, w.Close())
	return b.Bytes()
}

// mixedTree makes a tree with files on both sides of every buffer and
// pipelining threshold, in an order where a big file comes before small
// ones (so pipelining, once started, carries the rest of the walk).
func mixedTree(t testing.TB, dir string) {
	t.Helper()
	rng := rand.New(rand.NewPCG(7, 11))
	sizes := []int{0, 1, 7, 8, 9, 4095, directMin - 1, directMin, directMin + 1, dumpBufSize - 100, dumpBufSize, dumpBufSize + 1, pipelineMin + 13}
	for _, sub := range []string{"a", "b/c", "d"} {
		must(t, os.MkdirAll(filepath.Join(dir, sub), 0o755))
	}
	for i, size := range sizes {
		data := make([]byte, size)
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		mode := os.FileMode(0o644)
		if i%3 == 0 {
			mode = 0o755
		}
		sub := []string{"a", "b/c", "d"}[i%3]
		must(t, os.WriteFile(filepath.Join(dir, sub, fmt.Sprintf("f%02d", i)), data, mode))
	}
	// 300 small files so that the output buffer fills mid-directory.
	for i := range 300 {
		must(t, os.WriteFile(filepath.Join(dir, "d", fmt.Sprintf("small%03d", i)), bytes.Repeat([]byte{byte(i)}, i*37), 0o644))
	}
	must(t, os.Symlink("../a/f00", filepath.Join(dir, "b", "link")))
	must(t, os.Symlink(strings.Repeat("x/", 2000), filepath.Join(dir, "long-link")))
	must(t, os.Mkdir(filepath.Join(dir, "empty"), 0o700))
}

// bothModes runs f with and without forced pipelining.
func bothModes(t *testing.T, f func(t *testing.T)) {
	for _, always := range []bool{false, true} {
		t.Run(fmt.Sprintf("pipelineAlways=%v", always), func(t *testing.T) {
			pipelineAlways = always
			defer func() { pipelineAlways = false }()
			f(t)
		})
	}
}

func TestDumpMatchesReference(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tree")
	mixedTree(t, dir)
	bothModes(t, func(t *testing.T) { testDumpMatchesReference(t, dir) })
}

func testDumpMatchesReference(t *testing.T, dir string) {
	for _, root := range []string{"", "a", "a/f00", "a/f12", "b/link", "empty", "d"} {
		t.Run("/"+root, func(t *testing.T) {
			p := filepath.Join(dir, root)
			var got bytes.Buffer
			must(t, Dump(&got, p))
			if want := refDump(t, p); !bytes.Equal(got.Bytes(), want) {
				t.Errorf("Dump differs from the reference (%d vs %d bytes)", got.Len(), len(want))
			}
			// Through a writer that takes a few bytes at a time, the
			// output is the same.
			var slow bytes.Buffer
			must(t, Dump(&chunkWriter{w: &slow, n: 1000}, p))
			if !bytes.Equal(slow.Bytes(), got.Bytes()) {
				t.Errorf("Dump through short writes differs")
			}
		})
	}
}

// TestDumpInteropPipelined compares a tree whose walk pipelines with
// nix-store --dump.
func TestDumpInteropPipelined(t *testing.T) {
	nixtest.RequireNix(t)
	dir := filepath.Join(t.TempDir(), "tree")
	mixedTree(t, dir)
	theirs := nixtest.Nix(t, nil, "nix-store", "--dump", dir)
	bothModes(t, func(t *testing.T) {
		var ours bytes.Buffer
		must(t, Dump(&ours, dir))
		if !bytes.Equal(ours.Bytes(), theirs) {
			t.Errorf("Dump differs from nix-store --dump (%d vs %d bytes)", ours.Len(), len(theirs))
		}
	})
}

// chunkWriter passes writes on in pieces of at most n bytes.
type chunkWriter struct {
	w io.Writer
	n int
}

func (c *chunkWriter) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k := min(len(p)-n, c.n)
		if _, err := c.w.Write(p[n : n+k]); err != nil {
			return n, err
		}
		n += k
	}
	return n, nil
}

// limitWriter fails once more than n bytes have been written.
type limitWriter struct{ n int }

var errFull = errors.New("disk full")

func (f *limitWriter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		return 0, errFull
	}
	f.n -= len(p)
	return len(p), nil
}

func TestDumpWriteError(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tree")
	mixedTree(t, dir)
	bothModes(t, func(t *testing.T) {
		for _, root := range []string{"", "d", "a/f12"} {
			for _, n := range []int{0, 100, 2 << 20} {
				t.Run(fmt.Sprintf("%s/%d", root, n), func(t *testing.T) {
					err := Dump(&limitWriter{n: n}, filepath.Join(dir, root))
					if !errors.Is(err, errFull) {
						t.Errorf("Dump = %v, want %v", err, errFull)
					}
				})
			}
		}
	})
}

// slowWriter takes a while per write, like a hash, so that Dump pipelines
// by itself.
type slowWriter struct{ b bytes.Buffer }

func (s *slowWriter) Write(p []byte) (int, error) {
	time.Sleep(5 * time.Millisecond)
	return s.b.Write(p)
}

func TestDumpPipelinesForSlowWriter(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tree")
	mixedTree(t, dir)
	var w slowWriter
	e := newEmitter(&w)
	defer e.release()
	e.token(tokMagic)
	must(t, dumpPath(e, dir))
	if e.full == nil {
		t.Errorf("Dump into a slow writer did not pipeline")
	}
	must(t, e.finish())
	if want := refDump(t, dir); !bytes.Equal(w.b.Bytes(), want) {
		t.Errorf("Dump differs from the reference")
	}
}

func TestDumpErrors(t *testing.T) {
	dir := t.TempDir()
	fifoTree := filepath.Join(dir, "fifo")
	must(t, os.MkdirAll(filepath.Join(fifoTree, "sub"), 0o755))
	must(t, syscall.Mkfifo(filepath.Join(fifoTree, "sub", "pipe"), 0o644))

	deep := filepath.Join(dir, "deep")
	p := deep
	for range MaxDepth + 1 {
		p = filepath.Join(p, "d")
	}
	must(t, os.MkdirAll(p, 0o755))
	okDeep := filepath.Join(deep, "d") // its deepest object is at MaxDepth

	for _, tt := range []struct {
		name, path, want string
	}{
		{"fifo", fifoTree, fmt.Sprintf("file %q has an unsupported type", filepath.Join(fifoTree, "sub", "pipe"))},
		{"too deep", deep, "nested deeper than 256 directories"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := Dump(io.Discard, tt.path)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Dump = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if err := Dump(io.Discard, okDeep); err != nil {
		t.Errorf("Dump of a tree %d deep: %v", MaxDepth, err)
	}
}

// TestDumpAllocs checks that dumping a tree allocates per directory level
// at most, not per entry.
func TestDumpAllocs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tree")
	for d := range 4 {
		sub := filepath.Join(dir, fmt.Sprintf("dir%d", d))
		must(t, os.MkdirAll(sub, 0o755))
		for i := range 100 {
			must(t, os.WriteFile(filepath.Join(sub, fmt.Sprintf("file%03d", i)), make([]byte, i*13), 0o644))
			if i%10 == 0 {
				must(t, os.Symlink("target", filepath.Join(sub, fmt.Sprintf("link%03d", i))))
			}
		}
	}
	must(t, Dump(io.Discard, dir)) // warm the buffer pool
	allocs := testing.AllocsPerRun(5, func() { must(t, Dump(io.Discard, dir)) })
	if allocs > 100 {
		t.Errorf("Dump of 440 entries made %v allocations, want at most 100", allocs)
	}
}
