package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"

	"ferry/nix/hash"
	"ferry/nix/nar"
)

func init() {
	register(&command{name: "hash path", args: "[--type T] [--base16|--base32|--base64|--sri] PATH...", summary: "print the hash of the NAR serialisation of each PATH (as nix hash path)", run: cmdHashPath})
	register(&command{name: "hash file", args: "[--type T] [--base16|--base32|--base64|--sri] FILE...", summary: "print the hash of the contents of each FILE (as nix hash file)", run: cmdHashFile})
}

// hashFlags are the options shared by hash path and hash file.
type hashFlags struct {
	typ                         string
	base16, base32, base64, sri bool
}

func (h *hashFlags) register(fs interface {
	StringVar(*string, string, string, string)
	BoolVar(*bool, string, bool, string)
}) {
	fs.StringVar(&h.typ, "type", "sha256", "hash algorithm: md5, sha1, sha256 or sha512")
	fs.BoolVar(&h.base16, "base16", false, "print the hash in base-16")
	fs.BoolVar(&h.base32, "base32", false, "print the hash in Nix's base-32")
	fs.BoolVar(&h.base64, "base64", false, "print the hash in base-64")
	fs.BoolVar(&h.sri, "sri", false, "print the hash in SRI form (the default)")
}

func (h *hashFlags) format(x hash.Hash) string {
	switch {
	case h.base16:
		return x.Encode(hash.Base16, false)
	case h.base32:
		return x.Encode(hash.Nix32, false)
	case h.base64:
		return x.Encode(hash.Base64, false)
	}
	return x.SRI()
}

// cmdHashPath mirrors `nix hash path`. nar.Dump already overlaps reading a
// large file with hashing it, on a second goroutine.
func cmdHashPath(ctx context.Context, e *Env, args []string) error {
	return runHash(e, args, "hash path", func(w io.Writer, p string) error { return nar.Dump(w, p) })
}

// cmdHashFile mirrors `nix hash file`.
func cmdHashFile(ctx context.Context, e *Env, args []string) error {
	return runHash(e, args, "hash file", func(w io.Writer, p string) error {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		return pipeCopy(w, f)
	})
}

const (
	pipeBufSize = 1 << 20
	pipeBufs    = 3 // buffers in flight: memory stays 3 MiB whatever the input
)

// pipeCopy copies r to w. Input longer than one buffer is read on the
// calling goroutine while a second goroutine writes the previous buffers to
// w, so hashing a big file costs the time of the hash alone rather than of
// the hash plus the reads. w's Write calls never overlap.
func pipeCopy(w io.Writer, r io.Reader) error {
	first := make([]byte, pipeBufSize)
	n, err := io.ReadFull(r, first)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		_, err = w.Write(first[:n])
		return err
	}
	if err != nil {
		return err
	}
	full := make(chan []byte, pipeBufs)
	free := make(chan []byte, pipeBufs)
	done := make(chan error, 1)
	go func() {
		var werr error
		for b := range full {
			if werr == nil {
				_, werr = w.Write(b)
			}
			free <- b
		}
		done <- werr
	}()
	full <- first
	for range pipeBufs - 1 {
		free <- make([]byte, pipeBufSize)
	}
	var rerr error
	for {
		b := <-free
		n, err := io.ReadFull(r, b[:cap(b)])
		if n > 0 {
			full <- b[:n]
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			rerr = err
			break
		}
	}
	close(full)
	if werr := <-done; werr != nil {
		return werr
	}
	return rerr
}

func runHash(e *Env, args []string, name string, feed func(io.Writer, string) error) error {
	fs := newFlags(e, name)
	var hf hashFlags
	hf.register(fs)
	ops, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	algo, err := hash.ParseAlgorithm(hf.typ)
	if err != nil {
		return usagef("--type: %v", err)
	}
	n := 0
	for _, b := range []bool{hf.base16, hf.base32, hf.base64, hf.sri} {
		if b {
			n++
		}
	}
	if n > 1 {
		return usagef("give at most one of --base16, --base32, --base64 and --sri")
	}
	w := bufio.NewWriter(e.Stdout)
	defer w.Flush()
	for _, p := range ops {
		h := algo.New()
		if err := feed(h, p); err != nil {
			return fmt.Errorf("hash %s: %w", p, err)
		}
		fmt.Fprintln(w, hf.format(hash.FromHasher(algo, h)))
	}
	return nil
}
