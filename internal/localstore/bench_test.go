package localstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"ferry/internal/nixtest"
	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/storepath"
	"ferry/store"
)

// Run with: go test -run '^$' -bench . -benchtime 1x ./internal/localstore
// FERRY_BENCH_MIB sets the big file's size (default 1024). FERRY_BENCH_DIR
// puts the stores on a chosen file system (default: the test's TempDir).
// Stores are only deleted when the whole benchmark ends: on ext4 without a
// journal (some VMs), creating files soon after deleting many is much
// slower, which would penalise whichever side runs next.

// benchRoot returns a fresh store root that lives until parent ends.
func benchRoot(b, parent *testing.B) string {
	dir := os.Getenv("FERRY_BENCH_DIR")
	if dir == "" {
		return parent.TempDir()
	}
	root, err := os.MkdirTemp(dir, "ferry-bench-")
	if err != nil {
		b.Fatal(err)
	}
	parent.Cleanup(func() {
		exec.Command("chmod", "-R", "u+w", root).Run()
		os.RemoveAll(root)
	})
	return root
}

func bigFile(b *testing.B) (string, int64) {
	mib := int64(1024)
	if v, err := strconv.ParseInt(os.Getenv("FERRY_BENCH_MIB"), 10, 64); err == nil && v > 0 {
		mib = v
	}
	p := filepath.Join(b.TempDir(), "big")
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, mib<<20); err != nil {
		b.Fatal(err)
	}
	f.Close()
	return p, mib << 20
}

// BenchmarkAddLargeFile adds one big file (nix-store --add) with ferry,
// synced and unsynced, and with Nix 2.8 side by side. "sha256" only
// hashes the file's NAR from the page cache: the floor for any tool, as
// the store path depends on that hash.
func BenchmarkAddLargeFile(b *testing.B) {
	src, size := bigFile(b)
	ctx := context.Background()
	parent := b
	b.Run("sha256", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			h := sha256.New()
			if err := nar.Dump(h, src); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, tc := range []struct {
		name string
		opts *Options
	}{{"ferry-sync", nil}, {"ferry-nosync", &Options{NoSync: true}}} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				b.StopTimer()
				unix.Sync() // no side pays for the writeback of another
				s, err := Open(benchRoot(b, parent), tc.opts)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if _, err := s.AddPath(ctx, src, storepath.Recursive, hash.SHA256); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				s.Close()
				b.StartTimer()
			}
		})
	}
	b.Run("nix", func(b *testing.B) {
		nixtest.RequireNix(b)
		b.SetBytes(size)
		for b.Loop() {
			b.StopTimer()
			unix.Sync()
			root := benchRoot(b, parent)
			cmd := exec.Command("nix-store", "--store", root, "--add", src)
			cmd.Env = nixtest.Env(b.TempDir())
			b.StartTimer()
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("%v\n%s", err, out)
			}
		}
	})
}

// BenchmarkImportSmallPaths registers 10,000 small paths by importing one
// export stream, with ferry and with nix-store --import.
func BenchmarkImportSmallPaths(b *testing.B) {
	const n = 10000
	stream, _ := makeStream("bench", n, 64)
	ctx := context.Background()
	parent := b
	b.Run("ferry", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			unix.Sync()
			s, err := Open(benchRoot(b, parent), nil)
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			got, err := s.Import(ctx, bytes.NewReader(stream))
			if err != nil || len(got) != n {
				b.Fatal(err, len(got))
			}
			b.StopTimer()
			s.Close()
			b.StartTimer()
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "paths/s")
	})
	b.Run("nix", func(b *testing.B) {
		nixtest.RequireNix(b)
		for b.Loop() {
			b.StopTimer()
			unix.Sync()
			cmd := exec.Command("nix-store", "--store", benchRoot(b, parent), "--import")
			cmd.Env = nixtest.Env(b.TempDir())
			cmd.Stdin = bytes.NewReader(stream)
			b.StartTimer()
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("%v\n%s", err, out)
			}
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "paths/s")
	})
}

// BenchmarkRegister measures the database alone: registering small paths
// one transaction each (docs/sqlite-driver.md quotes it).
func BenchmarkRegister(b *testing.B) {
	ctx := context.Background()
	s, err := Open(b.TempDir(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		i++
		p := fakePath("reg"+strconv.Itoa(i), "r")
		info := &storeInfo{Path: p, NarHash: hash.Sum(hash.SHA256, []byte(p)), NarSize: 100}
		if err := s.register(ctx, []*storeInfo{info}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "paths/s")
}

type storeInfo = store.PathInfo
