package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	storecopy "ferry/internal/copy"
	"ferry/internal/settings"
	"ferry/nix/storepath"
	"ferry/store"
)

func init() {
	register(&command{name: "copy", args: "--to URI | --from URI [--include-outputs] [--no-check-sigs] [--json] PATH...",
		summary: "copy the closure of paths between stores (as nix copy), race-free and pipelined", run: cmdCopy})
}

type copyFlags struct {
	from, to       string
	includeOutputs bool
	noCheckSigs    bool
	json           bool
	connectTimeout time.Duration
}

func cmdCopy(ctx context.Context, e *Env, args []string) error {
	fs := newFlags(e, "copy")
	var f copyFlags
	fs.StringVar(&f.from, "from", "", "the store to copy from (default: --store)")
	fs.StringVar(&f.to, "to", "", "the store to copy to (default: --store)")
	fs.BoolVar(&f.includeOutputs, "include-outputs", false, "also copy the outputs of the derivations in the closure")
	fs.BoolVar(&f.noCheckSigs, "no-check-sigs", false, "do not require signatures on paths copied into a local store")
	fs.BoolVar(&f.json, "json", false, "print a JSON summary (paths and bytes copied, skipped, seconds)")
	fs.DurationVar(&f.connectTimeout, "connect-timeout", 0, "how long a remote may take to answer (default 10s; a URI's connect-timeout= wins)")
	ops, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if f.from == "" && f.to == "" {
		return usagef("copy needs --to URI or --from URI")
	}
	if len(ops) == 0 {
		return usagef("copy needs at least one PATH")
	}
	if f.connectTimeout > 0 {
		e.ConnectTimeout = f.connectTimeout
	}
	return runCopy(ctx, e, &f, ops)
}

// copySummary is what --json prints.
type copySummary struct {
	From    string  `json:"from"`
	To      string  `json:"to"`
	Copied  int     `json:"copied"`
	Bytes   uint64  `json:"bytes"`
	Skipped int     `json:"skipped"`
	Seconds float64 `json:"seconds"`
}

func runCopy(ctx context.Context, e *Env, f *copyFlags, args []string) error {
	conf, err := settings.Load(nil)
	if err != nil {
		return err
	}
	fromURI, toURI := f.from, f.to
	if fromURI == "" {
		fromURI = storeFlag(e)
	}
	if toURI == "" {
		toURI = storeFlag(e)
	}
	src, err := openStore(ctx, e, conf, fromURI)
	if err != nil {
		return err
	}
	defer src.Close()
	paths := make([]storepath.Path, 0, len(args))
	for _, a := range args {
		p, err := src.Dir().Parse(a)
		if err != nil {
			return err
		}
		paths = append(paths, p)
	}
	dst, err := openStore(ctx, e, conf, toURI)
	if err != nil {
		return err
	}
	opts := &storecopy.Options{IncludeOutputs: f.includeOutputs}
	if check, err := signatureCheck(dst, conf, f.noCheckSigs); err != nil {
		dst.Close()
		return err
	} else {
		opts.CheckPath = check
	}
	var bar *copyProgress
	if isTerminal(e.Stderr) && !f.json {
		bar = newCopyProgress(e.Stderr)
		opts.Progress = bar
	}
	res, err := storecopy.Copy(ctx, src, dst, paths, opts)
	if bar != nil {
		bar.finish()
	}
	if cerr := dst.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close %s: %w", toURI, cerr)
	}
	if err != nil {
		return fmt.Errorf("copy to %s: %w", displayURI(toURI), err)
	}
	if f.json {
		enc := json.NewEncoder(e.Stdout)
		enc.SetEscapeHTML(false)
		return enc.Encode(copySummary{From: displayURI(fromURI), To: displayURI(toURI), Copied: len(res.Copied), Bytes: res.Bytes, Skipped: res.Skipped, Seconds: res.Seconds})
	} else if e.Verbose {
		fmt.Fprintf(e.Stderr, "copied %d paths (%d bytes), %d already there, in %.2fs\n", len(res.Copied), res.Bytes, res.Skipped, res.Seconds)
	}
	return nil
}

func displayURI(uri string) string {
	if uri == "" {
		return "the default store"
	}
	return uri
}

// signatureCheck returns the check a copy into dst must make of each path:
// a local destination with require-sigs wants a valid signature from a
// trusted key on every path that is not content-addressed, as Nix 2.8's
// LocalStore::addToStore does.
func signatureCheck(dst store.Store, conf *settings.Settings, noCheck bool) (func(*store.PathInfo) error, error) {
	return localSignatureCheck(dst, conf, noCheck)
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// copyProgress is the live display of a copy on a terminal: paths and
// bytes done of the total, rate, ETA, and the path being sent.
type copyProgress struct {
	w          io.Writer
	bar        *progressbar.ProgressBar
	paths      int
	done       int
	started    bool
	totalBytes uint64
}

func newCopyProgress(w io.Writer) *copyProgress { return &copyProgress{w: w} }

func (c *copyProgress) Start(paths int, bytes uint64) {
	c.paths, c.totalBytes = paths, bytes
	if paths == 0 {
		return
	}
	c.started = true
	c.bar = progressbar.NewOptions64(int64(bytes),
		progressbar.OptionSetWriter(c.w),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowTotalBytes(true),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionShowDescriptionAtLineEnd(),
		progressbar.OptionSetWidth(24),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetRenderBlankState(true),
		progressbar.OptionUseANSICodes(true),
		progressbar.OptionFullWidth(),
	)
	c.describe("")
}

func (c *copyProgress) describe(name string) {
	c.bar.Describe(fmt.Sprintf("%d/%d paths %s", c.done, c.paths, name))
}

func (c *copyProgress) Sending(info *store.PathInfo) { c.describe(info.Path.Name()) }

func (c *copyProgress) Wrote(n int) { c.bar.Add(n) }

func (c *copyProgress) Added(info *store.PathInfo) {
	c.done++
	c.describe(info.Path.Name())
}

func (c *copyProgress) finish() {
	if !c.started {
		return
	}
	c.describe("")
	c.bar.Finish()
	fmt.Fprintln(c.w)
}
